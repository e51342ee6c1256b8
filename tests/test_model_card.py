"""The README.md model card that save writes: hub front matter, recipe, scores, notes, and
usage snippets that run and give textcl's embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from textcl import SentenceEncoder
from textcl.encoder_config import EncoderConfig
from textcl.model_card import (
    MODEL_PATH_PLACEHOLDER,
    SNIPPET_SENTENCES,
    CardModel,
    DenseInfo,
    render_model_card,
    snippet_blocks,
)

CARD: dict[str, Any] = {
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "objective": "simcse (InfoNCE)",
    "views": "dropout",
    "temperature": 0.05,
    "batch_size": 64,
    "learning_rate": 3e-5,
    "steps": 100,
    "data": "wiki1m sentences",
    "data_size": 1000000,
    "best_stsb_dev": 84.12345,
    "best_step": 75,
    "eval_table": "task   spearman\nstsb   83.10",
    "seed": 42,
}


def _front_matter(text: str) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    assert text.startswith("---\n")
    front = text.split("---\n")[1]
    data = yaml.safe_load(front)
    assert isinstance(data, dict)
    return data


def _run_snippets(folder: Path) -> list[np.ndarray]:
    text = (folder / "README.md").read_text()
    blocks = snippet_blocks(text)
    assert len(blocks) == 3  # textcl, sentence-transformers, transformers
    results = []
    for code in blocks:
        assert MODEL_PATH_PLACEHOLDER in code
        namespace: dict[str, Any] = {}
        exec(compile(code.replace(MODEL_PATH_PLACEHOLDER, str(folder)), "card", "exec"), namespace)
        emb = namespace["embeddings"]
        results.append(emb.numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb))
    return results


def test_card_front_matter_and_recipe(tiny_model_dir: Path, tmp_path: Path) -> None:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="cls", head_mode="train")
    out = enc.save(tmp_path / "m", card=CARD)
    text = (out / "README.md").read_text()
    front = _front_matter(text)
    assert front["library_name"] == "sentence-transformers"
    assert front["pipeline_tag"] == "sentence-similarity"
    assert {"textcl", "sentence-similarity", "feature-extraction"} <= set(front["tags"])
    assert front["base_model"] == CARD["base_model"]
    assert front["license"] == "other"  # placeholder
    for needle in (
        "| Objective | simcse (InfoNCE) |",
        "| Views | dropout |",
        "| Temperature | 0.05 |",
        "| Batch size (global) | 64 |",
        "| Learning rate | 3e-05 |",
        "| Steps | 100 |",
        "| Training data | wiki1m sentences |",
        "| Training data size | 1000000 |",
        "| seed | 42 |",
        "| Pooling | cls |",
        "| Projection head | train |",
        "**84.12** (step 75)",
        "stsb   83.10",
        "training only",
    ):
        assert needle in text, needle


def test_card_without_card_data_still_has_usage(
    tiny_encoder: SentenceEncoder, tmp_path: Path
) -> None:
    out = tiny_encoder.save(tmp_path / "m")
    text = (out / "README.md").read_text()
    assert "base_model" not in _front_matter(text)
    assert "## Usage" in text and "Training recipe" not in text


@pytest.mark.parametrize(
    ("pooling", "head_mode", "normalize"),
    [
        ("cls", "train", False),
        ("mean", "always", True),
        ("max", "none", True),
        ("lasttoken", "always", False),
    ],
)
def test_card_snippets_run_and_match_textcl(
    tiny_model_dir: Path, tmp_path: Path, pooling: str, head_mode: str, normalize: bool
) -> None:
    pytest.importorskip("sentence_transformers")
    enc = SentenceEncoder.from_pretrained(
        tiny_model_dir, pooling=pooling, head_mode=head_mode, normalize=normalize
    )
    out = enc.save(tmp_path / "m", card=CARD)
    want = enc.encode(list(SNIPPET_SENTENCES))
    for got in _run_snippets(out):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_card_snippets_with_dense_prompt_and_truncation(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("sentence_transformers")
    from textcl.pooling import DenseLayer

    torch.manual_seed(0)
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="weightedmean", normalize=True)
    enc = SentenceEncoder(
        enc.model,
        enc.tokenizer,
        pooling="weightedmean",
        normalize=True,
        dense=[DenseLayer(32, 16, activation=torch.nn.GELU()), DenseLayer(16, 12, bias=False)],
        truncate_dim=10,
        prompts={"query": "query: "},
        default_prompt_name="query",
    )
    out = enc.save(tmp_path / "m")
    want = enc.encode(list(SNIPPET_SENTENCES))
    assert want.shape == (3, 10)
    textcl_emb, st_emb, hf_emb = _run_snippets(out)
    np.testing.assert_allclose(textcl_emb, want, atol=1e-5)
    np.testing.assert_allclose(hf_emb, want, atol=1e-5)
    # sentence-transformers normalises before truncating: same direction.
    cos = (st_emb * want).sum(1) / np.linalg.norm(st_emb, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999


def test_card_for_layer_pooling_warns_and_transformers_snippet_matches(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("sentence_transformers")
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="first_last_avg")
    out = enc.save(tmp_path / "m")
    text = (out / "README.md").read_text()
    assert "**Warning**: sentence-transformers cannot express `first_last_avg`" in text
    want = enc.encode(list(SNIPPET_SENTENCES))
    textcl_emb, st_emb, hf_emb = _run_snippets(out)
    np.testing.assert_allclose(textcl_emb, want, atol=1e-5)
    np.testing.assert_allclose(hf_emb, want, atol=1e-5)
    assert not np.allclose(st_emb, want, atol=1e-3)  # what the warning says


def test_card_snippets_with_prompt_left_out_of_pooling(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("sentence_transformers")
    base = SentenceEncoder.from_pretrained(tiny_model_dir)
    enc = SentenceEncoder(
        base.model,
        base.tokenizer,
        pooling="mean",
        prompts={"query": "query : "},
        default_prompt_name="query",
        include_prompt=False,
    )
    out = enc.save(tmp_path / "m")
    want = enc.encode(list(SNIPPET_SENTENCES))
    for got in _run_snippets(out):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_card_renders_from_plain_data_without_an_encoder() -> None:
    """The card is built from an EncoderConfig and a few sizes, no model needed."""
    model = CardModel(
        EncoderConfig(pooling="cls", normalize=True, truncate_dim=16),
        max_length=128,
        embedding_dim=16,
        dense=(DenseInfo("Tanh", True),),
    )
    text = render_model_card(model, {"base_model": "org/base", "best_stsb_dev": 80.5})
    assert "| Pooling | cls |" in text and "| Max sequence length | 128 |" in text
    assert "| Embedding dimension | 16 |" in text and "| Truncated to | 16 |" in text
    assert 'base_model: "org/base"' in text and "**80.50**" in text
    snippet = snippet_blocks(text)[-1]
    assert "max_length=128" in snippet and "embeddings[:, :16]" in snippet
    assert "torch.nn.Tanh()(embeddings @ w['linear.weight'].T + w['linear.bias'])" in snippet
    assert "2_Dense/model.safetensors" in snippet
