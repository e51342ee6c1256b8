"""Gradient cache: same loss and parameter gradients as the plain step, dropout enabled."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

from textcl.gradcache import RngState, batch_rows, grad_cache_backward, slice_batch
from textcl.losses import InfoNCE
from textcl.tokens import TokenBatch

SEED = 1234


pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a: dict[str, Tensor], b: dict[str, Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    assert len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


def _max_grad_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def _inputs(encoder, sentences: list[str]) -> list[TokenBatch]:  # type: ignore[no-untyped-def]
    """[anchor, positive, hard negative]: positives are the anchors themselves (SimCSE:
    only dropout differs), hard negatives the sentences rotated by one."""
    rotated = sentences[1:] + sentences[:1]
    return [encoder.tokenize(sentences), encoder.tokenize(sentences), encoder.tokenize(rotated)]


def _plain_step(
    embed: Callable[[TokenBatch], Tensor],
    inputs: Sequence[TokenBatch],
    loss_fn: Callable[[Sequence[Tensor]], Tensor],
    chunk_size: int | None,
) -> Tensor:
    """Oracle: embed with autograd (whole batch, or per input per chunk in grad-cache order),
    concatenate, backpropagate the loss."""
    reps = []
    for batch in inputs:
        n = batch_rows(batch)
        size = n if chunk_size is None else chunk_size
        reps.append(torch.cat([embed(slice_batch(batch, s, s + size)) for s in range(0, n, size)]))
    loss = loss_fn(reps)
    loss.backward()
    return loss.detach()


@pytest.fixture
def loss_fn() -> Callable[[Sequence[Tensor]], Tensor]:
    criterion = InfoNCE(temperature=0.05, hard_negative_weight=0.5)
    return lambda z: criterion(z[0], z[1], z[2])


def _run(fn: Callable[[], Tensor], model: nn.Module) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Run a step from a fixed seed; return loss, gradients and the next random number."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)
    loss = fn()
    return loss, _grads(model), torch.rand(4)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 100])
def test_matches_plain_step_with_dropout(tiny_encoder, sentences, loss_fn, chunk_size):  # type: ignore[no-untyped-def]
    tiny_encoder.train()  # dropout 0.1 on hidden states and attention probabilities
    inputs = _inputs(tiny_encoder, sentences)
    assert batch_rows(inputs[0]) == 16
    ref_loss, ref_grads, ref_next = _run(
        lambda: _plain_step(tiny_encoder, inputs, loss_fn, chunk_size), tiny_encoder
    )
    loss, grads, next_rand = _run(
        lambda: grad_cache_backward(
            tiny_encoder, inputs, loss_fn, chunk_size=chunk_size, check_replay=True
        ),
        tiny_encoder,
    )
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    assert not loss.requires_grad
    _assert_same_grads(grads, ref_grads)
    # The RNG is left where the plain step leaves it.
    torch.testing.assert_close(next_rand, ref_next, atol=0, rtol=0)


def test_full_chunk_equals_ordinary_full_batch_step(tiny_encoder, sentences, loss_fn):  # type: ignore[no-untyped-def]
    tiny_encoder.train()
    inputs = _inputs(tiny_encoder, sentences)

    def ordinary() -> Tensor:
        loss = loss_fn([tiny_encoder(b) for b in inputs])
        loss.backward()
        return loss.detach()

    ref_loss, ref_grads, _ = _run(ordinary, tiny_encoder)
    loss, grads, _ = _run(
        lambda: grad_cache_backward(tiny_encoder, inputs, loss_fn, chunk_size=16), tiny_encoder
    )
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    _assert_same_grads(grads, ref_grads)


def test_controls_dropout_matters_and_replay_is_needed(  # type: ignore[no-untyped-def]
    tiny_encoder, sentences, loss_fn, monkeypatch
):
    """The equality above is not vacuous: another seed, or no RNG replay, changes the grads."""
    tiny_encoder.train()
    inputs = _inputs(tiny_encoder, sentences)
    _, ref_grads, _ = _run(lambda: _plain_step(tiny_encoder, inputs, loss_fn, 3), tiny_encoder)
    tiny_encoder.zero_grad(set_to_none=True)
    torch.manual_seed(SEED + 1)
    _plain_step(tiny_encoder, inputs, loss_fn, 3)
    assert _max_grad_diff(_grads(tiny_encoder), ref_grads) > 1e-3

    monkeypatch.setattr(RngState, "restore", lambda self: None)
    _, no_replay, _ = _run(
        lambda: grad_cache_backward(tiny_encoder, inputs, loss_fn, chunk_size=3), tiny_encoder
    )
    assert _max_grad_diff(no_replay, ref_grads) > 1e-3
    with pytest.raises(RuntimeError, match="replay mismatch"):
        grad_cache_backward(tiny_encoder, inputs, loss_fn, chunk_size=3, check_replay=True)


def test_eval_mode_chunks_equal_full_batch(tiny_encoder, sentences):  # type: ignore[no-untyped-def]
    """Without dropout, chunking changes nothing but float rounding (symmetric loss, 2 views)."""
    tiny_encoder.eval()
    criterion = InfoNCE(temperature=0.1, symmetric=True)
    views = [tiny_encoder.tokenize(sentences), tiny_encoder.tokenize(sentences[::-1])]

    def loss_fn(z: Sequence[Tensor]) -> Tensor:
        return criterion(z[0], z[1])

    ref_loss, ref_grads, _ = _run(
        lambda: _plain_step(tiny_encoder, views, loss_fn, None), tiny_encoder
    )
    loss, grads, _ = _run(
        lambda: grad_cache_backward(tiny_encoder, views, loss_fn, chunk_size=5), tiny_encoder
    )
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    _assert_same_grads(grads, ref_grads, atol=1e-5)


def test_scaler_scales_gradients_and_grads_accumulate(tiny_encoder, sentences, loss_fn):  # type: ignore[no-untyped-def]
    tiny_encoder.train()
    inputs = _inputs(tiny_encoder, sentences)
    ref_loss, ref_grads, _ = _run(
        lambda: _plain_step(tiny_encoder, inputs, loss_fn, 4), tiny_encoder
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    loss, grads, _ = _run(
        lambda: grad_cache_backward(tiny_encoder, inputs, loss_fn, chunk_size=4, scaler=scaler),
        tiny_encoder,
    )
    torch.testing.assert_close(loss, ref_loss)  # returned unscaled
    _assert_same_grads({n: g / 16 for n, g in grads.items()}, ref_grads)
    # A second call adds to .grad like backward() does.
    torch.manual_seed(SEED)
    grad_cache_backward(tiny_encoder, inputs, loss_fn, chunk_size=4)
    _assert_same_grads(
        _grads(tiny_encoder), {n: g + ref_grads[n] for n, g in grads.items()}, atol=1e-5
    )


def test_bf16_autocast_replays(tiny_encoder, sentences, loss_fn):  # type: ignore[no-untyped-def]
    tiny_encoder.train()
    inputs = _inputs(tiny_encoder, sentences)

    def autocast() -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def ref() -> Tensor:
        with autocast():
            return _plain_step(tiny_encoder, inputs, loss_fn, 8)

    ref_loss, ref_grads, _ = _run(ref, tiny_encoder)
    loss, grads, _ = _run(
        lambda: grad_cache_backward(
            tiny_encoder, inputs, loss_fn, chunk_size=8, autocast=autocast, check_replay=True
        ),
        tiny_encoder,
    )
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref_loss, atol=1e-2, rtol=1e-2)
    # bf16 rounds the cached embedding gradients: compare the whole gradient vector by relative
    # norm (bf16 eps = 2^-8; some tensors, e.g. key biases, have ~0 true gradient: only noise).
    assert grads.keys() == ref_grads.keys()
    flat = torch.cat([g.flatten() for g in grads.values()])
    ref_flat = torch.cat([ref_grads[n].flatten() for n in grads])
    assert float((flat - ref_flat).norm() / ref_flat.norm()) < 2e-2


def test_slice_batch_keeps_broadcast_tensors() -> None:
    batch = {
        "input_ids": torch.arange(12).view(4, 3),
        "attention_mask": torch.ones(4, 3, dtype=torch.long),
        "embedding_mask": torch.ones(1, 3, 1),
    }
    part = slice_batch(batch, 1, 3)
    assert torch.equal(part["input_ids"], batch["input_ids"][1:3])
    assert part["embedding_mask"] is batch["embedding_mask"]


@pytest.mark.parametrize(
    ("inputs", "chunk", "error", "match"),
    [
        ([{"input_ids": torch.zeros(2, 3)}], 0, ValueError, "chunk_size"),
        ([{"input_ids": torch.zeros(2, 3)}], True, ValueError, "chunk_size"),
        ([], 2, ValueError, "inputs is empty"),
        (
            [{"input_ids": torch.zeros(4, 3), "attention_mask": torch.zeros(3, 3)}],
            2,
            ValueError,
            r"inputs\[0\]\['attention_mask'\] has 3 rows",
        ),
        ([{"input_ids": [1, 2]}], 2, TypeError, "not a Tensor"),
    ],
)
def test_bad_input(inputs, chunk, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        grad_cache_backward(lambda b: b["input_ids"].float(), inputs, lambda z: z[0].sum(), chunk)


def test_embed_and_loss_shape_checked() -> None:
    inputs = [{"input_ids": torch.zeros(4, 3)}]
    with pytest.raises(ValueError, match="embed returned shape"):
        grad_cache_backward(lambda b: b["input_ids"].sum(), inputs, lambda z: z[0].sum(), 4)
    with pytest.raises(ValueError, match="scalar"):
        grad_cache_backward(lambda b: b["input_ids"], inputs, lambda z: z[0], 2)


@pytest.mark.parametrize("chunk_size", [3, 16])
def test_cached_loss_wraps_a_loss_like_the_plain_step(tiny_encoder, sentences, chunk_size):  # type: ignore[no-untyped-def]
    """CachedLoss(loss, chunk) is called like LossStep(loss) and gives its loss and
    gradients (dropout off: the plain step merges same-shaped inputs into one forward)."""
    from textcl.gradcache import CachedLoss
    from textcl.objective import LossStep

    tiny_encoder.eval()
    inputs = _inputs(tiny_encoder, sentences)
    criterion = InfoNCE(temperature=0.05, hard_negative_weight=0.5)
    ref_loss, ref_grads, _ = _run(lambda: LossStep(criterion)(tiny_encoder, inputs), tiny_encoder)
    cached = CachedLoss(criterion, chunk_size, check_replay=True)
    loss, grads, _ = _run(lambda: cached(tiny_encoder, inputs), tiny_encoder)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    assert not loss.requires_grad
    _assert_same_grads(grads, ref_grads, atol=1e-5)
    # Control: another loss (no hard-negative weight) gives other gradients.
    _, other, _ = _run(lambda: LossStep(InfoNCE(0.05))(tiny_encoder, inputs), tiny_encoder)
    assert _max_grad_diff(other, ref_grads) > 1e-4
    with pytest.raises(ValueError, match="chunk_size"):
        CachedLoss(criterion, 0)
    assert "chunk_size=3" in repr(CachedLoss(criterion, 3))
