"""Exact re-ranking of candidate rows with float queries (rescoring).

:func:`rescore` is the one place candidates found by an approximate or quantized search
(binary Hamming, int8, IVF-PQ, ...) are re-ranked: the float queries against the index's
*rescoring vectors* of only those rows, read from the ``.npy`` shards with ``os.pread`` at
the rows' offsets (:class:`RowFile`: nothing is memory-mapped, so a search holds the
candidates' rows, not the pages around them):

* a float index (float32 / float16): its own shards (exact float scores);
* a quantized index with rescoring shards (``shard-NNNNN.rescore.npy``): those rows,
  float32 as stored or int8 dequantized with the manifest's ranges;
* a quantized index without (``rescore_dtype`` none): the stored rows read back as
  sentence-transformers' ``semantic_search_faiss`` rescores them (int8 dequantized, binary
  as 0/1 bits).

Only the candidate rows are read (sorted, one shard at a time, consecutive rows in one
read), so the memory of a search is the candidates' vectors, not the index.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from textcl.errors import CorruptFileError
from textcl.search.manifest import Manifest
from textcl.search.quantize import QUANTIZED_DTYPES, dequantize, ranges_of


class RowFile:
    """Rows of a 2-D C-ordered ``.npy`` file, read on indexing with ``os.preadv`` at their
    byte offsets (a slice: one read; an index array: one read per run of consecutive
    rows). Nothing is memory-mapped: a process holds only the rows it asked for (a
    memory map would also keep every page the kernel reads around a faulted row)."""

    ndim = 2

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with self.path.open("rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f".npy format version {version} is not 1.0 or 2.0")
                self.offset = f.tell()
        except (ValueError, OSError, EOFError, SyntaxError) as e:
            raise CorruptFileError(f"{self.path}: not a readable .npy ({e})") from None
        if len(shape) != 2 or fortran or dtype.hasobject:
            raise CorruptFileError(
                f"{self.path}: expected a 2-D C-ordered numeric .npy, got {dtype}{list(shape)}"
                + (" in Fortran order" if fortran else "")
            )
        self.dtype = np.dtype(dtype)
        self._shape = (int(shape[0]), int(shape[1]))
        self.row_bytes = self._shape[1] * self.dtype.itemsize
        size = self.path.stat().st_size
        if size != self.offset + self._shape[0] * self.row_bytes:
            raise CorruptFileError(
                f"{self.path}: {size} bytes, its header says {self.offset} + "
                f"{self._shape[0]} x {self.row_bytes} (truncated or damaged)"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def __len__(self) -> int:
        return self._shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        n = self._shape[0]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n)
            if step != 1:
                raise IndexError("RowFile slices need step 1")
            idx = np.arange(start, max(start, stop), dtype=np.int64)
        else:
            idx = np.asarray(rows)
            if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
                raise IndexError("RowFile rows must be a slice or a 1-D integer array")
            idx = idx.astype(np.int64, copy=False)
            idx = np.where(idx < 0, idx + n, idx)
            if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise IndexError(f"row out of range for {self.path.name} of {n} rows")
        return self._read(idx)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self._shape[1]), dtype=self.dtype)
        if not len(idx):
            return out
        raw = out.view(np.uint8).reshape(len(idx), self.row_bytes)
        cut = np.flatnonzero(np.diff(idx) != 1) + 1
        firsts, lasts = np.r_[0, cut], np.r_[cut, len(idx)]
        with self.path.open("rb", buffering=0) as f:
            fd = f.fileno()
            for a, b in zip(firsts.tolist(), lasts.tolist(), strict=True):
                want = (b - a) * self.row_bytes
                at = self.offset + int(idx[a]) * self.row_bytes
                got = os.preadv(fd, [raw[a:b].data.cast("B")], at)
                if got != want:
                    raise CorruptFileError(
                        f"{self.path}: read {got} of {want} bytes at row {int(idx[a])} (the file "
                        "shrank after it was opened)"
                    )
        return out


class RescoreIndex(Protocol):
    """What rescoring needs of an open index (an :class:`~textcl.search.EmbeddingIndex`)."""

    folder: Path
    manifest: Manifest

    def __len__(self) -> int: ...

    def rescore_shards(self) -> list[Any]: ...


def rescore_dtype(manifest: Manifest) -> str:
    """The dtype the rescoring vectors of an index are stored in."""
    if manifest.dtype not in QUANTIZED_DTYPES:
        return manifest.dtype
    rescore = str(manifest.quantization.get("rescore_dtype", "none"))
    return manifest.dtype if rescore == "none" else rescore


def gather_rows(idx: RescoreIndex, rows: np.ndarray) -> np.ndarray:
    """float32 rescoring vectors of global ``rows`` (sorted, unique, in range)."""
    m = idx.manifest
    dtype = rescore_dtype(m)
    ranges = ranges_of(m.quantization)
    shards = idx.rescore_shards()
    starts = np.cumsum([0] + [int(s.shape[0]) for s in shards])
    parts = []
    for s, arr in enumerate(shards):
        lo, hi = np.searchsorted(rows, [starts[s], starts[s + 1]])
        if lo < hi:
            parts.append(dequantize(arr[rows[lo:hi] - starts[s]], dtype, ranges))
    if not parts:
        return np.empty((0, m.dimension), dtype=np.float32)
    out = np.concatenate(parts)
    if out.shape != (len(rows), m.dimension) or not np.isfinite(out).all():
        raise CorruptFileError(
            f"{idx.folder}: rescoring vectors of {len(rows)} rows read back as "
            f"{out.dtype}{list(out.shape)} or non-finite; re-encode the index"
        )
    return out


def rescore(
    idx: RescoreIndex, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank ``candidates`` by exact float inner product with ``queries``.

    Args:
        idx: an open index (its rescoring vectors: see the module doc).
        queries: ``(nq, dim)`` float queries.
        candidates: ``(nq, c)`` int64 global rows, ``-1`` for none (FAISS padding);
            duplicates in a row count once.
        k: results per query.

    Returns:
        ``scores`` float32 ``(nq, k)`` and ``ids`` int64 ``(nq, k)``, best first, ties by the
        smaller row; fewer than ``k`` valid candidates leave ``-inf`` / ``-1`` at the end.
    """
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or cand.shape[0] != q.shape[0]:
        raise ValueError(
            f"candidates must be (nq, c) with nq = {q.shape[0]} queries, got {cand.shape}"
        )
    if q.shape[1] != idx.manifest.dimension:
        raise ValueError(
            f"dimension mismatch: queries are {q.shape[1]}-d, the index {idx.manifest.dimension}-d"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    n = len(idx)
    if np.any((cand < -1) | (cand >= n)):
        raise ValueError(f"candidate rows must be -1 or in 0..{n - 1}")
    # One row per (query, candidate): duplicates and padding become -1.
    cand = cand.copy()
    srt = np.sort(cand, axis=1)
    dup = np.zeros_like(srt, dtype=bool)
    dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
    cand = np.where(dup, -1, srt)
    valid = cand >= 0
    rows = np.unique(cand[valid])
    vecs = gather_rows(idx, rows)
    pos = np.searchsorted(rows, np.where(valid, cand, rows[0] if len(rows) else 0))
    if len(rows):
        scores = np.einsum("qd,qcd->qc", q, vecs[pos]).astype(np.float32)
    else:
        scores = np.zeros(cand.shape, dtype=np.float32)
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
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
