"""Token-budget batching in SentenceEncoder.encode (batch_bounds, length_sorted_batches)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textcl.tokens import batch_bounds


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
        # Greedy: the batch could not have taken one more sentence.
        if b < len(lengths) and b - a < batch_size:
            assert max_tokens is not None
            assert (b - a + 1) * lengths[a] > max_tokens
    if max_tokens is None:
        assert bounds == [
            (a, min(a + batch_size, len(lengths))) for a in range(0, len(lengths), batch_size)
        ]


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
