"""Optional FAISS indexes over an index folder (``pip install textcl[faiss]``).

Kinds (all inner product, i.e. cosine over the normalised embeddings ``encode`` stores):

- ``flat``: exact brute force inside FAISS (a baseline; same results as exact search);
- ``ivf``: an inverted file with ``nlist`` k-means cells, ``nprobe`` of them searched
  (approximate; recall grows with ``nprobe``);
- ``hnsw``: a graph with ``m`` links per node, ``ef_search`` candidates per query
  (approximate; no training; recall grows with ``ef_search``);
- ``ivfpq``, ``opq-ivfpq``, ``factory``: compressed (product-quantized) indexes and any FAISS
  factory string, rescored exactly from the shards by default (:mod:`textcl.search.faiss_pq`).

Indexes are written streaming (never serialized whole in memory) and read with
``IO_FLAG_MMAP``: the inverted lists of every IVF-based kind stay memory-mapped on disk, so an
index larger than RAM searches in memory bounded by the lists ``nprobe`` touches.

The index is written atomically to ``faiss-<kind>.index`` and recorded in the manifest with
its parameters, size and sha256; it is stale (refused) when the manifest's count changes, and
damaged (:class:`~textcl.errors.CorruptFileError`) when its size differs (checked on every
load) or its sha256 (checked on its first load in a process, streamed from disk) or FAISS
cannot read it.

This module does not import :mod:`textcl.search.index`: it works on any object with the
:class:`VectorIndex` interface (an open :class:`~textcl.search.index.EmbeddingIndex`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from textcl.errors import CorruptFileError, InputError
from textcl.io import atomic_write_stream, sha256_file
from textcl.search.faiss_pq import (
    COMPRESSED_KINDS,
    DEFAULT_PQ_BITS,
    FACTORY_KIND,
    check_rescore_multiplier,
    configure_search,
    create_compressed,
    default_train_size,
    faiss_message,
    least_training,
    resolve_multiplier,
    seed_training,
)
from textcl.search.manifest import Manifest, inside
from textcl.search.rescore import rescore


class IndexFolder(Protocol):
    """What loading a FAISS file needs of an open index folder."""

    folder: Path
    manifest: Manifest

    def __len__(self) -> int: ...


class VectorIndex(Protocol):
    """What FAISS building and search need of an open index folder."""

    folder: Path
    manifest: Manifest

    def __len__(self) -> int: ...

    @property
    def dimension(self) -> int: ...

    @property
    def shards(self) -> list[np.ndarray]: ...

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...

    def rescore_shards(self) -> list[Any]: ...


FAISS_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivfpq", "opq-ivfpq", "factory")
IVF_KINDS: tuple[str, ...] = ("ivf", "ivfpq", "opq-ivfpq")
ADD_CHUNK = 65_536
MAX_TRAIN_SIZE = 1_000_000
"""Default cap of a training sample (1.5 GB of float32 at 384-d); ``train_size`` overrides."""
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 128


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "FAISS is not installed: pip install 'textcl[faiss]' (faiss-cpu), or search "
            "without --faiss (exact search)"
        ) from None
    return faiss


def has_faiss() -> bool:
    """Whether FAISS can be imported (optional speed-ups use it when present)."""
    return importlib.util.find_spec("faiss") is not None


def default_nlist(n: int) -> int:
    """IVF cells: about ``4 * sqrt(n)``, and at least 39 training points per cell."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def faiss_file(kind: str) -> str:
    return f"faiss-{kind}.index"


def create_faiss_index(
    kind: str,
    dim: int,
    n: int,
    *,
    nlist: int | None = None,
    m: int = 32,
    ef_construction: int = 200,
    pq_m: int | None = None,
    pq_bits: int = DEFAULT_PQ_BITS,
    factory: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """An empty inner-product FAISS index of ``kind`` for ``n`` vectors of ``dim``, and its
    parameters (``ivf`` / ``ivfpq`` / ``opq-ivfpq`` and some factory indexes still need
    ``train``)."""
    if kind not in FAISS_KINDS:
        raise ValueError(f"unknown FAISS index kind {kind!r}: expected {', '.join(FAISS_KINDS)}")
    faiss = import_faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        if m < 2:
            raise ValueError(f"m must be >= 2, got {m}")
        fi = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        fi.hnsw.efConstruction = ef_construction
        return fi, {"m": m, "ef_construction": ef_construction}
    nl = default_nlist(n) if nlist is None else nlist
    if nl < 1 or nl > n:
        raise ValueError(f"nlist must be in 1..{n} (the number of vectors), got {nl}")
    if kind in COMPRESSED_KINDS:
        return create_compressed(
            faiss, kind, dim, nlist=nl, pq_m=pq_m, pq_bits=pq_bits, factory=factory
        )
    quantizer = faiss.IndexFlatIP(dim)
    fi = faiss.IndexIVFFlat(quantizer, dim, nl, faiss.METRIC_INNER_PRODUCT)
    return fi, {"nlist": nl}


def build_faiss(
    idx: VectorIndex,
    kind: str = "hnsw",
    *,
    nlist: int | None = None,
    m: int = 32,
    ef_construction: int = 200,
    train_size: int | None = None,
    seed: int = 0,
    pq_m: int | None = None,
    pq_bits: int = DEFAULT_PQ_BITS,
    factory: str | None = None,
) -> dict[str, Any]:
    """Build a FAISS index of ``kind`` over the open index ``idx``, write it atomically and
    record it in the manifest (see :func:`textcl.search.build_faiss_index` for the args).

    Returns:
        The manifest's entry for this index (file, parameters, count, size, sha256, build
        seconds).
    """
    if kind not in FAISS_KINDS:
        raise ValueError(f"unknown FAISS index kind {kind!r}: expected {', '.join(FAISS_KINDS)}")
    for name, flag, value, low in (
        ("nlist", "--nlist", nlist, 1),
        ("m", "--m", m, 2),
        ("ef_construction", "--ef-construction", ef_construction, 1),
        ("train_size", "", train_size, 1),
        ("seed", "--seed", seed, 0),
        ("pq_m", "--pq-m", pq_m, 1),
        ("pq_bits", "--pq-bits", pq_bits, 1),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < low
        ):
            where = f"{name} ({flag})" if flag else name
            raise InputError(f"{where} must be an integer >= {low}, got {value!r}")
    if (factory is not None) != (kind == FACTORY_KIND):
        raise InputError("--factory STRING goes with --kind factory (and only with it)")
    faiss = import_faiss()
    n, dim = len(idx), idx.dimension
    t0 = time.perf_counter()
    fi, params = create_faiss_index(
        kind,
        dim,
        n,
        nlist=nlist,
        m=m,
        ef_construction=ef_construction,
        pq_m=pq_m,
        pq_bits=pq_bits,
        factory=factory,
    )
    if not fi.is_trained:
        params.update(_train(faiss, idx, fi, kind, params, train_size, seed))
    for start in range(0, n, ADD_CHUNK):
        chunk = np.ascontiguousarray(idx.vectors(start, start + ADD_CHUNK))
        try:
            fi.add(chunk)
        except RuntimeError as e:  # a factory index that cannot take plain vectors
            raise InputError(
                f"FAISS {kind!r} index: cannot add vectors: {faiss_message(e)}"
            ) from None
    seconds = time.perf_counter() - t0
    name = faiss_file(kind)
    size, digest = _write_index(faiss, fi, idx.folder / name)
    entry = {
        "file": name,
        "kind": kind,
        "count": n,
        "params": params,
        "build_seconds": round(seconds, 3),
        "bytes": size,
        "sha256": digest,
    }
    idx.manifest.faiss[kind] = entry
    idx.manifest.save(idx.folder)
    return entry


def _train(
    faiss: Any,
    idx: VectorIndex,
    fi: Any,
    kind: str,
    params: dict[str, Any],
    train_size: int | None,
    seed: int,
) -> dict[str, Any]:
    """Train ``fi`` on a sample of ``train_size`` rows drawn with ``seed`` (default
    :func:`~textcl.search.faiss_pq.default_train_size`, at most :data:`MAX_TRAIN_SIZE`);
    returns the parameters to record."""
    n = len(idx)
    if train_size is None:
        size = default_train_size(faiss, fi, params, n, MAX_TRAIN_SIZE)
    else:
        size = min(n, train_size)
    least = least_training(faiss, fi, params)
    if size < least:
        raise InputError(
            f"FAISS {kind!r} index: {size} training vectors, at least {least} needed (one per "
            "k-means centroid: --nlist cells, 2**--pq-bits codes); lower --nlist / --pq-bits, "
            "raise --train-size, or index more vectors"
        )
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=size, replace=False))
    seed_training(faiss, fi, seed)
    try:
        fi.train(np.ascontiguousarray(_gather(idx, sample), dtype=np.float32))
    except RuntimeError as e:
        raise InputError(f"FAISS {kind!r} index: training failed: {faiss_message(e)}") from None
    return {"train_size": size, "seed": seed}


class _HashingWriter:
    """Writes FAISS's output to a file while counting and hashing it."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.size, self.sha = fh, 0, hashlib.sha256()

    def __call__(self, block: bytes) -> None:
        self.fh.write(block)
        self.sha.update(block)
        self.size += len(block)


def _write_index(faiss: Any, fi: Any, path: Path) -> tuple[int, str]:
    """Write ``fi`` to ``path`` atomically, streamed (no serialized copy in memory);
    returns its size and sha256."""
    writers: list[_HashingWriter] = []

    def write(fh: Any) -> None:
        writers.append(_HashingWriter(fh))
        faiss.write_index(fi, faiss.PyCallbackIOWriter(writers[-1]))

    atomic_write_stream(path, write)
    return writers[-1].size, writers[-1].sha.hexdigest()


def _gather(idx: VectorIndex, rows: np.ndarray) -> np.ndarray:
    """float32 rows ``rows`` (sorted) read shard by shard."""
    out = np.empty((len(rows), idx.dimension), dtype=np.float32)
    starts = np.cumsum([0] + [s.shape[0] for s in idx.shards])
    for s, arr in enumerate(idx.shards):
        lo, hi = np.searchsorted(rows, [starts[s], starts[s + 1]])
        if lo < hi:
            out[lo:hi] = arr[rows[lo:hi] - starts[s]]
    return out


def faiss_file_checked(
    folder: Path, manifest: Manifest, count: int, kind: str
) -> tuple[Path, os.stat_result, str]:
    """The file of FAISS index ``kind`` in the manifest of ``folder`` (``count`` vectors),
    checked before any load: listed, inside the folder, present, not stale (count), its size
    as recorded. Returns the path, its stat and the recorded sha256 ("" if none)."""
    entry = manifest.faiss.get(kind)
    if entry is None:
        built = ", ".join(manifest.faiss) or "none"
        raise InputError(
            f"{folder}: no {kind!r} FAISS index (built: {built}); run "
            f"`textcl index build --index {folder} --kind {kind}`"
        )
    path = inside(folder, entry.get("file"), f"{folder} manifest faiss[{kind!r}]")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FAISS index file listed in the manifest is missing")
    if int(entry.get("count", -1)) != count:
        raise InputError(
            f"{path}: stale FAISS index ({entry.get('count')} vectors, the index has "
            f"{count}); rebuild it with `textcl index build`"
        )
    stat = path.stat()
    size = entry.get("bytes")
    if isinstance(size, int) and size >= 0 and stat.st_size != size:
        raise CorruptFileError(
            f"{path}: FAISS index file has {stat.st_size} bytes, the manifest lists {size} "
            "(truncated or replaced); rebuild it with `textcl index build`"
        )
    return path, stat, str(entry.get("sha256") or "")


_LOADED: dict[tuple[str, ...], Any] = {}
"""The one per-process cache of FAISS indexes (float kinds, binary kinds, the int8 scalar
quantizer): a single entry, the last one used, so a process holds one index at a time."""


def cached(key: tuple[str, ...], load: Callable[[], Any]) -> Any:
    """``load()`` once per ``key`` (the entry of :data:`_LOADED`; a new key evicts it)."""
    if key not in _LOADED:
        fi = load()
        _LOADED.clear()
        _LOADED[key] = fi
    return _LOADED[key]


def load_checked(idx: IndexFolder, kind: str, read: Callable[[str], Any], what: str) -> Any:
    """The FAISS file of ``kind`` of ``idx`` (checked by :func:`faiss_file_checked` on every
    call; its sha256, streamed from disk, and ``read(path)`` on the first load), cached per
    file, size, modification time and recorded sha256 (:func:`cached`); it must hold the
    folder's count of vectors of its dimension."""
    path, stat, digest = faiss_file_checked(idx.folder, idx.manifest, len(idx), kind)

    def load() -> Any:
        if digest and sha256_file(path) != digest:
            raise CorruptFileError(
                f"{path}: FAISS index file's sha256 differs from the manifest (changed after "
                "it was built); rebuild it with `textcl index build`"
            )
        try:
            fi = read(str(path))
        except Exception as e:  # FAISS raises RuntimeError on damaged files
            raise CorruptFileError(
                f"{path}: not a readable {what} ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}); rebuild it "
                "with `textcl index build`"
            ) from None
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            raise CorruptFileError(f"{path}: FAISS index file changed while it was loaded")
        return fi

    key = (str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns), digest)
    fi = cached(key, load)
    dim = idx.manifest.dimension
    if int(fi.ntotal) != len(idx) or int(fi.d) != dim:
        raise CorruptFileError(
            f"{path}: {what} holds {fi.ntotal} vectors of dimension {fi.d}, the index folder "
            f"{len(idx)} of dimension {dim}; rebuild it"
        )
    return fi


def load_faiss_index(idx: VectorIndex, kind: str) -> Any:
    """The FAISS index ``kind`` of ``idx`` (:func:`load_checked`). Inverted lists stay
    memory-mapped on disk (only the IVF kinds have them)."""
    faiss = import_faiss()
    read = lambda path: faiss.read_index(path, faiss.IO_FLAG_MMAP)  # noqa: E731
    return load_checked(idx, kind, read, "FAISS index")


SEARCH_PARAMS: dict[str, tuple[tuple[str, ...], str]] = {
    "nprobe": ((*IVF_KINDS, FACTORY_KIND), "--nprobe"),
    "ef_search": (("hnsw", FACTORY_KIND), "--ef-search"),
}
"""Search-time parameter -> the FAISS index kinds it applies to (a factory index when it has
an IVF / HNSW part) and its CLI flag."""


def check_search_params(
    kind: str | None, *, nprobe: int | None = None, ef_search: int | None = None
) -> None:
    """Raise :class:`~textcl.errors.InputError` naming the flag for a ``nprobe`` /
    ``ef_search`` that is not a positive integer, or given for a search it does not apply
    to (``kind``: the FAISS index kind searched, ``None`` for exact search)."""
    for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
        if value is None:
            continue
        applies, flag = SEARCH_PARAMS[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{flag} ({name}) must be a positive integer, got {value!r}")
        if kind not in applies:
            searched = "exact search" if kind is None else f"a FAISS {kind!r} index"
            raise InputError(
                f"{flag} ({name}) applies only to a FAISS {' / '.join(applies)} index, not to "
                f"{searched}; drop {flag}"
                + ("" if kind is None else f" or search with --faiss {applies[0]}")
            )


def faiss_search(
    idx: VectorIndex,
    queries: np.ndarray,
    top_k: int,
    kind: str,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    rescore_multiplier: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ``(scores, indices)`` through FAISS; missing hits (fewer than k found) have
    index -1 and score -inf.

    ``rescore_multiplier``: fetch ``top_k * rescore_multiplier`` candidates and re-rank them
    exactly against the float shards (:func:`textcl.search.rescore.rescore`); default 4 for
    the compressed kinds (``ivfpq``, ``opq-ivfpq``, ``factory``), 1 (off) for the others;
    0 or 1: off."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    check_search_params(kind, nprobe=nprobe, ef_search=ef_search)
    check_rescore_multiplier(kind, rescore_multiplier)
    fi = load_faiss_index(idx, kind)
    k = min(top_k, len(idx))
    if kind in COMPRESSED_KINDS:
        configure_search(
            import_faiss(),
            fi,
            kind,
            nprobe=nprobe,
            ef_search=ef_search,
            k=k,
            default_nprobe=DEFAULT_NPROBE,
        )
    elif kind == "ivf":
        fi.nprobe = min(int(nprobe or DEFAULT_NPROBE), int(fi.nlist))
    elif kind == "hnsw":
        fi.hnsw.efSearch = max(int(ef_search or DEFAULT_EF_SEARCH), k)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    mult = resolve_multiplier(kind, rescore_multiplier)
    scores, indices = fi.search(q, min(k * mult, len(idx)))
    if mult > 1:
        return rescore(idx, q, indices.astype(np.int64), k)
    scores = np.where(indices >= 0, scores, -np.inf).astype(np.float32)
    return scores, indices.astype(np.int64)
