"""Open an index folder and search it: exact (memory-mapped shards) or through FAISS.

What is checked, and when (an index folder is only trusted as far as its manifest):

* on every open: the manifest (fields, counts, file names inside the folder), that every
  shard file exists with the size the manifest lists, and each ``.npy`` header (shape,
  dtype);
* on first use of a shard in a process: its sha256 against the manifest, i.e. an
  embeddings shard before its first exact search or vector read, the texts and offsets
  files (plus the offsets' values) before the first text is read from that shard, a FAISS
  file on its first load. A verified file is remembered per process by path, size and
  modification time, so later searches cost nothing extra. The first search of a process
  thus reads each shard once more (sha256: about 0.4 s per 147 MiB shard measured on a
  2-core box, against 0.05 s for the search itself); a long-lived process pays it once;
* with ``verify=True`` (``textcl search --verify``, ``textcl index verify``): every file's
  sha256 at open.

Any mismatch is a :class:`~textcl.errors.CorruptFileError` naming the file: a damaged
index never returns wrong scores or the wrong sentence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textcl.errors import CorruptFileError, FolderConflictError, InputError
from textcl.io import FolderLock, sha256_file
from textcl.precision import check_device
from textcl.search.binary_index import (
    BINARY_KINDS,
    build_binary_faiss,
    check_kind_for,
    check_pool,
    load_binary_faiss,
    quantized_search,
)
from textcl.search.exact import DEFAULT_CHUNK_SIZE, exact_search
from textcl.search.faiss_index import (
    build_faiss,
    check_search_params,
    faiss_search,
    import_faiss,
    load_faiss_index,
)
from textcl.search.faiss_pq import check_rescore_multiplier
from textcl.search.manifest import (
    MANIFEST_NAME,
    PROBE_SENTENCES,
    Manifest,
    ShardInfo,
    check_apart,
    inside,
)
from textcl.search.model import load_encoder, model_weights_hash
from textcl.search.quantize import QUANTIZED_DTYPES, dequantize, ranges_of, storage
from textcl.search.rescore import RowFile, rescore_dtype

FAISS_PREFERENCE: tuple[str, ...] = (
    "hnsw",
    "ivf",
    "flat",
    "opq-ivfpq",
    "ivfpq",
    "factory",
    "binary-hnsw",
    "binary-flat",
)
"""The kind ``search(faiss=True)`` picks: the first of these built."""

PROBE_MIN_COSINE = 0.999
"""A query encoder whose probe embeddings have a lower cosine to the manifest's is refused."""

_VERIFIED: set[tuple[str, int, int, str]] = set()
"""Files whose sha256 matched their manifest in this process: (path, size, mtime_ns, sha)."""


def check_file(path: Path, size: int, digest: str, what: str, *, hash_it: bool) -> None:
    """Check ``path`` against its manifest entry: size always (when recorded), sha256 when
    ``hash_it`` (once per process per unchanged file). Raises CorruptFileError."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: missing {what} file listed in the manifest; re-encode with "
            "`textcl encode --overwrite`"
        ) from None
    if size >= 0 and stat.st_size != size:
        raise CorruptFileError(
            f"{path}: {what} file has {stat.st_size} bytes, the manifest lists {size} "
            "(truncated, replaced or damaged); re-encode with `textcl encode --overwrite`"
        )
    if not hash_it or not digest:
        return
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest)
    if key in _VERIFIED:
        return
    if sha256_file(path) != digest:
        raise CorruptFileError(
            f"{path}: {what} file's sha256 differs from the manifest (the file changed "
            "after encoding); re-encode with `textcl encode --overwrite`"
        )
    _VERIFIED.add(key)


@dataclass
class Hit:
    """One search result: ``rank`` (0-based) of corpus row ``index`` for query ``query``."""

    query: str
    rank: int
    index: int
    id: str
    score: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "rank": self.rank,
            "id": self.id,
            "score": self.score,
            "text": self.text,
            "index": self.index,
        }


class EmbeddingIndex:
    """A complete index folder written by :func:`textcl.search.encode_corpus`.

    Opening checks the manifest and that every shard file is present with the shape the
    manifest lists (``verify=True`` also checks sha256 checksums, reading every byte).
    Embeddings are memory-mapped, never loaded whole.
    """

    def __init__(self, folder: str | os.PathLike[str], *, verify: bool = False) -> None:
        self.folder = Path(folder).expanduser()
        self.manifest = Manifest.load(self.folder)
        m = self.manifest
        where = self.folder / MANIFEST_NAME
        if not m.complete:
            raise InputError(
                f"{self.folder}: the index is incomplete ({m.count} embeddings in "
                f"{len(m.shards)} shards so far); rerun `textcl encode` with the same arguments "
                "to finish it"
            )
        if m.count == 0:
            raise CorruptFileError(f"{where}: the index is empty (0 embeddings)")
        self._shards: list[np.ndarray] = []
        self._rescore: list[RowFile] = []
        self._rescore_checked = [False] * len(m.shards)
        stored_dtype, width = storage(m.dtype, m.dimension)
        self._offsets: list[np.ndarray | None] = [None] * len(m.shards)
        self._emb_checked = [False] * len(m.shards)
        starts = [0]
        for i, shard in enumerate(m.shards):
            paths = {
                role: inside(self.folder, name, f"{where} shards[{i}]")
                for role, name, _, _ in shard.files()
            }
            for role, _name, size, digest in shard.files():
                check_file(paths[role], size, digest, f"shard {i} {role}", hash_it=verify)
            path = paths["embeddings"]
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise CorruptFileError(
                    f"{path}: corrupt shard, not a readable .npy ({e})"
                ) from None
            if arr.shape != (shard.rows, width) or arr.dtype != stored_dtype:
                raise CorruptFileError(
                    f"{path}: shard holds {arr.dtype}{list(arr.shape)}, the manifest lists "
                    f"{m.dtype} ({stored_dtype}[{shard.rows}, {width}])"
                )
            if shard.rescore:
                self._rescore.append(self._open_rescore(i, paths["rescore"]))
                self._rescore_checked[i] = verify
            if verify:
                self._emb_checked[i] = True
                self._load_offsets(i)
            self._shards.append(arr)
            starts.append(starts[-1] + shard.rows)
        self._starts = np.asarray(starts, dtype=np.int64)

    def _open_rescore(self, i: int, path: Path) -> RowFile:
        """Shard ``i``'s rescoring rows (read with ``os.pread`` at the rows asked for, never
        memory-mapped), checking the ``.npy`` header."""
        m = self.manifest
        try:
            arr = RowFile(path)
        except CorruptFileError as e:
            raise CorruptFileError(f"corrupt rescoring shard: {e}") from None
        dtype = rescore_dtype(m)
        if arr.shape != (m.shards[i].rows, m.dimension) or arr.dtype != np.dtype(dtype):
            raise CorruptFileError(
                f"{path}: rescoring shard holds {arr.dtype}{list(arr.shape)}, the manifest "
                f"lists {dtype}[{m.shards[i].rows}, {m.dimension}]"
            )
        return arr

    def rescore_shards(self) -> list[Any]:
        """The arrays rescoring reads (:mod:`textcl.search.rescore`): the rescoring shards of
        a quantized index (:class:`~textcl.search.rescore.RowFile`: rows read at their
        offsets), else the memory-mapped embedding shards (each checked against its sha256
        on first use)."""
        if not self._rescore:
            return self.shards
        for i, shard in enumerate(self.manifest.shards):
            if not self._rescore_checked[i]:
                path = inside(self.folder, shard.rescore, str(self.folder / MANIFEST_NAME))
                check_file(
                    path,
                    shard.rescore_bytes,
                    shard.rescore_sha256,
                    f"shard {i} rescore",
                    hash_it=True,
                )
                self._rescore_checked[i] = True
        return list(self._rescore)

    def _check_embeddings(self, indices: Sequence[int] | range) -> None:
        """sha256 of embedding shards ``indices`` on their first use (see the module doc)."""
        for i in indices:
            if not self._emb_checked[i]:
                shard = self.manifest.shards[i]
                path = inside(self.folder, shard.embeddings, str(self.folder / MANIFEST_NAME))
                check_file(path, shard.bytes, shard.sha256, f"shard {i} embeddings", hash_it=True)
                self._emb_checked[i] = True

    def _load_offsets(self, s: int) -> np.ndarray:
        """Shard ``s``'s line offsets, after checking its texts and offsets files."""
        offsets = self._offsets[s]
        if offsets is not None:
            return offsets
        shard: ShardInfo = self.manifest.shards[s]
        where = str(self.folder / MANIFEST_NAME)
        texts_path = inside(self.folder, shard.texts, where)
        off_path = inside(self.folder, shard.offsets, where)
        check_file(
            texts_path, shard.texts_bytes, shard.texts_sha256, f"shard {s} texts", hash_it=True
        )
        check_file(
            off_path, shard.offsets_bytes, shard.offsets_sha256, f"shard {s} offsets", hash_it=True
        )
        try:
            offsets = np.load(off_path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CorruptFileError(
                f"{off_path}: corrupt offsets, not a readable .npy ({e})"
            ) from None
        size = texts_path.stat().st_size
        if (
            offsets.shape != (shard.rows,)
            or offsets.dtype != np.int64
            or (len(offsets) and (int(offsets[0]) != 0 or int(offsets[-1]) >= size))
            or bool(np.any(np.diff(offsets) <= 0))
        ):
            raise CorruptFileError(
                f"{off_path}: corrupt offsets ({offsets.dtype}{list(offsets.shape)}, expected "
                f"{shard.rows} increasing int64 byte offsets into {texts_path.name} of {size} "
                "bytes); re-encode with `textcl encode --overwrite`"
            )
        self._offsets[s] = offsets
        return offsets

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    @property
    def shards(self) -> list[np.ndarray]:
        """The memory-mapped ``(rows, dim)`` embedding shards, in corpus order (each checked
        against its sha256 on first use)."""
        self._check_embeddings(range(len(self._shards)))
        return list(self._shards)

    def verify(self) -> None:
        """Check every file of the index against the manifest (sha256 included)."""
        self._check_embeddings(range(len(self._shards)))
        self.rescore_shards()
        for s in range(len(self._shards)):
            self._load_offsets(s)
        for kind in self.manifest.faiss:
            if kind in BINARY_KINDS:
                load_binary_faiss(self, kind)
                continue
            try:
                import_faiss()
            except ImportError:
                entry = self.manifest.faiss[kind]
                path = inside(self.folder, entry.get("file"), f"{self.folder} faiss[{kind!r}]")
                check_file(
                    path,
                    int(entry.get("bytes", -1)),
                    str(entry.get("sha256") or ""),
                    f"FAISS {kind}",
                    hash_it=True,
                )
                continue
            load_faiss_index(self, kind)

    def records(self, indices: Sequence[int]) -> list[tuple[str, str]]:
        """``(id, text)`` of global rows ``indices`` (reads only those lines)."""
        out: list[tuple[str, str]] = []
        for g in indices:
            g = int(g)
            if not 0 <= g < len(self):
                raise IndexError(f"row {g} out of range for an index of {len(self)} rows")
            s = int(np.searchsorted(self._starts, g, side="right")) - 1
            shard = self.manifest.shards[s]
            offsets = self._load_offsets(s)
            path = inside(self.folder, shard.texts, str(self.folder / MANIFEST_NAME))
            with path.open("rb") as f:
                f.seek(int(offsets[g - int(self._starts[s])]))
                line = f.readline()
            try:
                obj = json.loads(line)
                out.append((str(obj["id"]), str(obj["text"])))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise CorruptFileError(f"{path}: corrupt texts file at row {g} ({e})") from None
        return out

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 copy of global rows ``start:stop`` (for building FAISS indexes in chunks;
        a quantized index gives its rescoring vectors, see :mod:`textcl.search.rescore`)."""
        stop = len(self) if stop is None else min(stop, len(self))
        parts = []
        quantized = self.manifest.dtype in QUANTIZED_DTYPES
        arrays = self.rescore_shards() if quantized else self._shards
        dtype, ranges = rescore_dtype(self.manifest), ranges_of(self.manifest.quantization)
        for s, arr in enumerate(arrays):
            lo, hi = int(self._starts[s]), int(self._starts[s + 1])
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                self._check_embeddings([s])
                parts.append(dequantize(arr[a - lo : b - lo], dtype, ranges))
        if not parts:
            return np.empty((0, self.dimension), dtype=np.float32)
        return np.concatenate(parts)

    def check_encoder(self, encoder: Any) -> None:
        """Raise ``ValueError`` when ``encoder`` does not embed like the index's model.

        Checks the dimension, then re-encodes the manifest's probe sentences and compares
        them with the stored fingerprint (cosine >= :data:`PROBE_MIN_COSINE` each).
        """
        m = self.manifest
        where = self.folder / MANIFEST_NAME
        dim = int(encoder.embedding_dim)
        if dim != m.dimension:
            raise ValueError(
                f"dimension mismatch: the query encoder gives {dim}-d vectors, the index "
                f"({where}) holds {m.dimension}-d vectors from model {m.model!r}"
            )
        if not m.probe:
            return
        stored = np.asarray(m.probe, dtype=np.float32)
        now = np.asarray(
            encoder.encode(list(PROBE_SENTENCES), batch_size=8, show_progress=False),
            dtype=np.float32,
        )
        cos = (stored * now).sum(1) / (
            np.linalg.norm(stored, axis=1) * np.linalg.norm(now, axis=1) + 1e-12
        )
        if stored.shape != now.shape or float(cos.min()) < PROBE_MIN_COSINE:
            raise ValueError(
                f"model mismatch: the query encoder does not embed like model {m.model!r} that "
                f"built {self.folder} (probe cosine {float(cos.min()):.4f} < {PROBE_MIN_COSINE}); "
                "search with the same model (omit --model to use the manifest's)"
            )

    def search_vectors(
        self,
        queries: Any,
        top_k: int = 10,
        *,
        faiss_kind: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        nprobe: int | None = None,
        ef_search: int | None = None,
        truncate_dim: int | None = None,
        rescore_multiplier: int | None = None,
        candidate_pool: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, indices)`` ``(Q, k)`` of query vectors ``(Q, D)``: exact over the
        memory-mapped shards, or through the FAISS index ``faiss_kind`` built for this folder
        (``rescore_multiplier``: see :func:`~textcl.search.faiss_index.faiss_search`).

        A quantized index (int8 / uint8 / binary / ubinary) finds ``top_k *
        rescore_multiplier`` (default 4; 0 or 1: no rescoring) candidates by its quantized
        rows (exact, or a ``binary-flat`` / ``binary-hnsw`` FAISS index) and re-ranks them
        with the float queries (:mod:`textcl.search.binary_index`); a binary index with
        rescoring rows first re-ranks the Hamming top ``candidate_pool`` (default
        ``max(2000, N / 500)``) by the float query's dot product with their sign vectors.

        ``truncate_dim`` (Matryoshka): exact search over the first ``truncate_dim`` dimensions
        of the stored vectors, re-normalised when the index is normalised; the queries are
        then ``(Q, truncate_dim)`` (e.g. ``encode(truncate_dim=...)``). Same hits as an index
        encoded with ``truncate_dim``.
        """
        quantized = self.manifest.dtype in QUANTIZED_DTYPES
        check_rescore_multiplier(faiss_kind, rescore_multiplier, exact_ok=quantized)
        check_pool(candidate_pool)
        if candidate_pool and not quantized:
            raise InputError(
                f"--candidate-pool applies to a binary index; {self.folder} is "
                f"{self.manifest.dtype}: drop it"
            )
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        dim = self.dimension
        if truncate_dim is not None:
            check_truncate_dim(truncate_dim, dim)
            if quantized:
                raise InputError(
                    f"truncate_dim needs float vectors; {self.folder} is {self.manifest.dtype}"
                )
            if faiss_kind is not None:
                raise ValueError(
                    f"truncate_dim needs exact search: the FAISS index {faiss_kind!r} of "
                    f"{self.folder} holds the full {dim}-d vectors"
                )
            dim = truncate_dim
        if q.ndim != 2 or q.shape[1] != dim:
            raise ValueError(
                f"dimension mismatch: query vectors have shape {q.shape}, the index holds "
                f"{dim}-d vectors" + (" (truncated)" if truncate_dim is not None else "")
            )
        if truncate_dim is not None:
            norm = self.manifest.normalized
            shards = [PrefixShard(s, truncate_dim, norm) for s in self.shards]
            return exact_search(q, shards, top_k=top_k, chunk_size=chunk_size)
        if quantized:
            return quantized_search(
                self,
                q,
                top_k,
                faiss_kind=faiss_kind,
                rescore_multiplier=rescore_multiplier,
                candidate_pool=candidate_pool,
                nprobe=nprobe,
                ef_search=ef_search,
                chunk_size=chunk_size,
            )
        check_kind_for(self.manifest.dtype, faiss_kind, self.folder)
        if faiss_kind is None:
            return exact_search(q, self.shards, top_k=top_k, chunk_size=chunk_size)
        return faiss_search(
            self,
            q,
            top_k,
            faiss_kind,
            nprobe=nprobe,
            ef_search=ef_search,
            rescore_multiplier=rescore_multiplier,
        )


def check_truncate_dim(truncate_dim: object, dimension: int) -> int:
    """``truncate_dim`` if it is an integer in ``1..dimension``, else ``ValueError``."""
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or truncate_dim < 1:
        raise ValueError(f"truncate_dim must be a positive integer, got {truncate_dim!r}")
    if truncate_dim > dimension:
        raise ValueError(
            f"truncate_dim {truncate_dim} is larger than the index's dimension {dimension}"
        )
    return truncate_dim


class PrefixShard:
    """A read-only view of the first ``dim`` columns of a ``(N, D)`` shard, each row
    re-normalised to unit length when ``normalize`` (rows are read on slicing, so a
    memory-mapped shard stays on disk)."""

    def __init__(self, shard: Any, dim: int, normalize: bool) -> None:
        self.shard, self.dim, self.normalize = shard, dim, normalize
        self.ndim = 2

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.shard.shape[0]), self.dim)

    def __getitem__(self, rows: slice) -> np.ndarray:
        out = np.asarray(self.shard[rows, : self.dim], dtype=np.float32)
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def open_index(
    index: str | os.PathLike[str] | EmbeddingIndex, *, verify: bool = False
) -> EmbeddingIndex:
    """``index`` opened (a folder) or as given (an open index; ``verify`` then checks it)."""
    if isinstance(index, EmbeddingIndex):
        if verify:
            index.verify()
        return index
    return EmbeddingIndex(index, verify=verify)


def verify_index(index: str | os.PathLike[str] | EmbeddingIndex) -> EmbeddingIndex:
    """Open ``index`` and check every file against the manifest, sha256 included
    (``textcl index verify``). Raises CorruptFileError naming the first damaged file."""
    idx = open_index(index, verify=True)
    idx.verify()
    return idx


def build_faiss_index(
    index: str | os.PathLike[str] | EmbeddingIndex,
    kind: str = "hnsw",
    *,
    nlist: int | None = None,
    m: int = 32,
    ef_construction: int = 200,
    train_size: int | None = None,
    seed: int = 0,
    pq_m: int | None = None,
    pq_bits: int = 8,
    factory: str | None = None,
) -> dict[str, Any]:
    """Build a FAISS index of ``kind`` over an index folder and record it in the manifest.

    Args:
        index: an index folder or an open :class:`EmbeddingIndex`.
        kind: ``flat``, ``ivf``, ``hnsw``, ``ivfpq``, ``opq-ivfpq`` or ``factory``.
        nlist: IVF cells (default :func:`~textcl.search.faiss_index.default_nlist`).
        m / ef_construction: HNSW links per node and build-time candidate list.
        train_size: training sample of the kinds that need training (default ``min(n, 256 *
            nlist)``, at least ``256 * 2**pq_bits`` for PQ, at most 1,000,000), drawn with
            ``seed``.
        pq_m / pq_bits: IVF-PQ sub-quantizers (must divide the dimension; default the
            largest divisor up to dim / 8) and bits per code.
        factory: a FAISS ``index_factory`` string (``kind="factory"`` only).

    Returns:
        The manifest's entry for this index (file, parameters, count, size, sha256, build
        seconds).
    """
    folder = index.folder if isinstance(index, EmbeddingIndex) else Path(index).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such index folder")
    with FolderLock(folder, "index"):
        idx = open_index(index)
        if Path(idx.manifest.model).is_dir():  # never write into (or around) a model folder
            check_apart(folder, "--index", [("model folder", Path(idx.manifest.model))])
        check_kind_for(idx.manifest.dtype, kind, idx.folder)
        if kind in BINARY_KINDS:
            return build_binary_faiss(idx, kind, m=m, ef_construction=ef_construction)
        return build_faiss(
            idx,
            kind,
            nlist=nlist,
            m=m,
            ef_construction=ef_construction,
            train_size=train_size,
            seed=seed,
            pq_m=pq_m,
            pq_bits=pq_bits,
            factory=factory,
        )


def search(
    index: str | os.PathLike[str] | EmbeddingIndex,
    queries: str | Sequence[str],
    *,
    model: Any = None,
    top_k: int = 10,
    faiss: str | bool | None = None,
    verify: bool = False,
    batch_size: int = 64,
    device: Any = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    truncate_dim: int | None = None,
    rescore_multiplier: int | None = None,
    candidate_pool: int | None = None,
) -> list[list[Hit]]:
    """Encode ``queries`` and return the ``top_k`` hits of each, best first.

    Args:
        index: an index folder (or an open :class:`EmbeddingIndex`).
        queries: a query or a list of queries.
        model: the query encoder (a :class:`~textcl.SentenceEncoder`, folder or hub id);
            default: the model named in the manifest (a local model folder must still have
            the weights hash recorded at encoding, else FolderConflictError). A different model is checked against
            the manifest (dimension and probe fingerprint) and refused when it differs.
        top_k: hits per query (``min(top_k, len(index))`` come back).
        faiss: ``None``/``False``: exact search; ``True``: the only FAISS index built (or
            the first built of :data:`FAISS_PREFERENCE`); or a kind name.
        verify: check every file's sha256 at open (otherwise each file is checked on its
            first use in this process; sizes always).
        nprobe / ef_search: FAISS IVF / HNSW search-time parameters.
        rescore_multiplier: FAISS search: re-rank ``top_k * rescore_multiplier`` candidates
            exactly from the shards (default 4 for ``ivfpq`` / ``opq-ivfpq`` / ``factory``,
            off for the others; 0 or 1: off).
        truncate_dim: Matryoshka: search on the first ``truncate_dim`` dimensions of the
            stored vectors and of the queries (re-normalised when the index is normalised);
            exact search only.
        rescore_multiplier: a quantized index: rescore the top ``top_k *
            rescore_multiplier`` candidates with the float queries (default 4; 0 or 1: none).
        candidate_pool: a binary index with rescoring rows: Hamming candidates per query
            re-ranked by the float query against their sign vectors before the top ``top_k *
            rescore_multiplier`` are rescored (default ``max(2000, N / 500)``; ``binary-hnsw``:
            off; 0: off).

    Returns:
        One list of :class:`Hit` per query.
    """
    check_device(device)
    idx = open_index(index, verify=verify)
    items = [queries] if isinstance(queries, str) else list(queries)
    if not items:
        raise ValueError("no queries given")
    for i, q in enumerate(items):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"query {i} is blank or not a string: {q!r:.80}")
    m = idx.manifest
    kind: str | None
    if faiss is None or faiss is False:
        kind = None
    elif faiss is True:
        built = [k for k in FAISS_PREFERENCE if k in m.faiss]
        if not built:
            raise ValueError(
                f"{idx.folder}: no FAISS index built; run `textcl index build --index "
                f"{idx.folder} --kind hnsw` (or ivf / flat) first"
            )
        kind = built[0]
    else:
        kind = str(faiss)
    check_search_params(
        "hnsw" if kind == "binary-hnsw" else kind, nprobe=nprobe, ef_search=ef_search
    )
    check_rescore_multiplier(kind, rescore_multiplier, exact_ok=m.dtype in QUANTIZED_DTYPES)
    check_pool(candidate_pool)
    if (
        model is None
        and m.model_hash.startswith("files:")
        and Path(m.model).is_dir()
        and model_weights_hash(m.model) != m.model_hash
    ):
        raise FolderConflictError(
            f"{m.model}: the model folder changed since {idx.folder} was encoded (weights "
            "hash differs from the manifest's model_hash); re-encode with `textcl encode "
            "--overwrite`, or pass the original model with --model"
        )
    encoder = load_encoder(m.model if model is None else model, device)
    idx.check_encoder(encoder)  # cheap: 3 probe sentences; catches a changed model folder
    if truncate_dim is not None:
        check_truncate_dim(truncate_dim, idx.dimension)
    vectors = encoder.encode(
        items,
        batch_size=batch_size,
        normalize=m.normalized,
        show_progress=False,
        truncate_dim=truncate_dim,
    )
    scores, indices = idx.search_vectors(
        vectors,
        top_k,
        faiss_kind=kind,
        chunk_size=chunk_size,
        nprobe=nprobe,
        ef_search=ef_search,
        truncate_dim=truncate_dim,
        rescore_multiplier=rescore_multiplier,
        candidate_pool=candidate_pool,
    )
    results: list[list[Hit]] = []
    for qi, query in enumerate(items):
        valid = [(float(s), int(j)) for s, j in zip(scores[qi], indices[qi], strict=True) if j >= 0]
        recs = idx.records([j for _, j in valid])
        results.append(
            [
                Hit(query=query, rank=r, index=j, id=rid, score=s, text=text)
                for r, ((s, j), (rid, text)) in enumerate(zip(valid, recs, strict=True))
            ]
        )
    return results
