"""Quantized embeddings: int8 / uint8 (calibrated per-dimension ranges) and binary / ubinary
(packed sign bits), bit for bit as sentence-transformers'
``sentence_transformers.quantization.quantize_embeddings``.

* ``int8`` / ``uint8``: every dimension ``d`` is cut into 256 buckets between the minimum
  ``lo[d]`` and maximum ``hi[d]`` of a calibration sample (the *ranges*, ``(2, dim)``
  float32): ``floor((x - lo) / ((hi - lo) / 255))`` clipped to ``0..255`` (``uint8``), minus
  128 (``int8``). Values outside the calibration range fall in the first / last bucket.
  A bucket reads back (:func:`dequantize`) as ``lo + bucket * step``.
* ``binary`` / ``ubinary``: ``np.packbits(x > 0)``: 8 dimensions a byte, ``dim / 8`` bytes a
  vector; ``binary`` stores ``byte - 128`` as int8 (sentence-transformers' convention),
  ``ubinary`` the byte itself. Search compares packed vectors by Hamming distance.

An index folder of a quantized ``dtype`` records its quantization in the manifest's
``quantization`` object (validated on load by :func:`check_quantization`)::

    {"ranges": [[lo...], [hi...]] | null,   # int8 ranges (int8/uint8 dtype or int8 rescoring)
     "calibration_rows": 10000,              # vectors the ranges were computed on
     "calibration_size": 10000,              # --calibration-size asked for
     "calibration": "first 10000 non-blank texts of the input",
     "rescore_dtype": "float32" | "int8" | "none"}

and, unless ``rescore_dtype`` is ``none``, one rescoring shard per shard
(``shard-NNNNN.rescore.npy``: the same rows as float32, or int8 with the same ranges),
read only at the candidate rows (:class:`textcl.search.rescore.RowFile`, ``os.preadv``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from textcl.errors import CorruptFileError, InputError

QUANTIZED_DTYPES: tuple[str, ...] = ("int8", "uint8", "binary", "ubinary")
BINARY_DTYPES: tuple[str, ...] = ("binary", "ubinary")
RESCORE_DTYPES: tuple[str, ...] = ("float32", "int8", "none")
DEFAULT_CALIBRATION_SIZE = 10_000
"""Vectors (the first non-blank texts of the input) int8 ranges are calibrated on."""
MIN_CALIBRATION_ROWS = 16
"""Fewer calibration vectors than this are refused: per-dimension min/max of a handful of
vectors clip most of the corpus into the first and last buckets."""


def default_rescore_dtype(dtype: str) -> str:
    """``int8`` rescoring shards for a binary index (4x smaller on disk than float32,
    sentence-transformers' recommended binary + int8 setup), ``float32`` for an int8 one."""
    return "int8" if dtype in BINARY_DTYPES else "float32"


def needs_ranges(dtype: str, rescore_dtype: str) -> bool:
    """Whether an index of ``dtype`` with ``rescore_dtype`` shards needs int8 ranges."""
    return dtype in ("int8", "uint8") or rescore_dtype == "int8"


def check_dtype_options(dtype: str, rescore_dtype: str | None, dimension: int | None) -> str:
    """The rescoring dtype for ``dtype`` (``rescore_dtype`` or its default), or
    :class:`~textcl.errors.InputError` for a combination that cannot work."""
    if dtype not in QUANTIZED_DTYPES:
        if rescore_dtype not in (None, "none"):
            raise InputError(
                f"--rescore-dtype applies only to a quantized --dtype ({', '.join(QUANTIZED_DTYPES)}),"
                f" not to {dtype}; drop --rescore-dtype"
            )
        return "none"
    rescore = default_rescore_dtype(dtype) if rescore_dtype is None else rescore_dtype
    if rescore not in RESCORE_DTYPES:
        raise InputError(
            f"--rescore-dtype must be one of {', '.join(RESCORE_DTYPES)}, got {rescore!r}"
        )
    if dtype in ("int8", "uint8") and rescore == "int8":
        raise InputError(
            f"--rescore-dtype int8 with --dtype {dtype}: the rescoring shards would repeat the "
            "stored vectors; use --rescore-dtype float32 (exact rescoring) or none"
        )
    if dimension is not None and dtype in BINARY_DTYPES and dimension % 8:
        raise InputError(
            f"--dtype {dtype} packs 8 dimensions a byte: the model's dimension {dimension} is "
            "not a multiple of 8; use --dtype int8 (or a --truncate-dim multiple of 8)"
        )
    return rescore


def calibration_ranges(embeddings: np.ndarray) -> np.ndarray:
    """``(2, dim)`` float32 per-dimension minimum and maximum of ``embeddings``."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] < MIN_CALIBRATION_ROWS:
        raise InputError(
            f"int8 calibration needs at least {MIN_CALIBRATION_ROWS} vectors, got "
            f"{x.shape[0] if x.ndim == 2 else 0}: the corpus (or --calibration-size) is too "
            "small for int8 ranges; use --dtype float32 / float16 / binary with "
            "--rescore-dtype float32"
        )
    if not np.isfinite(x).all():
        raise InputError("int8 calibration vectors contain NaN or infinite values")
    return np.vstack((x.min(axis=0), x.max(axis=0))).astype(np.float32)


def steps_of(ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, steps)`` float32 of int8 ranges: bucket ``b`` (0..255) of dimension ``d``
    reads back as ``starts[d] + b * steps[d]``."""
    ranges = np.asarray(ranges).astype(np.float32, copy=False)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    return starts, np.where(steps == 0, 1, steps)


def quantize(embeddings: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """``embeddings`` (float ``(n, dim)``) quantized to ``dtype`` (see the module doc);
    ``ranges`` (``(2, dim)``) are required for int8 / uint8. ``float32`` / ``float16``
    are plain casts."""
    x = np.asarray(embeddings)
    if dtype in ("float32", "float16"):
        return x.astype(dtype)
    if dtype in ("int8", "uint8"):
        if ranges is None:
            raise ValueError(f"{dtype} quantization needs calibration ranges")
        starts, steps = steps_of(ranges)
        q = np.clip(np.floor((x - starts) / steps), 0, 255)
        return q.astype(np.uint8) if dtype == "uint8" else (q - 128).astype(np.int8)
    if dtype == "binary":
        return (np.packbits(x > 0, axis=-1).astype(np.int16) - 128).astype(np.int8)
    if dtype == "ubinary":
        return np.packbits(x > 0, axis=-1)
    raise ValueError(f"unknown dtype {dtype!r}")


def dequantize(codes: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """float32 vectors of stored rows ``codes``: floats as they are, int8 / uint8 buckets as
    ``lo + bucket * step`` (sentence-transformers' rescoring), binary as unpacked 0/1 bits
    (what sentence-transformers rescores a binary corpus against)."""
    c = np.asarray(codes)
    if dtype in ("float32", "float16"):
        return c.astype(np.float32)
    if dtype in ("int8", "uint8"):
        if ranges is None:
            raise ValueError(f"{dtype} rows need their calibration ranges to read back")
        starts, steps = steps_of(ranges)
        b = c.astype(np.float32) + (128 if dtype == "int8" else 0)
        return b * steps + starts
    if dtype in BINARY_DTYPES:
        return np.unpackbits(as_ubinary(c), axis=-1).astype(np.float32)
    raise ValueError(f"unknown dtype {dtype!r}")


def as_ubinary(codes: np.ndarray) -> np.ndarray:
    """Packed bits as uint8 (a ``binary`` int8 row is ``byte - 128``)."""
    c = np.asarray(codes)
    return (c.view(np.uint8) ^ np.uint8(0x80)) if c.dtype == np.int8 else c.astype(np.uint8)


def storage(dtype: str, dimension: int) -> tuple[np.dtype[Any], int]:
    """numpy dtype and row width of a shard of ``dtype`` for ``dimension``-d vectors."""
    if dtype in BINARY_DTYPES:
        return np.dtype(np.int8 if dtype == "binary" else np.uint8), (dimension + 7) // 8
    return np.dtype(dtype), dimension


HAMMING_BUDGET = 1 << 21
"""At most this many distances (16 MiB of int64) are held per chunk: with many queries the
corpus chunk shrinks to ``HAMMING_BUDGET // Q`` rows (at least 1024)."""


def hamming_topk(
    query_bits: np.ndarray, shards: list[Any], k: int, chunk: int = 262_144
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-k: ``(distances int64 (Q, k), rows int64 (Q, k))`` of packed uint8
    queries ``(Q, B)`` over packed shards (int8 ``binary`` or uint8 ``ubinary``), smallest
    distance first, ties by the smaller row. The running best are kept in row order (one
    partition per chunk) and sorted once at the end, so a large ``k`` (a candidate pool)
    costs no sort per chunk."""
    q = np.ascontiguousarray(as_ubinary(query_bits))
    wide = q.shape[1] % 8 == 0  # compare 8 bytes at a time
    if wide:
        q = q.view(np.uint64)
    nq = q.shape[0]
    chunk = max(1024, min(chunk, HAMMING_BUDGET // max(nq, 1)))
    best_d = np.empty((nq, 0), dtype=np.int64)
    best_i = np.empty((nq, 0), dtype=np.int64)
    offset = 0
    for shard in shards:
        for lo in range(0, shard.shape[0], chunk):
            block = np.ascontiguousarray(as_ubinary(np.asarray(shard[lo : lo + chunk])))
            if wide:
                block = block.view(np.uint64)
            dist = np.empty((nq, block.shape[0]), dtype=np.int64)
            for i in range(nq):
                dist[i] = np.bitwise_count(np.bitwise_xor(block, q[i])).sum(axis=1, dtype=np.int64)
            rows = np.arange(offset + lo, offset + lo + block.shape[0], dtype=np.int64)
            d = np.concatenate([best_d, dist], axis=1)
            r = np.concatenate([best_i, np.broadcast_to(rows, dist.shape)], axis=1)
            kk = min(k, d.shape[1])
            if kk < d.shape[1]:
                part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
                # ties at the k-th distance: the leftmost (smallest rows) are kept
                kth = np.take_along_axis(d, part, axis=1).max(axis=1, keepdims=True)
                less = d < kth
                eq = (d == kth) & (np.cumsum(d == kth, axis=1) <= kk - less.sum(1, keepdims=True))
                keep = less | eq
                # nonzero keeps the column order: the kept rows stay in increasing order
                cols = np.nonzero(keep)[1].reshape(nq, kk)
                d = np.take_along_axis(d, cols, axis=1)
                r = np.take_along_axis(r, cols, axis=1)
            best_d, best_i = d, r  # ordered by row (chunks come in row order): no sort
        offset += shard.shape[0]
    order = np.lexsort((best_i, best_d), axis=1)
    return np.take_along_axis(best_d, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def hamming_scores(distances: np.ndarray, dimension: int) -> np.ndarray:
    """Hamming distances as a cosine estimate of the sign vectors: ``1 - 2 * d / dim``
    (the score a binary search reports when it does not rescore)."""
    return (1.0 - 2.0 * np.asarray(distances, dtype=np.float32) / dimension).astype(np.float32)


class CodesShard:
    """A read-only float32 view of the raw codes of an int8 / uint8 shard (rows converted on
    slicing; a memory-mapped shard stays on disk)."""

    def __init__(self, shard: Any) -> None:
        self.shard = shard
        self.ndim = 2

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.shard.shape[0]), int(self.shard.shape[1]))

    def __getitem__(self, rows: Any) -> np.ndarray:
        return np.asarray(self.shard[rows], dtype=np.float32)


class DequantShard:
    """A read-only float32 view of an int8 / uint8 shard (rows are dequantized on slicing,
    so a memory-mapped shard stays on disk): exact search of a float query over it gives
    the dot with the dequantized vectors."""

    def __init__(self, shard: Any, dtype: str, ranges: np.ndarray) -> None:
        self.shard, self.dtype, self.ranges = shard, dtype, ranges
        self.ndim = 2

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.shard.shape[0]), int(self.shard.shape[1]))

    def __getitem__(self, rows: Any) -> np.ndarray:
        return dequantize(self.shard[rows], self.dtype, self.ranges)


def check_quantization(data: Any, dtype: str, dimension: int, where: str) -> None:
    """Validate a manifest's ``quantization`` object for an index of ``dtype`` and
    ``dimension`` (``{}`` for float indexes); a crafted one raises CorruptFileError."""
    if not isinstance(data, dict):
        raise CorruptFileError(f"{where}: quantization must be an object")
    if dtype not in QUANTIZED_DTYPES:
        if data:
            raise CorruptFileError(
                f"{where}: a {dtype} index has no quantization, got {data!r:.80}"
            )
        return
    known = {
        "ranges",
        "calibration_rows",
        "calibration_size",
        "calibration",
        "rescore_dtype",
        "source_index",
        "source_manifest_sha256",
    }
    if set(data) - known or "rescore_dtype" not in data:
        raise CorruptFileError(
            f"{where}: quantization must hold {sorted(known)}, got {sorted(data)}"
        )
    rescore = data["rescore_dtype"]
    if rescore not in RESCORE_DTYPES or (dtype in ("int8", "uint8") and rescore == "int8"):
        raise CorruptFileError(f"{where}: bad quantization rescore_dtype {rescore!r:.40}")
    if dtype in BINARY_DTYPES and dimension % 8:
        raise CorruptFileError(f"{where}: a {dtype} index needs a dimension multiple of 8")
    rows = data.get("calibration_rows", 0)
    for key in ("calibration_rows", "calibration_size"):
        value = data.get(key) or 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CorruptFileError(f"{where}: bad quantization {key} {value!r:.40}")
    for key in ("calibration", "source_index", "source_manifest_sha256"):
        if not isinstance(data.get(key, ""), str):
            raise CorruptFileError(f"{where}: quantization {key} must be a string")
    ranges = data.get("ranges")
    if not needs_ranges(dtype, rescore):
        if ranges is not None:
            raise CorruptFileError(f"{where}: quantization ranges given but not used")
        return
    if rows < MIN_CALIBRATION_ROWS:
        raise CorruptFileError(
            f"{where}: quantization calibration_rows {rows} < {MIN_CALIBRATION_ROWS}"
        )
    try:
        arr = np.asarray(ranges, dtype=np.float64)
    except (TypeError, ValueError):
        raise CorruptFileError(f"{where}: quantization ranges must be 2 lists of numbers") from None
    if (
        not isinstance(ranges, list)
        or arr.shape != (2, dimension)
        or not np.isfinite(arr).all()
        or bool(np.any(arr[1] < arr[0]))
        or bool(np.any(np.abs(arr) > 1e30))
    ):
        raise CorruptFileError(
            f"{where}: quantization ranges must be [[min...], [max...]] of {dimension} finite "
            f"numbers each with min <= max, got shape {arr.shape}"
        )


def ranges_of(quantization: dict[str, Any]) -> np.ndarray | None:
    """The manifest's int8 ranges as a ``(2, dim)`` float32 array (None when not used)."""
    ranges = quantization.get("ranges")
    return None if ranges is None else np.asarray(ranges, dtype=np.float32)


def shard_arrays(
    embeddings: np.ndarray, dtype: str, quantization: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray | None]:
    """What one shard stores for float ``embeddings``: the ``dtype`` rows and the rescoring
    rows (None for a float index or ``rescore_dtype`` none). ``quantization``: the
    manifest's object, calibrated before the first shard (shared by parallel writers)."""
    x = np.asarray(embeddings, dtype=np.float32)
    if dtype not in QUANTIZED_DTYPES:
        return x.astype(dtype), None
    ranges = ranges_of(quantization)
    stored = quantize(x, dtype, ranges)
    rescore = quantization.get("rescore_dtype", "none")
    if rescore == "none":
        return stored, None
    return stored, quantize(x, rescore, ranges)


def calibrate(
    encode: Callable[[list[str]], Any],
    texts: Iterable[str | None],
    dtype: str,
    rescore_dtype: str | None,
    size: int,
    dimension: int,
) -> dict[str, Any]:
    """The manifest's ``quantization`` object of a new ``dtype`` index: int8 ranges (when
    needed) calibrated on ``encode`` of the first ``size`` non-blank ``texts`` (the input
    read from its start: a deterministic sample), computed before any shard is written."""
    rescore = check_dtype_options(dtype, rescore_dtype, dimension)
    out: dict[str, Any] = {
        "ranges": None,
        "calibration_rows": 0,
        "calibration": "",
        "rescore_dtype": rescore,
    }
    if not needs_ranges(dtype, rescore):
        return out
    sample: list[str] = []
    for text in texts:
        if text is not None and text.strip():
            sample.append(text)
            if len(sample) == size:
                break
    ranges = calibration_ranges(np.asarray(encode(sample), dtype=np.float32))
    out.update(
        ranges=ranges.tolist(),
        calibration_rows=len(sample),
        calibration_size=size,
        calibration=f"first {len(sample)} non-blank texts of the input (--calibration-size {size})",
    )
    return out
