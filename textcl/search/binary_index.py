"""Search of quantized index folders: candidates by the quantized vectors, then rescoring.

* ``int8`` / ``uint8``: the float query against the dequantized rows (exact, chunked over
  the memory-mapped shards, :class:`~textcl.search.quantize.DequantShard`);
* ``binary`` / ``ubinary``: the query's sign bits against the packed rows by Hamming
  distance, exact in numpy (:func:`~textcl.search.quantize.hamming_topk`) or through a FAISS
  binary index (``binary-flat``: ``faiss.IndexBinaryFlat``, ``binary-hnsw``:
  ``faiss.IndexBinaryHNSW``; ``textcl index build --kind binary-flat|binary-hnsw``).

The top ``k * rescore_multiplier`` candidates are then re-ranked by
:func:`textcl.search.rescore.rescore` (multiplier 0 or 1: no rescoring; binary scores are
then ``1 - 2 * hamming / dim``). FAISS binary indexes are written and checked like the float
kinds (:mod:`textcl.search.faiss_index`): atomic file, manifest entry with size and sha256,
stale when the count changes.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from textcl.errors import CorruptFileError, InputError
from textcl.io import atomic_write_bytes
from textcl.search.exact import DEFAULT_CHUNK_SIZE, exact_search
from textcl.search.faiss_index import (
    ADD_CHUNK,
    DEFAULT_EF_SEARCH,
    cached,
    check_search_params,
    faiss_file,
    has_faiss,
    import_faiss,
    load_checked,
)
from textcl.search.faiss_pq import DEFAULT_RESCORE_MULTIPLIER
from textcl.search.manifest import Manifest
from textcl.search.quantize import (
    BINARY_DTYPES,
    CodesShard,
    as_ubinary,
    hamming_scores,
    hamming_topk,
    quantize,
    ranges_of,
    steps_of,
)
from textcl.search.rescore import rescore

BINARY_KINDS: tuple[str, ...] = ("binary-flat", "binary-hnsw")
DEFAULT_CANDIDATE_POOL = 2000
"""Hamming candidates per query that the sign stage re-ranks by default, at the least
(exact and ``binary-flat`` searches of a binary index with rescoring rows; at least ``k *
multiplier``). At 1M MiniLM-like vectors the true top 10 lie in the Hamming top 40 for 84%
of them, in the top 2,000 for 99%."""
POOL_ONE_IN = 500
"""The default pool is also at least one row in this many (``N / 500``): the Hamming rank
of a true neighbour grows with the corpus (as many more vectors fall between it and the
query), so a pool that is a fixed share of the corpus keeps the candidates' recall (2,000
at 1M, 10,000 at 5M; the Hamming scan reads all ``N`` codes anyway)."""
SQ8_MAX_BATCH = 16
"""int8 / uint8 searches of up to this many queries go through FAISS's scalar quantizer
(one pass over the codes per query, no float copy of them); larger batches through the
chunked numpy product, which converts each chunk of codes once for the whole batch."""


class QuantizedIndex(Protocol):
    folder: Path
    manifest: Manifest

    def __len__(self) -> int: ...

    @property
    def shards(self) -> list[np.ndarray]: ...

    def rescore_shards(self) -> list[Any]: ...


def check_kind_for(dtype: str, kind: str | None, folder: Path) -> None:
    """InputError for a FAISS ``kind`` that cannot serve an index of ``dtype``."""
    if kind is None:
        return
    if kind in BINARY_KINDS and dtype not in BINARY_DTYPES:
        raise InputError(
            f"{folder}: FAISS kind {kind!r} needs a binary index (textcl encode --dtype binary "
            f"or ubinary, or textcl index quantize --dtype binary); this index is {dtype}"
        )
    if kind not in BINARY_KINDS and dtype in BINARY_DTYPES:
        raise InputError(
            f"{folder}: FAISS kind {kind!r} holds float vectors; this index is {dtype}: use "
            "--kind binary-flat or binary-hnsw"
        )
    if kind not in BINARY_KINDS and dtype in ("int8", "uint8"):
        raise InputError(
            f"{folder}: FAISS kind {kind!r} holds float vectors; this index is {dtype} "
            "(searched exactly over the int8 rows, then rescored): drop --faiss / --kind"
        )


def build_binary_faiss(
    idx: QuantizedIndex, kind: str, *, m: int = 32, ef_construction: int = 200
) -> dict[str, Any]:
    """Build the FAISS binary index ``kind`` over a binary index folder, write it atomically
    and record it in the manifest; returns the manifest entry."""
    check_kind_for(idx.manifest.dtype, kind, idx.folder)
    for name, value, low in (
        ("m (--m)", m, 2),
        ("ef_construction (--ef-construction)", ef_construction, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    faiss = import_faiss()
    bits = idx.manifest.dimension
    t0 = time.perf_counter()
    params: dict[str, Any] = {}
    if kind == "binary-flat":
        fi = faiss.IndexBinaryFlat(bits)
    else:
        fi = faiss.IndexBinaryHNSW(bits, m)
        fi.hnsw.efConstruction = ef_construction
        params = {"m": m, "ef_construction": ef_construction}
    for arr in idx.shards:
        for lo in range(0, arr.shape[0], ADD_CHUNK):
            fi.add(np.ascontiguousarray(as_ubinary(np.asarray(arr[lo : lo + ADD_CHUNK]))))
    seconds = time.perf_counter() - t0
    name = faiss_file(kind)
    data = faiss.serialize_index_binary(fi).tobytes()
    atomic_write_bytes(idx.folder / name, data)
    entry = {
        "file": name,
        "kind": kind,
        "count": len(idx),
        "params": params,
        "build_seconds": round(seconds, 3),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    idx.manifest.faiss[kind] = entry
    idx.manifest.save(idx.folder)
    return entry


def load_binary_faiss(idx: QuantizedIndex, kind: str) -> Any:
    """The FAISS binary index ``kind`` of ``idx``, checked and cached like the float kinds
    (:func:`~textcl.search.faiss_index.load_checked`, one cache); read from the file
    directly (no copy of its bytes in memory next to the index)."""
    faiss = import_faiss()
    return load_checked(idx, kind, faiss.read_index_binary, "FAISS binary index")


def sq8_index(idx: QuantizedIndex, ranges: np.ndarray) -> Any:
    """An in-memory ``faiss.IndexScalarQuantizer`` (``QT_8bit``, inner product) holding the
    int8 / uint8 codes of ``idx`` as they are: FAISS decodes bucket ``b`` as ``vmin + (b +
    0.5) / 255 * vdiff``, so ``vmin = lo - step / 2`` and ``vdiff = 255 * step`` give the
    manifest's ``lo + b * step`` (the same dot products as the numpy path, up to float
    rounding). Built once per process from the shards (``D`` bytes a vector resident) and
    kept in the FAISS cache."""
    faiss = import_faiss()
    m = idx.manifest
    key = (str(idx.folder.resolve()), "int8-sq8", *(s.sha256 for s in m.shards))

    def build() -> Any:
        fi = faiss.IndexScalarQuantizer(
            m.dimension, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        starts, steps = steps_of(ranges)
        trained = np.concatenate([starts - steps / 2, 255 * steps]).astype(np.float32)
        faiss.copy_array_to_vector(trained, fi.sq.trained)
        fi.is_trained = True
        for arr in idx.shards:
            for lo in range(0, arr.shape[0], ADD_CHUNK):
                # an int8 code + 128 is its uint8 bucket: the same flip of the top bit
                fi.add_sa_codes(
                    np.ascontiguousarray(as_ubinary(np.asarray(arr[lo : lo + ADD_CHUNK])))
                )
        return fi

    return cached(key, build)


def check_pool(value: Any) -> None:
    """InputError for a ``candidate_pool`` that is not an integer >= 0."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InputError(
            f"--candidate-pool must be an integer >= 0 (0: no sign re-ranking), got {value!r}"
        )


def pool_size(m: Manifest, pool: int | None, kind: str | None, c: int, n: int) -> int:
    """Hamming candidates per query of a binary search that rescores ``c``: ``pool`` (or
    :func:`default_pool`; 0 for ``binary-hnsw`` unless given), at least ``c``, at most
    ``n``. InputError when a given ``pool`` has no use (no rescoring rows)."""
    has_rows = str(m.quantization.get("rescore_dtype", "none")) != "none"
    if pool is not None and pool > 0 and not has_rows:
        raise InputError(
            "--candidate-pool re-ranks Hamming candidates before rescoring them from the "
            "rescoring rows; this index has none (--rescore-dtype none): drop it"
        )
    if not has_rows:
        return c
    if pool is None:
        pool = 0 if kind == "binary-hnsw" else default_pool(n)
    return min(n, max(c, pool))


def default_pool(n: int) -> int:
    """The default candidate pool over ``n`` vectors: ``max(2000, ceil(n / 500))``."""
    return max(DEFAULT_CANDIDATE_POOL, -(-n // POOL_ONE_IN))


BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)
"""``(256, 8)``: the bits of every byte value, most significant first (``np.packbits``
order: bit ``t`` of byte ``j`` is dimension ``8 j + t``)."""


def sign_scores(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``(Q, P)`` float32 dot products of float ``queries`` ``(Q, D)`` with the +-1 sign
    vectors (``2 * bit - 1``) of packed uint8 ``codes`` ``(Q, P, D / 8)``: a per-query table
    of every byte value's contribution at every byte position (``D / 8 x 256``), then
    ``D / 8`` look-ups a code (the codes are never unpacked)."""
    q = np.asarray(queries, dtype=np.float32)
    nq, nb = q.shape[0], codes.shape[-1]
    w = q.reshape(nq, nb, 8)
    table = 2 * np.einsum("qbt,vt->qbv", w, BYTE_BITS) - w.sum(axis=2)[..., None]
    cols = np.arange(nb)[None, :]
    out = np.empty(codes.shape[:2], dtype=np.float32)
    for i in range(nq):
        out[i] = table[i][cols, codes[i]].sum(axis=1)
    return out


def gather_codes(idx: QuantizedIndex, rows: np.ndarray, fi: Any = None) -> np.ndarray:
    """Packed uint8 codes ``(Q, P, D / 8)`` of global ``rows`` ``(Q, P)`` (``-1``: zeros):
    from the FAISS binary index's own storage when given (no copy of it), else from the
    memory-mapped shards."""
    nb = idx.manifest.dimension // 8
    safe = np.where(rows >= 0, rows, 0)
    if fi is not None:
        faiss = import_faiss()
        flat = faiss.downcast_IndexBinary(fi.storage) if hasattr(fi, "storage") else fi
        xb = faiss.rev_swig_ptr(flat.xb.data(), int(flat.ntotal) * nb).reshape(-1, nb)
        return np.asarray(xb[safe])
    out = np.empty((*rows.shape, nb), dtype=np.uint8)
    start = 0
    for shard in idx.shards:
        inside = (safe >= start) & (safe < start + shard.shape[0])
        if inside.any():
            out[inside] = as_ubinary(np.asarray(shard[safe[inside] - start]))
        start += shard.shape[0]
    return out


def sign_rerank(
    idx: QuantizedIndex, queries: np.ndarray, pool: np.ndarray, c: int, fi: Any = None
) -> np.ndarray:
    """The best ``c`` of the Hamming candidates ``pool`` ``(Q, P)`` by the float query's dot
    product with their sign vectors (ties: the smaller row; ``-1`` rows last, kept as
    ``-1``): the asymmetric stage between Hamming and rescoring."""
    scores = sign_scores(queries, gather_codes(idx, pool, fi))
    valid = pool >= 0
    scores = np.where(valid, scores, -np.inf)
    ids = np.where(valid, pool, np.iinfo(np.int64).max)
    order = np.lexsort((ids, -scores), axis=1)[:, :c]
    return np.take_along_axis(np.where(valid, pool, -1), order, axis=1)


def check_multiplier(value: Any) -> int:
    """``rescore_multiplier`` as an int >= 0 (InputError otherwise)."""
    if value is None:
        return DEFAULT_RESCORE_MULTIPLIER
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(
            f"--rescore-multiplier must be an integer >= 0 (0 or 1: no rescoring), got {value!r}"
        )
    return value


def quantized_search(
    idx: QuantizedIndex,
    queries: np.ndarray,
    top_k: int,
    *,
    faiss_kind: str | None = None,
    rescore_multiplier: int | None = None,
    candidate_pool: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ``(scores, rows)`` of float ``queries`` over a quantized index: candidates by
    the quantized rows (exact or a FAISS binary kind), the top ``top_k *
    rescore_multiplier`` rescored with :func:`~textcl.search.rescore.rescore`. A binary
    index with rescoring rows first takes the Hamming top ``candidate_pool`` (default
    :func:`default_pool`) and keeps the ``top_k * rescore_multiplier`` of them
    whose sign vectors score best against the float query (:func:`sign_rerank`)."""
    m = idx.manifest
    check_kind_for(m.dtype, faiss_kind, idx.folder)
    check_search_params(
        "hnsw" if faiss_kind == "binary-hnsw" else faiss_kind, nprobe=nprobe, ef_search=ef_search
    )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    mult = check_multiplier(rescore_multiplier)
    check_pool(candidate_pool)
    if candidate_pool and m.dtype not in BINARY_DTYPES:
        raise InputError(
            f"--candidate-pool applies to a binary index; {idx.folder} is {m.dtype}: drop it"
        )
    n = len(idx)
    k = min(top_k, n)
    c = min(n, k * mult) if mult > 1 else k
    q = np.asarray(queries, dtype=np.float32)
    if m.dtype in BINARY_DTYPES:
        pool = pool_size(m, candidate_pool, faiss_kind, c, n) if mult > 1 else c
        bits = quantize(q, "ubinary")
        fi = None
        if faiss_kind is None:
            dist, cand = hamming_topk(bits, idx.shards, pool)
        else:
            fi = load_binary_faiss(idx, faiss_kind)
            if faiss_kind == "binary-hnsw":
                fi.hnsw.efSearch = max(int(ef_search or DEFAULT_EF_SEARCH), pool)
            d32, cand = fi.search(np.ascontiguousarray(bits), pool)
            dist, cand = d32.astype(np.int64), cand.astype(np.int64)
        if mult <= 1:
            scores = np.where(cand >= 0, hamming_scores(dist, m.dimension), -np.inf)
            return scores.astype(np.float32), cand
        if pool > c:
            cand = sign_rerank(idx, q, cand, c, fi)
    else:
        ranges = ranges_of(m.quantization)
        if ranges is None:
            raise CorruptFileError(f"{idx.folder}: a {m.dtype} index without int8 ranges")
        if q.shape[0] <= SQ8_MAX_BATCH and has_faiss():
            scores, cand = sq8_index(idx, ranges).search(np.ascontiguousarray(q), c)
            scores = np.where(cand >= 0, scores, -np.inf).astype(np.float32)
            cand = cand.astype(np.int64)
        else:
            # q . (lo + (code + off) * step) = (q * step) . code + q . (lo + off * step):
            # one float conversion of the codes per chunk, the rest folded into the query.
            starts, steps = steps_of(ranges)
            off = 128.0 if m.dtype == "int8" else 0.0
            shards = [CodesShard(s) for s in idx.shards]
            scores, cand = exact_search(q * steps, shards, top_k=c, chunk_size=chunk_size)
            scores = scores + (q @ (starts + off * steps))[:, None].astype(np.float32)
        if mult <= 1:
            return scores, cand
    return rescore(idx, q, cand, k)
