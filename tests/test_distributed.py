"""torch.distributed support: 2 gloo processes on loopback equal one process over the global
batch (loss and parameter gradients), gather_with_grad, sharding without overlap."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn

from tests.helpers import TINY_SENTENCES, join_gloo_world
from textcl.distributed import (
    DistEnv,
    all_gather_object,
    all_reduce_mean,
    barrier,
    broadcast_object,
    gather_with_grad,
    init_distributed,
    is_main,
    shard_batch,
    wrap_ddp,
)
from textcl.losses import InfoNCE

WORLD = 2
GLOBAL = 8
ANCHORS = list(TINY_SENTENCES[:GLOBAL])
POSITIVES = list(TINY_SENTENCES[GLOBAL : 2 * GLOBAL])
NEGATIVES = ANCHORS[1:] + ANCHORS[:1]
SPAWN_DEADLINE_S = 120.0


pytestmark = pytest.mark.usefixtures("one_thread")


def _criterion(case: str, dist: Any = None) -> InfoNCE:
    if case == "symmetric_uneven":
        return InfoNCE(temperature=0.1, symmetric=True, dist=dist)
    return InfoNCE(temperature=0.05, hard_negative_weight=0.7, dist=dist)


CASES: dict[str, list[int]] = {
    # case name -> rows per rank
    "hard_negatives": [4, 4],
    "symmetric_uneven": [3, 5],
    "process_group": [4, 4],
    "grad_cache": [4, 4],
    "ddp": [4, 4],
    "ddp_symmetric_uneven": [3, 5],
}


def _ddp(encoder: nn.Module, calls: list[int]) -> nn.Module:
    """The trainer's DDP wrapper; ``calls`` counts its bucket all-reduces."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    ddp = wrap_ddp(encoder, DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size()))
    # No annotations: DDP checks that a hook's annotations (if any) are GradBucket/Future.
    counting = lambda state, bucket: (calls.append(1), allreduce_hook(state, bucket))[1]  # noqa: E731
    ddp.register_comm_hook(None, counting)
    return ddp


def _grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_rows(sizes: list[int], rank: int, items: list[str], env: DistEnv) -> list[str]:
    if len(set(sizes)) == 1:
        return shard_batch(items, env)  # the trainer's sharding for equal sizes
    start = sum(sizes[:rank])
    return items[start : start + sizes[rank]]


def _worker(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    """One rank: runs every case, saves losses and synced gradients to out_dir/rank{r}.pt."""
    join_gloo_world(rank, WORLD, port)
    from textcl import SentenceEncoder
    from textcl.distributed import cleanup
    from textcl.gradcache import CachedLoss
    from textcl.objective import LossStep

    env = init_distributed("cpu", timeout_s=60)
    results: dict[str, Any] = {"env": (env.rank, env.world_size, env.backend, env.is_main)}
    try:
        encoder = SentenceEncoder.from_pretrained(model_dir, pooling="mean")
        encoder.eval()  # dropout disabled for the comparison
        for case, sizes in CASES.items():
            # The loss takes the DistEnv, or (process_group) torch's default process group.
            group = torch.distributed.group.WORLD if case == "process_group" else None
            criterion = _criterion(case.removeprefix("ddp_"), group or env)
            encoder.zero_grad(set_to_none=True)
            a, b, n = (
                encoder.tokenize(_local_rows(sizes, rank, items, env))
                for items in (ANCHORS, POSITIVES, NEGATIVES)
            )
            inputs = [a, b] if criterion.symmetric else [a, b, n]
            calls: list[int] = []
            if case == "grad_cache":
                # Gradient cache through DDP: chunk backwards under no_sync, one final sync.
                ddp = _ddp(encoder, calls)
                loss = CachedLoss(criterion, chunk_size=3)(ddp, inputs)
                del ddp
            elif case.startswith("ddp"):
                ddp = _ddp(encoder, calls)
                loss = LossStep(criterion)(ddp, inputs)  # DDP averages the gradients
                del ddp
            else:
                # Without DDP: average the gradients by hand (the oracle of DDP's averaging).
                loss = LossStep(criterion)(encoder, inputs)
                for p in encoder.parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= WORLD
            results[case] = {
                "loss": all_reduce_mean(loss, env),
                "grads": _grads(encoder),
                "allreduces": len(calls),
            }

        # gather_with_grad on uneven sizes: values and summed gradients.
        x = torch.full((rank + 2, 3), float(rank + 1), requires_grad=True)
        gathered = gather_with_grad(x, env)
        weights = torch.arange(gathered.numel(), dtype=torch.float32).view_as(gathered)
        (gathered * weights * (rank + 1)).sum().backward()
        results["gather"] = {"value": gathered.detach(), "grad": x.grad}

        # Sharding over three epochs of the seeded global order.
        items = list(range(37))
        seen = []
        for epoch in range(3):
            g = torch.Generator().manual_seed(100 + epoch)
            order = [items[i] for i in torch.randperm(len(items), generator=g).tolist()]
            per_epoch = []
            for start in range(0, len(order) - GLOBAL + 1, GLOBAL):
                per_epoch.extend(shard_batch(order[start : start + GLOBAL], env))
            seen.append(per_epoch)
        results["seen"] = seen
        results["broadcast"] = broadcast_object({"seed": 7 + rank}, env)
        results["gathered"] = all_gather_object(("rank", rank), env)
        barrier(env)
    finally:
        cleanup()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def _spawn(model_dir: Path, out_dir: Path) -> list[dict[str, Any]]:
    ctx = mp.start_processes(
        _worker,
        args=(_free_port(), str(model_dir), str(out_dir)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed workers did not finish within {SPAWN_DEADLINE_S} s")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def spawned(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _spawn(tiny_model_dir, tmp_path_factory.mktemp("dist-out"))


def _reference(model_dir: Path, case: str) -> tuple[float, dict[str, Tensor]]:
    """Oracle: one process, the concatenated global batch, the plain InfoNCE."""
    from textcl import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained(model_dir, pooling="mean")
    encoder.eval()
    criterion = _criterion(case.removeprefix("ddp_"))
    z_a, z_b = encoder(encoder.tokenize(ANCHORS)), encoder(encoder.tokenize(POSITIVES))
    z_neg = None if criterion.symmetric else encoder(encoder.tokenize(NEGATIVES))
    loss = criterion(z_a, z_b, z_neg)
    loss.backward()
    return float(loss.detach()), _grads(encoder)


def test_ranks_know_their_place(spawned: list[dict[str, Any]]) -> None:
    assert [r["env"] for r in spawned] == [(0, 2, "gloo", True), (1, 2, "gloo", False)]
    assert [r["broadcast"] for r in spawned] == [{"seed": 7}, {"seed": 7}]
    assert [r["gathered"] for r in spawned] == [[("rank", 0), ("rank", 1)]] * 2


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_single_process(
    spawned: list[dict[str, Any]], tiny_model_dir: Path, case: str
) -> None:
    ref_loss, ref_grads = _reference(tiny_model_dir, case)
    assert len(ref_grads) > 10
    for rank, result in enumerate(spawned):
        got = result[case]
        assert got["loss"] == pytest.approx(ref_loss, abs=1e-5), f"rank {rank}"
        assert got["grads"].keys() == ref_grads.keys()
        for name, g in ref_grads.items():
            torch.testing.assert_close(
                got["grads"][name], g, atol=1e-5, rtol=1e-4, msg=f"rank {rank} {name}"
            )


def test_ddp_syncs_once_per_step_through_the_gradient_cache(
    spawned: list[dict[str, Any]],
) -> None:
    """6 replayed chunks (3 inputs x 2 chunks of 3 rows): the chunk backwards run under
    DDP's no_sync, so DDP all-reduces its buckets once, as in the plain DDP step."""
    for result in spawned:
        plain = result["ddp"]["allreduces"]
        assert plain >= 1
        assert result["grad_cache"]["allreduces"] == plain


def test_plain_gather_would_be_wrong(spawned: list[dict[str, Any]], tiny_model_dir: Path) -> None:
    """Control: the gradients differ from what each rank's own loss alone gives, so the cross-
    rank gradient terms (summed by gather_with_grad's backward) matter for equality."""
    from textcl import SentenceEncoder

    _, ref_grads = _reference(tiny_model_dir, "hard_negatives")
    encoder = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean")
    encoder.eval()
    criterion = _criterion("hard_negatives")
    # Rank 0's view with a gather that drops the other rank's gradient: its rows are constants.
    z = [encoder(encoder.tokenize(items)) for items in (ANCHORS, POSITIVES, NEGATIVES)]
    half = GLOBAL // WORLD
    losses = []
    for r in range(WORLD):
        rows = slice(r * half, (r + 1) * half)
        cands = []
        for t in z[1:]:
            c = t.detach().clone()
            c[rows] = t[rows]
            cands.append(c)
        labels = torch.arange(half) + r * half
        norm = [nn.functional.normalize(t, dim=-1) for t in (z[0][rows], *cands)]
        logits = norm[0] @ torch.cat(norm[1:]).T / criterion.temperature
        bonus = torch.zeros_like(logits)
        bonus[torch.arange(half), GLOBAL + labels] = criterion.hard_negative_weight
        losses.append(nn.functional.cross_entropy(logits + bonus, labels))
    torch.stack(losses).mean().backward()
    naive = _grads(encoder)
    diff = max(float((naive[n] - ref_grads[n]).abs().max()) for n in ref_grads)
    assert diff > 1e-3
    assert spawned[0]["hard_negatives"]["grads"].keys() == ref_grads.keys()


def test_gather_with_grad_uneven(spawned: list[dict[str, Any]]) -> None:
    sizes = [r + 2 for r in range(WORLD)]
    expected = torch.cat([torch.full((s, 3), float(r + 1)) for r, s in enumerate(sizes)])
    weights = torch.arange(expected.numel(), dtype=torch.float32).view_as(expected)
    # d/dx_r of sum_s (s+1) * <gathered, weights> = sum_s (s+1) * weights[rows of r]
    total = weights * sum(s + 1 for s in range(WORLD))
    for rank, result in enumerate(spawned):
        torch.testing.assert_close(result["gather"]["value"], expected)
        start = sum(sizes[:rank])
        torch.testing.assert_close(result["gather"]["grad"], total[start : start + sizes[rank]])


def test_no_item_seen_twice_within_an_epoch(spawned: list[dict[str, Any]]) -> None:
    n_items, epochs = 37, 3
    per_epoch = (n_items // GLOBAL) * GLOBAL
    for epoch in range(epochs):
        shares = [r["seen"][epoch] for r in spawned]
        union = [x for share in shares for x in share]
        assert len(union) == per_epoch
        assert len(set(union)) == per_epoch  # disjoint across ranks, no repeats
        assert all(len(s) == per_epoch // WORLD for s in shares)
    # Reshuffled per epoch.
    assert spawned[0]["seen"][0] != spawned[0]["seen"][1]


# ---------------------------------------------------------------- in-process (no spawn)
def test_shard_batch_partitions_in_rank_order() -> None:
    items = list("abcdefghijkl")
    for world in (1, 2, 3, 4, 6):
        shards = [shard_batch(items, DistEnv(rank=r, world_size=world)) for r in range(world)]
        assert [x for s in shards for x in s] == items
    assert shard_batch(items, None) == items
    with pytest.raises(ValueError, match="not divisible by world size 5"):
        shard_batch(items, DistEnv(rank=0, world_size=5))


def test_dist_env_validation() -> None:
    with pytest.raises(ValueError, match="outside"):
        DistEnv(rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        DistEnv(rank=0, world_size=0)
    assert DistEnv().is_main and not DistEnv().is_distributed
    assert is_main(None) and not is_main(DistEnv(rank=1, world_size=2))


def test_init_without_torchrun_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = init_distributed("cpu")
    assert env == DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("variables", "match"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "29500"}, "MASTER_ADDR is not set"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ],
)
def test_init_errors(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], match: str
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        init_distributed("cpu")


def test_single_process_helpers_are_identities() -> None:
    torch.manual_seed(0)
    z_a, z_b, z_neg = (torch.randn(5, 4, requires_grad=True) for _ in range(3))
    env = DistEnv()
    criterion = InfoNCE(temperature=0.1, hard_negative_weight=0.3)
    torch.testing.assert_close(
        InfoNCE(temperature=0.1, hard_negative_weight=0.3, dist=env)(z_a, z_b, z_neg),
        criterion(z_a, z_b, z_neg),
    )
    assert gather_with_grad(z_a, env) is z_a
    assert all_reduce_mean(torch.tensor(2.5), env) == 2.5
    assert broadcast_object([1], env) == [1]
    assert all_gather_object("x", env) == ["x"]


def test_loss_rejects_a_bad_dist_context() -> None:
    with pytest.raises(ValueError, match=r"not a DistEnv or a process group|no process group"):
        InfoNCE(dist="world")
