"""Token-budget batching in SentenceEncoder.encode (batch_bounds, length_sorted_batches)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textcl.tokens import batch_bounds


def _cost(lengths: list[int], bounds: list[tuple[int, int]], overhead: int) -> int:
    return sum(overhead + (b - a) * max(1, lengths[a]) for a, b in bounds)


def _best_cost(lengths: list[int], batch_size: int, max_tokens: int, overhead: int) -> int:
    """The oracle: every way of cutting ``lengths`` into contiguous batches that keep the
    limits, tried one by one (2^(n-1) cuts), and the least cost."""
    n = len(lengths)
    best = None
    for mask in range(1 << max(0, n - 1)):
        cuts = [0, *[i + 1 for i in range(n - 1) if mask >> i & 1], n]
        bounds = list(itertools.pairwise(cuts))
        if all(
            b - a <= batch_size and (b - a == 1 or (b - a) * lengths[a] <= max_tokens)
            for a, b in bounds
        ):
            c = _cost(lengths, bounds, overhead)
            best = c if best is None else min(best, c)
    assert best is not None
    return best


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), min_size=0, max_size=80),
    batch_size=st.integers(1, 40),
    max_tokens=st.one_of(st.none(), st.integers(1, 2000)),
)
def test_batch_bounds_contract(lengths: list[int], batch_size: int, max_tokens: int | None) -> None:
    lengths = sorted(lengths, reverse=True)
    bounds = batch_bounds(lengths, batch_size, max_tokens)
    # Contiguous cover of 0..n in order, no empty batch.
    flat = [i for a, b in bounds for i in range(a, b)]
    assert flat == list(range(len(lengths)))
    assert all(b > a for a, b in bounds)
    for a, b in bounds:
        assert b - a <= batch_size
        if max_tokens is not None and b - a > 1:
            assert (b - a) * max(lengths[a:b]) <= max_tokens
    if max_tokens is None:
        assert bounds == [
            (a, min(a + batch_size, len(lengths))) for a in range(0, len(lengths), batch_size)
        ]


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 120), min_size=1, max_size=11),
    batch_size=st.integers(1, 8),
    max_tokens=st.integers(1, 400),
    overhead=st.integers(0, 300),
)
def test_batch_bounds_is_the_cheapest_cut(
    lengths: list[int], batch_size: int, max_tokens: int, overhead: int
) -> None:
    """With a token budget the cut costs least (padded tokens + ``overhead`` a batch) among
    all cuts within the limits: brute force over every cut as the oracle."""
    lengths = sorted(lengths, reverse=True)
    bounds = batch_bounds(lengths, batch_size, max_tokens, pass_overhead=overhead)
    assert _cost(lengths, bounds, overhead) == _best_cost(lengths, batch_size, max_tokens, overhead)


def test_batch_bounds_pads_less_than_greedy_filling() -> None:
    """A long sentence first and many short ones (a server's merged batch): greedy filling
    padded every short sentence to the long one's length; the cut keeps the long ones
    together and the short ones together."""
    lengths = [90, 80, 70] + [20] * 40
    bounds = batch_bounds(lengths, 64, 2048)
    padded = sum((b - a) * lengths[a] for a, b in bounds)
    assert bounds == [(0, 3), (3, 43)], bounds
    assert padded == 3 * 90 + 40 * 20  # greedy: 22 * 90 + 21 * 20 = 2400
    assert padded / sum(lengths) < 1.03


def test_batch_bounds_rejects_bad_budget() -> None:
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_tokens"):
            batch_bounds([3, 2], 4, bad)  # type: ignore[arg-type]


def test_token_budget_changes_batches_not_embeddings(tiny_encoder, sentences) -> None:  # type: ignore[no-untyped-def]
    texts = [*sentences, "short", "a much longer sentence " * 6, ""]
    order, batches = tiny_encoder.length_sorted_batches(texts, batch_size=8, max_tokens=40)
    seen = []
    lengths = []
    for batch in batches:
        n, width = batch["input_ids"].shape
        assert n <= 8 and (n == 1 or n * width <= 40)
        seen.extend(batch["attention_mask"].sum(1).tolist())
        lengths.append(width)
    assert sorted(order) == list(range(len(texts)))
    assert seen == sorted(seen, reverse=True)  # longest first, by token count
    plain = tiny_encoder.encode(texts, batch_size=8)
    budget = tiny_encoder.encode(texts, batch_size=8, max_tokens=40)
    one_by_one = np.stack([tiny_encoder.encode(t) for t in texts])
    np.testing.assert_allclose(budget, plain, atol=1e-5)
    np.testing.assert_allclose(budget, one_by_one, atol=1e-5)
