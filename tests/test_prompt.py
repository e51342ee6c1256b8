"""PromptBERT: prompt pooling, template denoising, save/load, two-template views."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from textcl import SentenceEncoder
from textcl.prompt import (
    DEFAULT_PROMPT_TEMPLATE,
    SECOND_PROMPT_TEMPLATE,
    TEMPLATE_KEY,
    PromptTemplate,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SENT = "A man is playing a guitar."
OTHER = 'This sentence of "[X]" means [MASK] .'


@pytest.fixture
def prompt_encoder(tiny_model_dir: Path) -> SentenceEncoder:
    return SentenceEncoder.from_pretrained(tiny_model_dir, pooling="prompt", prompt_denoise=False)


def _by_hand(encoder: SentenceEncoder, text: str, **position: Any) -> torch.Tensor:
    """The [MASK] state of ``text`` (a full templated string) through the plain model."""
    tok, model = encoder.tokenizer, encoder.model
    enc = tok([text], return_tensors="pt")
    ids = enc["input_ids"]
    model.eval()
    with torch.no_grad():
        states = model(input_ids=ids, attention_mask=torch.ones_like(ids), **position)
    slot = int((ids[0] == tok.mask_token_id).nonzero()[0, 0])
    return states.last_hidden_state[0, slot]


def test_pooled_vector_is_the_mask_state(prompt_encoder: SentenceEncoder) -> None:
    got = prompt_encoder.encode([SENT, "The cat sat on the mat."], output="torch")
    for i, s in enumerate([SENT, "The cat sat on the mat."]):
        want = _by_hand(prompt_encoder, DEFAULT_PROMPT_TEMPLATE.replace("[X]", s))
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
    # negative control: the [CLS] state is something else
    cls = SentenceEncoder(prompt_encoder.model, prompt_encoder.tokenizer, pooling="cls")
    assert not torch.allclose(cls.encode([SENT], output="torch")[0], got[0], atol=1e-3)


def test_template_denoising_subtracts_template_state(tiny_model_dir: Path) -> None:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="prompt")  # denoise: default
    assert enc.prompt_denoise
    tok = enc.tokenizer
    got = enc.encode([SENT], output="torch")[0]
    full = _by_hand(enc, DEFAULT_PROMPT_TEMPLATE.replace("[X]", SENT))
    # template alone, its tokens at the positions they have around the sentence
    n = len(tok(SENT, add_special_tokens=False)["input_ids"])
    before = 1 + len(tok('This sentence : "', add_special_tokens=False)["input_ids"])
    empty = DEFAULT_PROMPT_TEMPLATE.replace("[X]", "")
    t_len = len(tok(empty)["input_ids"])
    positions = torch.tensor([list(range(before)) + list(range(before + n, t_len + n))])
    template = _by_hand(enc, empty, position_ids=positions)
    torch.testing.assert_close(got, full - template, atol=1e-5, rtol=1e-5)
    # negative control: the template at positions 0..T-1 gives another vector
    plain = _by_hand(enc, empty)
    assert not torch.allclose(got, full - plain, atol=1e-4)


def test_denoising_follows_length_changing_views(tiny_model_dir: Path) -> None:
    """Word repetition lengthens the sentence; the template positions follow."""
    from textcl.views import ViewContext, build_view

    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="prompt").eval()
    batch = enc.tokenize([SENT])
    view = build_view("repetition:0.5", seed=3, context=ViewContext.from_encoder(enc))
    grown = view(batch)
    assert grown["input_ids"].shape[1] > batch["input_ids"].shape[1]
    ids = grown["input_ids"][0][grown["attention_mask"][0].bool()]
    slot = int(grown["pooling_mask"][0].argmax())
    assert slot == int((ids == enc.tokenizer.mask_token_id).nonzero()[0, 0])
    n = int((~grown["special_tokens_mask"][0].bool()).sum())  # the grown sentence
    tok = enc.tokenizer
    before = 1 + len(tok('This sentence : "', add_special_tokens=False)["input_ids"])
    empty = tok(DEFAULT_PROMPT_TEMPLATE.replace("[X]", ""), return_tensors="pt")["input_ids"]
    t_len = empty.shape[1]
    positions = torch.tensor([list(range(before)) + list(range(before + n, t_len + n))])
    ones = torch.ones_like(empty)  # full attention: no mask would read the position gap as
    # two packed sequences (transformers >= 5.25, find_packed_sequence_indices)
    with torch.no_grad():
        got = enc(grown)[0]
        full = enc.model(input_ids=ids[None]).last_hidden_state[0, slot]
        states = enc.model(input_ids=empty, attention_mask=ones, position_ids=positions)
        states = states.last_hidden_state
    template = states[0, int((empty[0] == tok.mask_token_id).nonzero()[0, 0])]
    torch.testing.assert_close(got, full - template, atol=1e-5, rtol=1e-5)


def test_views_leave_the_template_alone(prompt_encoder: SentenceEncoder) -> None:
    from textcl.views import ViewContext, build_view

    batch = prompt_encoder.tokenize([SENT, "The cat sat on the mat."])
    view = build_view("mask:0.5", seed=0, context=ViewContext.from_encoder(prompt_encoder))
    out = view(batch)
    keep = batch["special_tokens_mask"].bool()
    assert torch.equal(out["input_ids"][keep], batch["input_ids"][keep])
    assert not torch.equal(out["input_ids"], batch["input_ids"])  # the sentence was masked
    assert torch.equal(out["pooling_mask"], batch["pooling_mask"])


def test_save_load_round_trip(tiny_model_dir: Path, tmp_path: Path, caplog: Any) -> None:
    enc = SentenceEncoder.from_pretrained(
        tiny_model_dir, pooling="prompt", prompt_template=OTHER, prompt_denoise=True
    )
    with caplog.at_level(logging.WARNING):
        enc.save(tmp_path / "m")
    assert any("sentence-transformers" in r.getMessage() for r in caplog.records)
    cfg = json.loads((tmp_path / "m" / "textcl_config.json").read_text())
    assert cfg["pooling"] == "prompt" and cfg["prompt_template"] == OTHER
    assert cfg["prompt_denoise"] is True
    card = (tmp_path / "m" / "README.md").read_text()
    assert OTHER in card and "denoising" in card
    back = SentenceEncoder.load(tmp_path / "m")
    assert back.prompt_template == OTHER and back.prompt_denoise
    sents = [SENT, "The cat sat on the mat.", ""]
    torch.testing.assert_close(
        back.encode(sents, output="torch"), enc.encode(sents, output="torch"), atol=0, rtol=0
    )
    # the sentence-transformers side says mean (what it can express)
    pool = json.loads((tmp_path / "m" / "1_Pooling" / "config.json").read_text())
    assert pool["pooling_mode_mean_tokens"] is True


def test_error_without_mask_token(tiny_model_dir: Path) -> None:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean")
    tok = copy.deepcopy(enc.tokenizer)
    tok.mask_token = None
    assert tok.mask_token_id is None
    with pytest.raises(
        ValueError, match=r"mask token.*PreTrainedTokenizerFast|mask token.*Tokenizer"
    ):
        SentenceEncoder(enc.model, tok, pooling="prompt")


def test_bad_templates(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"\[MASK\] exactly once"):
        SentenceEncoder.from_pretrained(tiny_model_dir, pooling="prompt", prompt_template="[X] is")
    with pytest.raises(ValueError, match=r"\[X\] exactly once"):
        SentenceEncoder.from_pretrained(tiny_model_dir, pooling="prompt", prompt_template="[MASK]")
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="prompt")
    with pytest.raises(ValueError, match="no room for the sentence"):
        enc.tokenize([SENT], max_length=5)


def test_truncation_keeps_the_template(prompt_encoder: SentenceEncoder) -> None:
    long = " ".join(["the cat sat on the mat"] * 20)
    batch = prompt_encoder.tokenize([long], max_length=40)
    ids = batch["input_ids"][0]
    assert ids.shape[0] == 40
    assert int(ids[batch["pooling_mask"][0].bool()][0]) == prompt_encoder.tokenizer.mask_token_id
    assert int(ids[-1]) == prompt_encoder.tokenizer.sep_token_id


def test_two_template_views(tiny_model_dir: Path) -> None:
    from textcl.train.batches import BatchCollator
    from textcl.views import Dropout

    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="prompt")
    tok = enc.tokenizer

    class Data:
        def texts(self, rows: list[int]) -> list[str]:
            return [[SENT, "The cat sat on the mat."][i] for i in rows]

    templates = [PromptTemplate(t, tok) for t in (DEFAULT_PROMPT_TEMPLATE, SECOND_PROMPT_TEMPLATE)]
    collator = BatchCollator(Data(), "unsup", tok, 32, Dropout(), Dropout(), templates, True)
    view_a, view_b = collator.collate([0, 1])
    for view, template in ((view_a, DEFAULT_PROMPT_TEMPLATE), (view_b, SECOND_PROMPT_TEMPLATE)):
        for i, text in enumerate(Data().texts([0, 1])):
            want = tok(template.replace("[X]", text))["input_ids"]
            row = view["input_ids"][i][view["attention_mask"][i].bool()].tolist()
            assert row == want
    assert view_a["input_ids"].shape != view_b["input_ids"].shape or not torch.equal(
        view_a["input_ids"], view_b["input_ids"]
    )
    assert TEMPLATE_KEY in view_a and TEMPLATE_KEY in view_b
    # view a is what the encoder itself does at inference (its template is the first)
    torch.testing.assert_close(view_a["input_ids"], enc.tokenize(Data().texts([0, 1]))["input_ids"])


def test_gradient_cache_equals_plain_step_with_prompt_batches(tiny_model_dir: Path) -> None:
    from textcl.gradcache import CachedLoss
    from textcl.losses import InfoNCE
    from textcl.objective import LossStep

    texts = [SENT, "The cat sat on the mat.", "A bird is singing in the tree.", "Hello there."]
    grads = []
    for objective in (LossStep(InfoNCE()), CachedLoss(InfoNCE(), 3)):
        enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="prompt").eval()
        a = PromptTemplate(DEFAULT_PROMPT_TEMPLATE, enc.tokenizer).tokenize(texts, 32, denoise=True)
        b = PromptTemplate(OTHER, enc.tokenizer).tokenize(texts, 32, denoise=True)
        objective(enc, [a, b])
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_train_config_prompt_fields() -> None:
    from textcl.train import TrainConfig

    cfg = TrainConfig(pooling="prompt")
    assert cfg.resolved_prompt_templates() == [SECOND_PROMPT_TEMPLATE, DEFAULT_PROMPT_TEMPLATE]
    assert (
        TrainConfig(pooling="prompt", objective="sup").resolved_prompt_templates()
        == [SECOND_PROMPT_TEMPLATE] * 2
    )
    with pytest.raises(ValueError, match="prompt_denoise"):
        TrainConfig(pooling="prompt", prompt_denoise="yes")
    with pytest.raises(ValueError, match="prompt_templates"):
        TrainConfig(pooling="cls", prompt_templates=[DEFAULT_PROMPT_TEMPLATE])
    with pytest.raises(ValueError, match="prompt_templates"):
        TrainConfig(pooling="prompt", prompt_templates=["no slots"])


def test_batches_with_the_template_are_denoised(tiny_model_dir: Path) -> None:
    """Training-only denoising: an encoder that does not denoise at inference still
    denoises the batches the collator builds with the template-only sequence."""
    plain = SentenceEncoder.from_pretrained(
        tiny_model_dir, pooling="prompt", prompt_denoise=False
    ).eval()
    denoising = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="prompt").eval()
    batch = PromptTemplate(DEFAULT_PROMPT_TEMPLATE, plain.tokenizer).tokenize(
        [SENT, "The cat sat on the mat."], 32, denoise=True
    )
    with torch.no_grad():
        torch.testing.assert_close(plain(batch), denoising(batch))
        without = {k: v for k, v in batch.items() if k != TEMPLATE_KEY}
        assert not torch.allclose(plain(without), denoising(batch), atol=1e-4)  # type: ignore[arg-type]
