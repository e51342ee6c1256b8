"""Matryoshka at search time: a prefix of the stored vectors, re-normalised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import CORPUS
from textcl import SentenceEncoder
from textcl.search import EmbeddingIndex, encode_corpus, exact_search, search

QUERIES = ["a dog in a field", "music on stage", "the weather this weekend", "bread"]


@pytest.fixture
def truncated_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    full = SentenceEncoder.from_pretrained(tiny_model_dir)
    enc = SentenceEncoder(full.model, full.tokenizer, pooling="mean", truncate_dim=8)
    return enc.save(tmp_path / "trunc8")


def test_truncate_at_search_equals_index_encoded_truncated(
    tiny_model_dir: Path, truncated_model: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    full_idx = tmp_path / "full"
    trunc_idx = tmp_path / "trunc"
    encode_corpus(tiny_model_dir, corpus_txt, full_idx, shard_size=7, show_progress=False)
    encode_corpus(truncated_model, corpus_txt, trunc_idx, shard_size=7, show_progress=False)
    assert EmbeddingIndex(trunc_idx).dimension == 8
    got = search(full_idx, QUERIES, top_k=5, truncate_dim=8)
    want = search(trunc_idx, QUERIES, top_k=5)
    for g, w in zip(got, want, strict=True):
        assert [h.index for h in g] == [h.index for h in w]
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-5)
    # oracle: numpy over the re-normalised prefixes
    stored = np.concatenate([np.asarray(s) for s in EmbeddingIndex(full_idx).shards])[:, :8]
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    q = SentenceEncoder.from_pretrained(tiny_model_dir).encode(
        QUERIES, truncate_dim=8, normalize=True
    )
    s, i = exact_search(q, stored, top_k=5)
    assert [[h.index for h in hits] for hits in got] == i.tolist()
    np.testing.assert_allclose([[h.score for h in hits] for hits in got], s, atol=1e-5)
    # negative control: the full vectors rank differently for some query
    full = search(full_idx, QUERIES, top_k=5)
    assert any([h.index for h in f] != [h.index for h in g] for f, g in zip(full, got, strict=True))


def test_truncate_dim_errors(tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    encode_corpus(tiny_model_dir, corpus_txt, out, show_progress=False)
    with pytest.raises(ValueError, match="larger than the index's dimension 32"):
        search(out, "a dog", truncate_dim=64)
    with pytest.raises(ValueError, match="positive integer"):
        search(out, "a dog", truncate_dim=0)
    with pytest.raises(ValueError, match="exact search"):
        EmbeddingIndex(out).search_vectors(np.zeros((1, 8)), 3, faiss_kind="flat", truncate_dim=8)


def test_cli_truncate_dim(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from textcl.cli import main

    out = tmp_path / "idx"
    encode_corpus(tiny_model_dir, corpus_txt, out, show_progress=False)
    rc = main(
        [
            "search",
            "--index",
            str(out),
            "--query",
            QUERIES[0],
            "--truncate-dim",
            "8",
            "--top-k",
            "3",
            "--format",
            "jsonl",
        ]
    )
    assert rc == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    want = search(out, QUERIES[0], top_k=3, truncate_dim=8)[0]
    assert [h["index"] for h in hits] == [h.index for h in want]
    assert len(CORPUS) > 3
