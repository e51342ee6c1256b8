"""Exact re-ranking of candidate rows (rescoring) against an index's float shards.

An approximate or compressed search (IVF-PQ, OPQ + IVF-PQ, a ``--factory`` index) returns
``top_k * rescore_multiplier`` candidates with approximate scores; :func:`rescore` re-ranks
them by the exact inner product of the float queries with the stored vectors of only
those rows, read from the memory-mapped ``.npy`` shards (sorted, one shard at a time), so
the memory of a search is the candidates' vectors, not the index.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from textcl.errors import CorruptFileError
from textcl.search.manifest import Manifest

QUERY_BLOCK = 256
"""Queries scored at once: bounds the ``(block, candidates, dim)`` gather."""


class RescoreIndex(Protocol):
    """What rescoring needs of an open index (an :class:`~textcl.search.EmbeddingIndex`)."""

    manifest: Manifest

    def __len__(self) -> int: ...

    @property
    def shards(self) -> list[np.ndarray]: ...


def gather_rows(idx: RescoreIndex, rows: np.ndarray) -> np.ndarray:
    """float32 vectors of global ``rows`` (sorted, unique, in range), read shard by shard."""
    dim = idx.manifest.dimension
    out = np.empty((len(rows), dim), dtype=np.float32)
    if not len(rows):
        return out
    shards = idx.shards
    starts = np.cumsum([0] + [int(s.shape[0]) for s in shards])
    for s, arr in enumerate(shards):
        lo, hi = np.searchsorted(rows, [starts[s], starts[s + 1]])
        if lo < hi:
            out[lo:hi] = arr[rows[lo:hi] - starts[s]]
    if not np.isfinite(out).all():
        raise CorruptFileError(
            f"{getattr(idx, 'folder', 'index')}: stored vectors read back non-finite; "
            "re-encode the index"
        )
    return out


def rescore(
    idx: RescoreIndex, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank ``candidates`` by the exact float inner product with ``queries``.

    Args:
        idx: an open index (its float shards are read at the candidate rows only).
        queries: ``(nq, dim)`` float queries.
        candidates: ``(nq, c)`` int64 global rows, ``-1`` for none (FAISS padding);
            duplicates in a row count once.
        k: results per query.

    Returns:
        ``scores`` float32 ``(nq, k)`` and ``ids`` int64 ``(nq, k)``, best first, ties by
        the smaller row; fewer than ``k`` valid candidates leave ``-inf`` / ``-1`` at the
        end.
    """
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or cand.shape[0] != q.shape[0]:
        raise ValueError(
            f"candidates must be (nq, c) with nq = {q.shape[0]} queries, got {cand.shape}"
        )
    dim = idx.manifest.dimension
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"dimension mismatch: queries are {q.shape}, the index {dim}-d")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    n = len(idx)
    if np.any((cand < -1) | (cand >= n)):
        raise ValueError(f"candidate rows must be -1 or in 0..{n - 1}")
    # One entry per (query, row): duplicates become padding.
    srt = np.sort(cand, axis=1)
    dup = np.zeros(srt.shape, dtype=bool)
    dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
    cand = np.where(dup, -1, srt)
    valid = cand >= 0
    rows = np.unique(cand[valid])
    vecs = gather_rows(idx, rows)
    scores = np.full(cand.shape, -np.inf, dtype=np.float32)
    if len(rows):
        pos = np.searchsorted(rows, np.where(valid, cand, rows[0]))
        for b in range(0, len(q), QUERY_BLOCK):
            sl = slice(b, b + QUERY_BLOCK)
            s = np.einsum("qd,qcd->qc", q[sl], vecs[pos[sl]]).astype(np.float32)
            scores[sl] = np.where(valid[sl], s, -np.inf)
    ids = np.where(valid, cand, np.iinfo(np.int64).max)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    out_s = np.take_along_axis(scores, order, axis=1)
    out_i = np.take_along_axis(ids, order, axis=1)
    out_i = np.where(np.isfinite(out_s), out_i, -1)
    if out_s.shape[1] < k:
        pad = k - out_s.shape[1]
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_s.astype(np.float32), out_i.astype(np.int64)
