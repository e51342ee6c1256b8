"""The official ``openai`` client against ``textcl serve`` on the real all-MiniLM-L6-v2:
the same vectors as ``SentenceEncoder.encode`` (min cosine >= 0.9999)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from textcl import SentenceEncoder
from textcl.serve import ServeConfig, create_app
from textcl.serve.server import ServerThread

SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Stock markets fell sharply on Monday after the announcement.",
    "The cat sleeps on the warm windowsill.",
    "Two children are running through a field of tall grass in the afternoon sun.",
    "",
]


@pytest.mark.slow
def test_openai_client_minilm(minilm_dir: Path) -> None:
    openai = pytest.importorskip("openai")
    encoder = SentenceEncoder.from_pretrained(minilm_dir)
    want = encoder.encode(SENTENCES)
    app = create_app(
        SentenceEncoder.from_pretrained(minilm_dir),
        config=ServeConfig(model_name="all-MiniLM-L6-v2"),
    )
    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        resp = client.embeddings.create(model="all-MiniLM-L6-v2", input=SENTENCES)
        got = np.asarray([d.embedding for d in resp.data])
        assert got.shape == (len(SENTENCES), 384)
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() >= 0.9999
        # Matryoshka-style truncation: the first 128 dimensions, re-normalised
        short = client.embeddings.create(
            model="all-MiniLM-L6-v2", input=SENTENCES[:2], dimensions=128
        )
        prefix = want[:2, :128] / np.linalg.norm(want[:2, :128], axis=1, keepdims=True)
        np.testing.assert_allclose([d.embedding for d in short.data], prefix, atol=1e-4)
