"""exact_search against a brute-force numpy oracle (full matmul + stable sort)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textcl.search import exact_search


def oracle(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Score every pair with float64, order by (score desc, index asc)."""
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    idx = np.empty((q.shape[0], min(k, x.shape[0])), dtype=np.int64)
    for r in range(q.shape[0]):
        order = sorted(range(x.shape[0]), key=lambda j, r=r: (-scores[r, j], j))
        idx[r] = order[: idx.shape[1]]
    return np.take_along_axis(scores, idx, axis=1), idx


@settings(max_examples=60, deadline=None)
@given(
    n_q=st.integers(1, 5),
    n=st.integers(1, 60),
    dim=st.integers(1, 6),
    k=st.integers(1, 70),
    chunk=st.integers(1, 25),
    n_shards=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_oracle_with_ties(
    n_q: int, n: int, dim: int, k: int, chunk: int, n_shards: int, seed: int
) -> None:
    # Small integer vectors: every product is exact in float32 and ties are frequent, so
    # the tie order (smaller index first) is checked too.
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    q = rng.integers(-2, 3, size=(n_q, dim)).astype(np.float32)
    cuts = np.sort(rng.integers(0, n + 1, size=n_shards - 1))
    shards = np.split(x, cuts)
    want_s, want_i = oracle(q, x, k)
    got_s, got_i = exact_search(q, shards, top_k=k, chunk_size=chunk)
    assert got_s.dtype == np.float32 and got_i.dtype == np.int64
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s.astype(np.float32))


def test_random_floats_match_oracle() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 16)).astype(np.float32)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    want_s, want_i = oracle(q, x, 10)
    got_s, got_i = exact_search(q, [x[:333], x[333:]], top_k=10, chunk_size=128)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)


def test_memmap_float16_and_torch_inputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    q = rng.standard_normal((3, 8)).astype(np.float32)
    want_s, want_i = oracle(q, x.astype(np.float32), 5)
    got_s, got_i = exact_search(torch.from_numpy(q), mm, top_k=5, chunk_size=64)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    # A single (D,) query is one row.
    s1, i1 = exact_search(q[0], mm, top_k=5)
    np.testing.assert_array_equal(i1, want_i[:1])
    assert s1.shape == (1, 5)


def test_errors() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="dimension mismatch"):
        exact_search(np.ones((1, 2), dtype=np.float32), x)
    with pytest.raises(ValueError, match="top_k"):
        exact_search(np.ones((1, 3), dtype=np.float32), x, top_k=0)
    with pytest.raises(ValueError, match="empty"):
        exact_search(np.ones((1, 3), dtype=np.float32), [])
    with pytest.raises(ValueError, match="empty"):
        exact_search(np.ones((1, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        exact_search(np.array([[np.nan, 0, 0]], dtype=np.float32), x)
    with pytest.raises(TypeError, match="float"):
        exact_search(np.ones((1, 3), dtype=np.int64), x)


def test_score_budget_shrinks_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import textcl.search.exact as exact_mod

    # Spy on the (Q, C) score blocks the search actually builds: with the budget at 20
    # scores, 4 queries must be scored against 5-row corpus chunks (97 = 19 * 5 + 2), and
    # with the default budget the whole corpus is one chunk. The results stay exact.
    widths: list[int] = []
    real = exact_mod._select_topk

    def spy(scores: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if index.ndim == 1:  # a fresh chunk (merges pass 2-D indices)
            widths.append(scores.shape[1])
        return real(scores, index, k)

    monkeypatch.setattr(exact_mod, "_select_topk", spy)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((97, 8)).astype(np.float32)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    want_s, want_i = oracle(q, x, 6)
    got_s, got_i = exact_search(q, x, top_k=6)
    assert widths == [97]  # control: no budget pressure, one chunk
    widths.clear()
    monkeypatch.setattr(exact_mod, "SCORE_BUDGET", 20)  # 4 queries -> 5-row chunks
    got_s, got_i = exact_search(q, x, top_k=6)
    assert widths == [5] * 19 + [2]
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    widths.clear()
    exact_search(q, x, top_k=6, chunk_size=3)  # chunk_size below the budget wins
    assert widths == [3] * 32 + [1]
