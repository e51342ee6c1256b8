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
    check_search_params,
    faiss_file,
    faiss_file_checked,
    import_faiss,
)
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
DEFAULT_RESCORE_MULTIPLIER = 4


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


_LOADED: dict[tuple[str, int, int, str], Any] = {}


def load_binary_faiss(idx: QuantizedIndex, kind: str) -> Any:
    """The FAISS binary index ``kind`` of ``idx``, checked against its manifest entry (size
    always; sha256 and FAISS's reading on first load; cached per file)."""
    faiss = import_faiss()
    path, stat, digest = faiss_file_checked(idx.folder, idx.manifest, len(idx), kind)
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest)
    if key not in _LOADED:
        _LOADED.clear()
        data = path.read_bytes()
        if digest and hashlib.sha256(data).hexdigest() != digest:
            raise CorruptFileError(
                f"{path}: FAISS index file's sha256 differs from the manifest (changed after "
                "it was built); rebuild it with `textcl index build`"
            )
        try:
            fi = faiss.deserialize_index_binary(np.frombuffer(data, dtype=np.uint8))
        except Exception as e:  # FAISS raises RuntimeError on damaged files
            raise CorruptFileError(
                f"{path}: not a readable FAISS binary index ({type(e).__name__}); rebuild it "
                "with `textcl index build`"
            ) from None
        del data
        if int(fi.ntotal) != len(idx) or int(fi.d) != idx.manifest.dimension:
            raise CorruptFileError(
                f"{path}: FAISS index holds {fi.ntotal} vectors of {fi.d} bits, the index "
                f"folder {len(idx)} of dimension {idx.manifest.dimension}; rebuild it"
            )
        _LOADED[key] = fi
    return _LOADED[key]


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
    nprobe: int | None = None,
    ef_search: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ``(scores, rows)`` of float ``queries`` over a quantized index: candidates by
    the quantized rows (exact or a FAISS binary kind), the top ``top_k *
    rescore_multiplier`` rescored with :func:`~textcl.search.rescore.rescore`."""
    m = idx.manifest
    check_kind_for(m.dtype, faiss_kind, idx.folder)
    check_search_params(
        "hnsw" if faiss_kind == "binary-hnsw" else faiss_kind, nprobe=nprobe, ef_search=ef_search
    )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    mult = check_multiplier(rescore_multiplier)
    n = len(idx)
    k = min(top_k, n)
    c = min(n, k * mult) if mult > 1 else k
    q = np.asarray(queries, dtype=np.float32)
    if m.dtype in BINARY_DTYPES:
        bits = quantize(q, "ubinary")
        if faiss_kind is None:
            dist, cand = hamming_topk(bits, idx.shards, c)
        else:
            fi = load_binary_faiss(idx, faiss_kind)
            if faiss_kind == "binary-hnsw":
                fi.hnsw.efSearch = max(int(ef_search or DEFAULT_EF_SEARCH), c)
            d32, cand = fi.search(np.ascontiguousarray(bits), c)
            dist, cand = d32.astype(np.int64), cand.astype(np.int64)
        if mult <= 1:
            scores = np.where(cand >= 0, hamming_scores(dist, m.dimension), -np.inf)
            return scores.astype(np.float32), cand
    else:
        ranges = ranges_of(m.quantization)
        if ranges is None:
            raise CorruptFileError(f"{idx.folder}: a {m.dtype} index without int8 ranges")
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
