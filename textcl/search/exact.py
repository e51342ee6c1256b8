"""Exact top-k search: chunked matrix multiply + running top-k merge, memory bounded.

Pure functions over numpy (or torch) arrays. Scores are inner products; pass L2-normalised
vectors for cosine similarity. Ordering is deterministic: by score descending, ties broken
by the smaller corpus index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_CHUNK_SIZE = 65_536
SCORE_BUDGET = 1 << 24
"""At most this many float32 scores (64 MiB) are held per chunk: with many queries the corpus
chunk shrinks to ``SCORE_BUDGET // Q`` rows."""


def _as_2d_float32(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (rows, dim) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{what} must be a float array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _tie_safe_cols(scores: np.ndarray, kth: np.ndarray, k: int) -> np.ndarray:
    """Positions of the top ``k`` per row given the k-th largest value ``kth`` (R, 1): every
    score above it, then the first (leftmost) positions equal to it."""
    above = scores > kth
    equal = scores == kth
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (equal & (np.cumsum(equal, axis=1) <= need))
    # Row-major: exactly k per row, in position order.
    return np.nonzero(keep)[1].reshape(scores.shape[0], k)


def _select_topk(scores: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` per row of ``scores`` (Q, C) with global ``index`` (Q, C) or (C,).

    Ties at the k-th value keep the smallest indices; the result is sorted by
    (score descending, index ascending). ``index`` must be ascending along each row among
    equal scores (true for a chunk's arange and for a concatenation of earlier results).
    """
    q, c = scores.shape
    if index.ndim == 1:
        index = np.broadcast_to(index, (q, c))
    if k < c:
        # Fast path: an unordered top-k by partition; exact unless the k-th value is tied
        # with a score left out, in which case that row takes the smallest-index rule.
        cols = np.argpartition(scores, c - k, axis=1)[:, c - k :]
        kth = np.take_along_axis(scores, cols, axis=1).min(axis=1, keepdims=True)
        tied = np.nonzero((scores >= kth).sum(axis=1) > k)[0]
        if len(tied):
            cols[tied] = _tie_safe_cols(scores[tied], kth[tied], k)
        scores = np.take_along_axis(scores, cols, axis=1)
        index = np.take_along_axis(index, cols, axis=1)
    order = np.lexsort((index, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(index, order, axis=1)


def exact_search(
    queries: Any,
    corpus: Any | Sequence[Any],
    top_k: int = 10,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of every query over the corpus.

    Args:
        queries: ``(Q, D)`` (or ``(D,)``) float array or tensor.
        corpus: a ``(N, D)`` array / tensor / ``np.memmap``, or a sequence of such shards
            (indices then run over the shards in order). float16 shards are promoted to
            float32 one chunk at a time.
        top_k: results per query; ``min(top_k, N)`` come back.
        chunk_size: corpus rows multiplied at a time (at most ``SCORE_BUDGET // Q``);
            memory is ``O(chunk_size * (D + Q))`` whatever ``N`` is.

    Returns:
        ``scores`` float32 ``(Q, k)`` and ``indices`` int64 ``(Q, k)``, each row sorted by
        score descending with ties broken by the smaller index.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    q = _as_2d_float32(queries, "queries")
    if not np.isfinite(q).all():
        raise ValueError("queries contain NaN or infinite values")
    shards: list[Any] = list(corpus) if isinstance(corpus, (list, tuple)) else [corpus]
    if not shards:
        raise ValueError("corpus is empty: no shards")
    n_q, dim = q.shape
    rows = max(1, min(chunk_size, SCORE_BUDGET // n_q))
    best_s = np.empty((n_q, 0), dtype=np.float32)
    best_i = np.empty((n_q, 0), dtype=np.int64)
    offset = 0
    for s, shard in enumerate(shards):
        if hasattr(shard, "detach"):
            shard = shard.detach().cpu().numpy()
        if getattr(shard, "ndim", 0) != 2:
            raise ValueError(f"corpus shard {s} must be 2-D (rows, dim)")
        if shard.shape[1] != dim:
            raise ValueError(
                f"dimension mismatch: queries have dimension {dim}, corpus shard {s} has "
                f"{shard.shape[1]}"
            )
        for start in range(0, shard.shape[0], rows):
            chunk = np.asarray(shard[start : start + rows], dtype=np.float32)
            scores = q @ chunk.T  # (Q, C)
            if not np.isfinite(scores).all():
                raise ValueError(
                    f"corpus shard {s} rows {start}..{start + chunk.shape[0] - 1} give "
                    "NaN or infinite scores"
                )
            idx = np.arange(offset + start, offset + start + chunk.shape[0], dtype=np.int64)
            cs, ci = _select_topk(scores, idx, min(top_k, chunk.shape[0]))
            merged_s = np.concatenate([best_s, cs], axis=1)
            merged_i = np.concatenate([best_i, ci], axis=1)
            best_s, best_i = _select_topk(merged_s, merged_i, min(top_k, merged_s.shape[1]))
        offset += shard.shape[0]
    if offset == 0:
        raise ValueError("corpus is empty: 0 rows")
    return best_s, best_i
