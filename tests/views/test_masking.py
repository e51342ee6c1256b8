"""Token masking view: only real, non-special tokens change; rate and seed behave."""

from __future__ import annotations

import pytest
import torch

from textcl.views import TokenMask, ViewContext, build_view


def test_masks_only_editable_tokens(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    batch = tiny_encoder.tokenize(["a man is playing a guitar", "the cat", "a bird is singing"])
    view = TokenMask(rate=0.5, seed=0, mask_token_id=tiny_encoder.tokenizer.mask_token_id)
    out = view(batch)
    mask_id = tiny_encoder.tokenizer.mask_token_id
    special = batch["special_tokens_mask"].bool()
    changed = out["input_ids"] != batch["input_ids"]
    assert not (changed & special).any()
    assert (out["input_ids"][changed] == mask_id).all()
    assert changed.any()
    assert torch.equal(out["attention_mask"], batch["attention_mask"])
    assert not torch.equal(batch["input_ids"], out["input_ids"])  # input untouched, new batch
    assert torch.equal(
        batch["input_ids"],
        tiny_encoder.tokenize(["a man is playing a guitar", "the cat", "a bird is singing"])[
            "input_ids"
        ],
    )


def test_rate_statistics_and_determinism(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    batch = tiny_encoder.tokenize(["a man is playing a guitar on the street"] * 200)
    editable = (batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()).sum()
    view = build_view("mask:0.25", seed=3, context=ViewContext.from_encoder(tiny_encoder))
    out = view(batch)
    frac = (out["input_ids"] != batch["input_ids"]).sum() / editable
    assert 0.21 < float(frac) < 0.29
    again = build_view("mask:0.25", seed=3, context=ViewContext.from_encoder(tiny_encoder))(batch)
    assert torch.equal(out["input_ids"], again["input_ids"])


def test_attention_mode_and_errors(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    batch = tiny_encoder.tokenize(["a man is playing a guitar", "the cat"])
    out = TokenMask(rate=0.9, mode="attention", seed=1)(batch)
    dropped = (batch["attention_mask"] == 1) & (out["attention_mask"] == 0)
    assert dropped.any() and not (dropped & batch["special_tokens_mask"].bool()).any()
    assert torch.equal(out["input_ids"], batch["input_ids"])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        TokenMask(rate=1.0)
    with pytest.raises(ValueError, match="mode"):
        TokenMask(mode="zero")
    with pytest.raises(ValueError, match="pass mask_token_id"):
        TokenMask(seed=0)(batch)
