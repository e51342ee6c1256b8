"""Fixtures for the ``textcl serve`` tests: a tiny model folder with prompts, an index of the
search tests' corpus encoded with it, and app / client factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient

from tests.helpers import CORPUS, build_tiny_bert, build_tiny_tokenizer
from textcl import SentenceEncoder
from textcl.search import encode_corpus
from textcl.serve import ServeConfig, create_app

PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT saved as a textcl model folder with two named prompts (no default)."""
    tok = build_tiny_tokenizer()
    enc = SentenceEncoder(build_tiny_bert(len(tok), seed=1), tok, pooling="mean", prompts=PROMPTS)
    return enc.save(tmp_path_factory.mktemp("serve-model") / "tiny")


@pytest.fixture(scope="session")
def serve_index(serve_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-index")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    out = root / "idx"
    encode_corpus(serve_model_dir, corpus, out, shard_size=8, show_progress=False)
    return out


@pytest.fixture
def encoder(serve_model_dir: Path) -> SentenceEncoder:
    return SentenceEncoder.from_pretrained(serve_model_dir)


@pytest.fixture
def make_client(serve_model_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(index=None, **config)``: a TestClient (lifespan running) of a fresh app
    over the tiny model; closed after the test."""
    clients: list[TestClient] = []

    def make(index: Any = None, **config: Any) -> TestClient:
        config.setdefault("model_name", "tiny")
        enc = SentenceEncoder.from_pretrained(serve_model_dir)
        app = create_app(enc, index=index, config=ServeConfig(**config))
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
