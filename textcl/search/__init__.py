"""Semantic search: encode a corpus into a sharded, resumable index folder and search it.

- :func:`encode_corpus`: stream ``.txt`` / ``.jsonl`` / ``.csv`` / ``.parquet`` / datasets / hub corpora
  into memory-mappable ``.npy`` shards + ids/texts + a manifest (``textcl encode``);
- :func:`search`: encode queries with the index's model and return the top-k hits, exact or
  through FAISS (``textcl search``);
- :func:`exact_search`: the pure chunked matmul + top-k over arrays / shards;
- :func:`build_faiss_index`: ``flat`` / ``ivf`` / ``hnsw`` FAISS indexes (``textcl index build``).
"""

from __future__ import annotations

from textcl.search.encode import EncodeOptions, encode_corpus, encode_corpus_with
from textcl.search.exact import exact_search
from textcl.search.faiss_index import FAISS_KINDS
from textcl.search.index import (
    EmbeddingIndex,
    Hit,
    build_faiss_index,
    open_index,
    search,
    verify_index,
)
from textcl.search.manifest import Manifest, ShardInfo
from textcl.search.sources import CorpusSource, open_source

__all__ = [
    "FAISS_KINDS",
    "CorpusSource",
    "EmbeddingIndex",
    "EncodeOptions",
    "Hit",
    "Manifest",
    "ShardInfo",
    "build_faiss_index",
    "encode_corpus",
    "encode_corpus_with",
    "exact_search",
    "open_index",
    "open_source",
    "search",
    "verify_index",
]
