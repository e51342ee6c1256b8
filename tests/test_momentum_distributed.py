"""Momentum queue under torch.distributed: 2 gloo processes (DDP, plain and gradient cache)
equal one process over the global batch, step by step: losses, the queue (every rank holds
the global batch's keys, in rank order) and the weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import TINY_SENTENCES, join_gloo_world
from tests.test_distributed import SPAWN_DEADLINE_S, _free_port

WORLD = 2
GLOBAL = 8
STEPS = 3
CASES: dict[str, dict[str, Any]] = {
    # queue 6 < global batch 8: the queue wraps within a step
    "ema_hard_negatives": {"momentum": 0.9, "chunk": None, "queue": 6, "neg": True},
    "online_keys_grad_cache": {"momentum": 0.0, "chunk": 3, "queue": 20, "neg": False},
    "ema_fn_symmetric": {"momentum": 0.5, "chunk": None, "queue": 12, "neg": False, "fn": 0.0},
}

# Two spawned processes take ~35 s on two shared CPU cores.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _batch(step: int) -> tuple[list[str], list[str], list[str]]:
    n = len(TINY_SENTENCES)
    a = [TINY_SENTENCES[(4 * step + i) % n] for i in range(GLOBAL)]
    b = [TINY_SENTENCES[(4 * step + i + 3) % n] for i in range(GLOBAL)]
    neg = [TINY_SENTENCES[(4 * step + i + 9) % n] for i in range(GLOBAL)]
    return a, b, neg


def _run(case: str, model_dir: str, env: Any) -> dict[str, Any]:
    """STEPS SGD steps of MomentumContrast (DDP when env is distributed)."""
    from textcl import SentenceEncoder
    from textcl.distributed import all_reduce_mean, shard_batch, wrap_ddp
    from textcl.losses import ExtendedInfoNCE
    from textcl.momentum import MomentumContrast

    spec = CASES[case]
    torch.manual_seed(0)
    encoder = SentenceEncoder.from_pretrained(model_dir, pooling="mean")
    for m in encoder.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    encoder.train()
    model: Any = wrap_ddp(encoder, env) if env is not None else encoder
    loss_fn = ExtendedInfoNCE(
        temperature=0.1,
        symmetric="symmetric" in case,
        hard_negative_weight=0.3 if spec["neg"] else 0.0,
        fn_margin=spec.get("fn"),
        dist=env,
    )
    obj = MomentumContrast(
        loss_fn,
        queue_size=spec["queue"],
        momentum=spec["momentum"],
        online=encoder,
        chunk_size=spec["chunk"],
        dist=env,
    )
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1)
    losses, queues, grads = [], [], []
    for step in range(STEPS):
        texts = _batch(step)
        roles = texts if spec["neg"] else texts[:2]
        inputs = [encoder.tokenize(shard_batch(t, env)) for t in roles]
        opt.zero_grad(set_to_none=True)
        loss = obj(model, inputs)
        losses.append(all_reduce_mean(loss, env) if env is not None else float(loss))
        gn = torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None])
        grads.append(gn)
        opt.step()
        queues.append(obj.queue.negatives())  # type: ignore[union-attr]
    return {
        "losses": losses,
        "queues": queues,
        "grads": grads,
        "weights": {k: v.detach().clone() for k, v in encoder.state_dict().items()},
    }


def _worker(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    join_gloo_world(rank, WORLD, port)
    from textcl.distributed import cleanup, init_distributed

    env = init_distributed("cpu", timeout_s=60)
    try:
        results = {case: _run(case, model_dir, env) for case in CASES}
    finally:
        cleanup()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def spawned(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    import time

    out = tmp_path_factory.mktemp("momentum-dist")
    ctx = mp.start_processes(
        _worker,
        args=(_free_port(), str(tiny_model_dir), str(out)),
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
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(
    spawned: list[dict[str, Any]], tiny_model_dir: Path, case: str
) -> None:
    ref = _run(case, str(tiny_model_dir), None)
    assert len(set(ref["losses"])) == STEPS  # the steps differ (queue fills, weights move)
    assert min(ref["losses"]) > 0.1  # not everything masked
    for rank, got in enumerate(spawned):
        res = got[case]
        assert res["losses"] == pytest.approx(ref["losses"], rel=1e-4), f"rank {rank}"
        for q_got, q_ref in zip(res["queues"], ref["queues"], strict=True):
            # every rank holds the global batch's keys, in rank order (atol: after three SGD
            # steps of lr 0.1, AVX-512 kernels sum the two ranks' gradients in another order
            # than one process: 1.4e-5 seen on a Zen 4 CPU; a wrong key is off by ~0.1)
            torch.testing.assert_close(q_got, q_ref, rtol=1e-4, atol=5e-5)
        for g_got, g_ref in zip(res["grads"], ref["grads"], strict=True):
            torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-4)
        for k, v in ref["weights"].items():
            torch.testing.assert_close(res["weights"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert spawned[0][case]["queues"][-1].shape[0] == min(CASES[case]["queue"], STEPS * GLOBAL)


def test_a_rank_local_queue_would_differ(spawned: list[dict[str, Any]]) -> None:
    """Control: the queue after step 1 holds rows of both ranks' shards; a queue of rank 0's
    own keys only would be half of them."""
    q = spawned[0]["online_keys_grad_cache"]["queues"][0]
    assert q.shape[0] == GLOBAL
    assert not torch.allclose(q[: GLOBAL // 2], q[GLOBAL // 2 :])
    torch.testing.assert_close(q, spawned[1]["online_keys_grad_cache"]["queues"][0])


def test_torchrun_training_with_queue_equals_one_process(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The trainer under `torchrun --nproc_per_node 2` with a momentum queue and false-negative
    control: same losses, weights and checkpointed queue as one process."""
    import json
    import subprocess
    import sys

    from tests.train.test_torchrun import _launcher, _no_dropout_copy
    from textcl import SentenceEncoder
    from textcl.train.state import load_checkpoint_state

    model = _no_dropout_copy(tiny_model_dir, tmp_path / "model")
    data = tmp_path / "c.txt"
    data.write_text("\n".join(f"{s} {i}" for i in range(2) for s in TINY_SENTENCES) + "\n")
    common = ["train", "--model", str(model), "--train-file", str(data), "--batch-size", "8"]
    common += ["--max-steps", "3", "--eval-steps", "-1", "--lr", "1e-3", "--max-length", "16"]
    common += ["--logging-steps", "1", "--pooling", "mean", "--head", "none"]
    common += ["--queue-size", "12", "--momentum", "0.9", "--fn-margin", "0.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    single = [sys.executable, "-m", "textcl", *common, "--output-dir", str(tmp_path / "one")]
    subprocess.run(single, check=True, env=env, timeout=300)
    proc = subprocess.run(
        [*_launcher("torchrun"), "-m", "textcl", *common, "--output-dir", str(tmp_path / "two")],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = lambda d: [  # noqa: E731
        json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
    ]
    assert log("one") == pytest.approx(log("two"), rel=1e-4)
    assert len(set(log("one"))) == 3
    one, two = (
        load_checkpoint_state(tmp_path / d / "checkpoints" / "step-00000003")["momentum"]
        for d in ("one", "two")
    )
    assert int(one["queue"]["filled"]) == 12 and int(one["queue"]["ptr"]) == 0
    torch.testing.assert_close(one["queue"]["buffer"], two["queue"]["buffer"], rtol=1e-3, atol=1e-4)
    w1 = SentenceEncoder.load(tmp_path / "one" / "final").model.state_dict()
    w2 = SentenceEncoder.load(tmp_path / "two" / "final").model.state_dict()
    flat = lambda w: torch.cat([v.flatten().float() for v in w.values()])  # noqa: E731
    w0 = flat(SentenceEncoder.load(model).model.state_dict())
    # Adam + float rounding: see tests/train/test_torchrun.py for the measured tolerance.
    assert float((flat(w1) - flat(w2)).norm() / (flat(w1) - w0).norm()) < 0.02
