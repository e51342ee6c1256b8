"""InfoNCE against a loop written from the formula, analytic values and autocast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textcl.losses import InfoNCE


def reference(
    z_a: np.ndarray,
    z_b: np.ndarray,
    z_neg: np.ndarray | None,
    t: float,
    w: float = 0.0,
    symmetric: bool = False,
) -> float:
    """-1/B sum_i log( e^{s(a_i,b_i)/t} / (sum_j e^{s(a_i,b_j)/t} + sum_j e^{s(a_i,n_j)/t + w[i==j]}) )."""

    def cos(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    def one_direction(a: np.ndarray, b: np.ndarray, n: np.ndarray | None) -> float:
        total = 0.0
        for i in range(len(a)):
            denom = 0.0
            for j in range(len(b)):
                denom += math.exp(cos(a[i], b[j]) / t)
            if n is not None:
                for j in range(len(n)):
                    denom += math.exp(cos(a[i], n[j]) / t + (w if i == j else 0.0))
            total += -math.log(math.exp(cos(a[i], b[i]) / t) / denom)
        return total / len(a)

    loss = one_direction(z_a, z_b, z_neg)
    if symmetric:
        loss = (loss + one_direction(z_b, z_a, None)) / 2
    return loss


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 6),
    dim=st.integers(2, 8),
    t=st.sampled_from([0.05, 0.1, 0.5, 1.0]),
    w=st.sampled_from([0.0, 0.5, -1.0, 2.0]),
    hard=st.booleans(),
    symmetric=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_matches_loop_reference(
    batch: int, dim: int, t: float, w: float, hard: bool, symmetric: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a, b, n = (rng.normal(size=(batch, dim)) for _ in range(3))
    loss = InfoNCE(temperature=t, symmetric=symmetric, hard_negative_weight=w)
    got = loss(
        torch.tensor(a, dtype=torch.float64).float(),
        torch.tensor(b).float(),
        torch.tensor(n).float() if hard else None,
    )
    want = reference(a, b, n if hard else None, t, w, symmetric)
    assert float(got) == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_analytic_identical_and_orthogonal_views() -> None:
    b, t = 8, 0.05
    eye = torch.eye(b)
    # Orthogonal one-hot embeddings, identical views: positive logit 1/t, negatives 0.
    for temp in (0.5, 1.0):
        want = -math.log(math.exp(1 / temp) / (math.exp(1 / temp) + (b - 1)))
        assert float(InfoNCE(temp)(eye, eye)) == pytest.approx(want, rel=1e-5)
    assert float(InfoNCE(t)(eye, eye)) == pytest.approx(0.0, abs=1e-6)  # log(1 + 7e^-20)
    # All embeddings identical: every candidate ties, loss = log(B).
    same = torch.ones(b, 4)
    assert float(InfoNCE(t)(same, same)) == pytest.approx(math.log(b), rel=1e-6)
    # Positives orthogonal to their anchors but negatives aligned: loss grows with 1/t.
    z_b = torch.roll(eye, 1, dims=0)
    assert float(InfoNCE(t)(eye, z_b)) > 1 / t - 1e-3
    # A hard negative equal to the positive with weight w: its share is e^w.
    w, t = 0.7, 0.5
    got = InfoNCE(t, hard_negative_weight=w)(eye, eye, eye)
    want = -math.log(math.exp(1 / t) / (math.exp(1 / t) * (1 + math.exp(w)) + 2 * (b - 1)))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_gradients_match_reference_autograd() -> None:
    torch.manual_seed(0)
    a = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)

    def manual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        logits = an @ bn.T / 0.05
        return -(torch.diag(logits) - torch.logsumexp(logits, dim=1)).mean()

    g_ref = torch.autograd.grad(manual(a, b), (a, b))
    g = torch.autograd.grad(InfoNCE(0.05)(a.float(), b.float()), (a, b))
    for x, y in zip(g, g_ref, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stable_under_low_precision(dtype: torch.dtype) -> None:
    """Low-precision inputs (as autocast produces) with a small temperature: finite loss
    and gradients, close to the float32 value."""
    torch.manual_seed(1)
    a, b = torch.randn(64, 32) * 30, torch.randn(64, 32) * 30
    ref = InfoNCE(0.01)(a, b)
    a_lp = a.to(dtype).requires_grad_()
    b_lp = b.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = InfoNCE(0.01)(a_lp, b_lp)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert a_lp.grad is not None and torch.isfinite(a_lp.grad.float()).all()
    assert float(loss.detach()) == pytest.approx(float(ref), rel=0.05)


def test_bad_hyper_parameters_and_shapes() -> None:
    for t in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            InfoNCE(temperature=t)
    with pytest.raises(ValueError, match="hard_negative_weight"):
        InfoNCE(hard_negative_weight=float("nan"))
    with pytest.raises(ValueError, match="z_a and z_b"):
        InfoNCE()(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="z_neg"):
        InfoNCE()(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 5))


def test_get_logits_matches_the_loop_reference() -> None:
    """get_logits (one process): cos/t against [z_b; z_neg], the own hard negative offset by
    the weight, labels 0..B-1, and the backward logits only when symmetric."""
    torch.manual_seed(2)
    a, b, n = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    t, w = 0.1, 0.4
    out = InfoNCE(t, hard_negative_weight=w).get_logits(a, b, n)
    cands = torch.cat([b, n])
    expected = torch.empty(5, 10)
    for i in range(5):
        for j in range(10):
            cos = float(a[i] @ cands[j]) / float(a[i].norm() * cands[j].norm())
            expected[i, j] = cos / t + (w if j == 5 + i else 0.0)
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    assert out.labels.tolist() == list(range(5)) and out.back is None
    sym = InfoNCE(t, symmetric=True).get_logits(a, b)
    torch.testing.assert_close(sym.back, sym.logits.T)


def test_single_process_dist_context_is_the_plain_loss() -> None:
    from textcl.distributed import DistEnv

    torch.manual_seed(3)
    a, b, n = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
    plain = InfoNCE(0.05, hard_negative_weight=0.2)
    one = InfoNCE(0.05, hard_negative_weight=0.2, dist=DistEnv())
    assert one.world_size == 1 and one.rank == 0
    torch.testing.assert_close(one(a, b, n), plain(a, b, n))
