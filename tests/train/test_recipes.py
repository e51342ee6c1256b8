"""Training with PromptBERT views and the Matryoshka loss (tiny BERT)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.test_trainer import corpus_file, make_config, read_log  # noqa: F401
from textcl import SentenceEncoder
from textcl.prompt import DEFAULT_PROMPT_TEMPLATE, SECOND_PROMPT_TEMPLATE, TEMPLATE_KEY
from textcl.train import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _no_dropout(tiny_model_dir: Path, tmp_path: Path) -> Path:
    model_dir = tmp_path / "no-dropout"
    shutil.copytree(tiny_model_dir, model_dir)
    cfg_path = model_dir / "config.json"
    hf = json.loads(cfg_path.read_text())
    hf["hidden_dropout_prob"] = hf["attention_probs_dropout_prob"] = 0.0
    cfg_path.write_text(json.dumps(hf))
    return model_dir


def test_promptbert_run_saves_a_prompt_model(
    tiny_model_dir: Path,
    corpus_file: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = make_config(
        tiny_model_dir,
        corpus_file,
        tmp_path / "out",
        pooling="prompt",
        head="none",
        max_length=48,
        max_steps=3,
        eval_steps=-1,
    )
    trainer = Trainer(cfg)
    trainer.setup()
    view_a, view_b = trainer.make_inputs(list(range(4)))
    tok = trainer.encoder.tokenizer
    for view, template in ((view_a, SECOND_PROMPT_TEMPLATE), (view_b, DEFAULT_PROMPT_TEMPLATE)):
        text = trainer.data.texts([0])[0]
        row = view["input_ids"][0][view["attention_mask"][0].bool()].tolist()
        assert row == tok(template.replace("[X]", text))["input_ids"]
    result = train(cfg)
    losses = [r["loss"] for r in read_log(tmp_path / "out") if r["event"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    enc = SentenceEncoder.load(result.final_dir)
    assert enc.pooling.strategy == "prompt"
    # PromptBERT's unsupervised recipe: denoising in training only, view a's template kept
    assert enc.prompt_template == SECOND_PROMPT_TEMPLATE and not enc.prompt_denoise
    assert TEMPLATE_KEY in view_a and TEMPLATE_KEY in view_b
    card = (result.final_dir / "README.md").read_text()
    assert DEFAULT_PROMPT_TEMPLATE in card  # the recipe lists both templates
    assert enc.encode(["A cat."]).shape == (1, 32)


def test_matryoshka_weighted_single_prefix_doubles_the_loss(
    tiny_model_dir: Path,
    corpus_file: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    model_dir = _no_dropout(tiny_model_dir, tmp_path)
    kw = dict(max_steps=1, eval_steps=-1, head="none", pooling="mean")
    train(make_config(model_dir, corpus_file, tmp_path / "plain", **kw))
    train(
        make_config(
            model_dir,
            corpus_file,
            tmp_path / "m",
            matryoshka_dims=[32],
            matryoshka_weights=[2.0],
            **kw,
        )
    )
    loss = lambda out: [r["loss"] for r in read_log(out) if r["event"] == "train"]  # noqa: E731
    np.testing.assert_allclose(
        loss(tmp_path / "m"), 2 * np.array(loss(tmp_path / "plain")), rtol=1e-5
    )


def test_matryoshka_training_with_gradient_cache_matches_plain(
    tiny_model_dir: Path,
    corpus_file: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    model_dir = _no_dropout(tiny_model_dir, tmp_path)
    kw = dict(max_steps=2, eval_steps=-1, head="none", pooling="mean", matryoshka_dims=[32, 16, 8])
    plain = train(make_config(model_dir, corpus_file, tmp_path / "plain", **kw))
    cached = train(make_config(model_dir, corpus_file, tmp_path / "gc", grad_cache_chunk=3, **kw))
    a, b = SentenceEncoder.load(plain.final_dir), SentenceEncoder.load(cached.final_dir)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-5, msg=k)


def test_matryoshka_dims_larger_than_the_model(
    tiny_model_dir: Path,
    corpus_file: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = make_config(tiny_model_dir, corpus_file, tmp_path / "o", matryoshka_dims=[64, 32])
    with pytest.raises(ValueError, match=r"exceed the embedding size 32"):
        Trainer(cfg).setup()
