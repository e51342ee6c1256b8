"""Open an index folder and search it: exact (memory-mapped shards) or through FAISS."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textcl.search.exact import DEFAULT_CHUNK_SIZE, exact_search
from textcl.search.manifest import MANIFEST_NAME, PROBE_SENTENCES, Manifest, sha256_file

PROBE_MIN_COSINE = 0.999
"""A query encoder whose probe embeddings have a lower cosine to the manifest's is refused."""


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
            raise ValueError(
                f"{self.folder}: the index is incomplete ({m.count} embeddings in "
                f"{len(m.shards)} shards so far); rerun `textcl encode` with the same arguments "
                "to finish it"
            )
        if m.count == 0:
            raise ValueError(f"{where}: the index is empty (0 embeddings)")
        self._shards: list[np.ndarray] = []
        self._offsets: list[np.ndarray | None] = [None] * len(m.shards)
        starts = [0]
        for i, shard in enumerate(m.shards):
            path = self.folder / shard.embeddings
            for name in (shard.embeddings, shard.texts, shard.offsets):
                if not (self.folder / name).is_file():
                    raise FileNotFoundError(
                        f"{self.folder / name}: missing shard file (shard {i} of {where}); "
                        "re-encode with `textcl encode --overwrite`"
                    )
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:
                raise ValueError(f"{path}: corrupt shard, not a readable .npy ({e})") from None
            if arr.shape != (shard.rows, m.dimension) or arr.dtype != np.dtype(m.dtype):
                raise ValueError(
                    f"{path}: shard holds {arr.dtype}{list(arr.shape)}, the manifest lists "
                    f"{m.dtype}[{shard.rows}, {m.dimension}]"
                )
            if verify:
                for name, digest in (
                    (shard.embeddings, shard.sha256),
                    (shard.texts, shard.texts_sha256),
                ):
                    if sha256_file(self.folder / name) != digest:
                        raise ValueError(
                            f"{self.folder / name}: checksum differs from {where}; the file "
                            "changed after encoding"
                        )
            self._shards.append(arr)
            starts.append(starts[-1] + shard.rows)
        self._starts = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    @property
    def shards(self) -> list[np.ndarray]:
        """The memory-mapped ``(rows, dim)`` embedding shards, in corpus order."""
        return list(self._shards)

    def records(self, indices: Sequence[int]) -> list[tuple[str, str]]:
        """``(id, text)`` of global rows ``indices`` (reads only those lines)."""
        out: list[tuple[str, str]] = []
        for g in indices:
            g = int(g)
            if not 0 <= g < len(self):
                raise IndexError(f"row {g} out of range for an index of {len(self)} rows")
            s = int(np.searchsorted(self._starts, g, side="right")) - 1
            shard = self.manifest.shards[s]
            offsets = self._offsets[s]
            if offsets is None:
                offsets = np.load(self.folder / shard.offsets, mmap_mode="r", allow_pickle=False)
                self._offsets[s] = offsets
            path = self.folder / shard.texts
            with path.open("rb") as f:
                f.seek(int(offsets[g - int(self._starts[s])]))
                line = f.readline()
            try:
                obj = json.loads(line)
                out.append((str(obj["id"]), str(obj["text"])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}: corrupt texts file at row {g} ({e})") from None
        return out

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 copy of global rows ``start:stop`` (for building FAISS indexes in chunks)."""
        stop = len(self) if stop is None else min(stop, len(self))
        parts = []
        for s, arr in enumerate(self._shards):
            lo, hi = int(self._starts[s]), int(self._starts[s + 1])
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                parts.append(np.asarray(arr[a - lo : b - lo], dtype=np.float32))
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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, indices)`` ``(Q, k)`` of query vectors ``(Q, D)``: exact over the
        memory-mapped shards, or through the FAISS index ``faiss_kind`` built for this folder.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dimension:
            raise ValueError(
                f"dimension mismatch: query vectors have shape {q.shape}, the index holds "
                f"{self.dimension}-d vectors"
            )
        if faiss_kind is None:
            return exact_search(q, self._shards, top_k=top_k, chunk_size=chunk_size)
        from textcl.search.faiss_index import faiss_search

        return faiss_search(self, q, top_k, faiss_kind, nprobe=nprobe, ef_search=ef_search)


def open_index(index: str | os.PathLike[str] | EmbeddingIndex) -> EmbeddingIndex:
    return index if isinstance(index, EmbeddingIndex) else EmbeddingIndex(index)


def search(
    index: str | os.PathLike[str] | EmbeddingIndex,
    queries: str | Sequence[str],
    *,
    model: Any = None,
    top_k: int = 10,
    faiss: str | bool | None = None,
    batch_size: int = 64,
    device: Any = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> list[list[Hit]]:
    """Encode ``queries`` and return the ``top_k`` hits of each, best first.

    Args:
        index: an index folder (or an open :class:`EmbeddingIndex`).
        queries: a query or a list of queries.
        model: the query encoder (a :class:`~textcl.SentenceEncoder`, folder or hub id);
            default: the model named in the manifest. A different model is checked against
            the manifest (dimension and probe fingerprint) and refused when it differs.
        top_k: hits per query (``min(top_k, len(index))`` come back).
        faiss: ``None``/``False``: exact search; ``True``: the only FAISS index built (or
            ``hnsw``, ``ivf``, ``flat`` in that order); or a kind name.
        nprobe / ef_search: FAISS IVF / HNSW search-time parameters.

    Returns:
        One list of :class:`Hit` per query.
    """
    from textcl.search.encode import load_encoder

    idx = open_index(index)
    items = [queries] if isinstance(queries, str) else list(queries)
    if not items:
        raise ValueError("no queries given")
    for i, q in enumerate(items):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"query {i} is blank or not a string: {q!r:.80}")
    m = idx.manifest
    encoder = load_encoder(m.model if model is None else model, device)
    idx.check_encoder(encoder)  # cheap: 3 probe sentences; catches a changed model folder
    vectors = encoder.encode(
        items, batch_size=batch_size, normalize=m.normalized, show_progress=False
    )
    kind: str | None
    if faiss is None or faiss is False:
        kind = None
    elif faiss is True:
        built = [k for k in ("hnsw", "ivf", "flat") if k in m.faiss]
        if not built:
            raise ValueError(
                f"{idx.folder}: no FAISS index built; run `textcl index build --index "
                f"{idx.folder} --kind hnsw` (or ivf / flat) first"
            )
        kind = built[0]
    else:
        kind = str(faiss)
    scores, indices = idx.search_vectors(
        vectors, top_k, faiss_kind=kind, chunk_size=chunk_size, nprobe=nprobe, ef_search=ef_search
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
