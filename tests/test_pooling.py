from __future__ import annotations

import numpy as np
import pytest
import torch

from textcl.pooling import POOLING_STRATEGIES, Pooling, ProjectionHead, check_head_mode


def _numpy_pool(strategy: str, hidden: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Reference pooling, one sentence at a time, looking only at its real tokens."""
    out = []
    for b in range(mask.shape[0]):
        keep = np.flatnonzero(mask[b])
        last = hidden[-1][b, keep]
        if strategy == "cls":
            out.append(hidden[-1][b, 0])
        elif strategy == "mean":
            out.append(last.mean(axis=0))
        elif strategy == "max":
            out.append(last.max(axis=0))
        elif strategy == "first_last_avg":
            out.append(((hidden[1][b, keep] + last) / 2).mean(axis=0))
        elif strategy == "last2_avg":
            out.append(((hidden[-2][b, keep] + last) / 2).mean(axis=0))
    return np.stack(out)


@pytest.mark.parametrize("strategy", POOLING_STRATEGIES)
def test_pooling_matches_numpy_reference_with_padding(strategy: str) -> None:
    g = torch.Generator().manual_seed(1)
    lengths = [5, 2, 7, 1]
    mask = torch.zeros(4, 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    # Padding positions hold large garbage: it must never leak into the result.
    hidden = [torch.randn(4, 7, 6, generator=g) for _ in range(3)]
    for h in hidden:
        h[mask == 0] = 1e4
    got = Pooling(strategy)(hidden[-1], mask, hidden)
    want = _numpy_pool(strategy, [h.numpy() for h in hidden], mask.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_unknown_pooling_name() -> None:
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        Pooling("avg")


def test_layer_poolings_need_hidden_states() -> None:
    p = Pooling("first_last_avg")
    assert p.needs_hidden_states
    assert not Pooling("mean").needs_hidden_states
    with pytest.raises(ValueError, match="hidden states"):
        p(torch.zeros(1, 2, 3), torch.ones(1, 2))


def test_mask_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="attention_mask shape"):
        Pooling("mean")(torch.zeros(2, 3, 4), torch.ones(2, 4))


def test_projection_head_shape() -> None:
    head = ProjectionHead(8)
    assert head(torch.randn(3, 8)).shape == (3, 8)
    with pytest.raises(ValueError):
        ProjectionHead(0)
    with pytest.raises(ValueError, match="head mode"):
        check_head_mode("sometimes")
