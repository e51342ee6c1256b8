"""Token, span and feature cutoff: counts, masks, and their effect inside the encoder."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.views.batches import HIDDEN, clone_batch, fixed_slots, token_batches
from textcl import SentenceEncoder
from textcl.tokens import TokenBatch
from textcl.views import (
    Compose,
    FeatureCutoff,
    SpanCutoff,
    TokenCutoff,
    TokenShuffle,
    ViewContext,
    build_view,
)

SETTINGS = settings(max_examples=50, deadline=None)


def _real(batch: TokenBatch) -> torch.Tensor:
    return ~fixed_slots(batch)


@SETTINGS
@given(batch=token_batches(), seed=st.integers(0, 2**16), rate=st.floats(0.05, 0.95))
def test_token_cutoff_drops_int_rate_n_tokens(batch: TokenBatch, seed: int, rate: float) -> None:
    out = TokenCutoff(rate, seed=seed)(clone_batch(batch))
    real = _real(batch)
    dropped = batch["attention_mask"].bool() & ~out["attention_mask"].bool()
    assert not bool((dropped & ~real).any())  # only real non-special tokens are dropped
    assert torch.equal(dropped.sum(1), (real.sum(1) * rate).long())
    # dropped tokens have a zero embedding row, kept tokens a one row
    mask = out["embedding_mask"]
    assert mask.shape == (*batch["input_ids"].shape, 1)
    assert torch.equal(mask[..., 0] == 0, dropped)
    assert torch.equal(out["input_ids"], batch["input_ids"])


@SETTINGS
@given(batch=token_batches(), seed=st.integers(0, 2**16), rate=st.floats(0.05, 0.95))
def test_span_cutoff_drops_one_contiguous_span(batch: TokenBatch, seed: int, rate: float) -> None:
    out = SpanCutoff(rate, seed=seed)(clone_batch(batch))
    real = _real(batch)
    dropped = batch["attention_mask"].bool() & ~out["attention_mask"].bool()
    assert not bool((dropped & ~real).any())
    assert torch.equal(dropped.sum(1), (real.sum(1) * rate).long())
    for b in range(real.shape[0]):
        # contiguous among the real tokens of the row
        flags = dropped[b][real[b]].long().tolist()
        if sum(flags):
            first = flags.index(1)
            assert flags[first : first + sum(flags)] == [1] * sum(flags)
    assert torch.equal(out["embedding_mask"][..., 0] == 0, dropped)


def test_span_cutoff_start_covers_all_offsets() -> None:
    batch = {
        "input_ids": torch.tensor([[2, *range(10, 20), 3]]),
        "attention_mask": torch.ones(1, 12, dtype=torch.long),
        "special_tokens_mask": torch.tensor([[1] + [0] * 10 + [1]]),
    }
    view = SpanCutoff(0.3, seed=0)  # span of 3 among 10 tokens: starts 0..7
    starts = set()
    for _ in range(300):
        att = view(batch)["attention_mask"][0, 1:11]
        starts.add(int((att == 0).nonzero()[0]))
    assert starts == set(range(8))


@SETTINGS
@given(batch=token_batches(), seed=st.integers(0, 2**16), rate=st.floats(0.05, 0.95))
def test_feature_cutoff_zeroes_int_rate_h_dims_per_sentence(
    batch: TokenBatch, seed: int, rate: float
) -> None:
    out = FeatureCutoff(rate, seed=seed, hidden_size=HIDDEN)(clone_batch(batch))
    mask = out["embedding_mask"]
    assert mask.shape == (batch["input_ids"].shape[0], 1, HIDDEN)
    assert torch.equal(
        (mask == 0).sum(-1).flatten(), torch.full((mask.shape[0],), int(HIDDEN * rate))
    )
    for key in batch:
        assert torch.equal(out[key], batch[key])


def test_composed_masks_multiply() -> None:
    batch = {
        "input_ids": torch.tensor([[2, *range(10, 20), 3], [2, 11, 12, 3, 0, 0, 0, 0, 0, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1] * 12, [1] * 4 + [0] * 8]),
        "special_tokens_mask": torch.tensor([[1] + [0] * 10 + [1], [1, 0, 0] + [1] * 9]),
    }
    token = TokenCutoff(0.5, seed=1)(batch)
    both = FeatureCutoff(0.25, seed=2, hidden_size=HIDDEN)(token)
    feature = FeatureCutoff(0.25, seed=2, hidden_size=HIDDEN)(batch)
    assert torch.equal(both["embedding_mask"], token["embedding_mask"] * feature["embedding_mask"])
    assert torch.equal(both["attention_mask"], token["attention_mask"])
    # a later token cutoff also multiplies into the existing mask
    again = TokenCutoff(0.5, seed=3)(both)
    assert bool((again["embedding_mask"] <= both["embedding_mask"]).all())
    assert int((again["attention_mask"][0] == 0).sum()) >= int(
        (both["attention_mask"][0] == 0).sum()
    )


def test_feature_cutoff_needs_hidden_size() -> None:
    batch = {
        "input_ids": torch.tensor([[2, 7, 3]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "special_tokens_mask": torch.tensor([[1, 0, 1]]),
    }
    with pytest.raises(ValueError, match="pass hidden_size"):
        FeatureCutoff(0.2, seed=0)(batch)
    with pytest.raises(ValueError, match="hidden_size"):
        FeatureCutoff(0.2, hidden_size=0)


# ----------------------------------------------------------------------------- in the encoder
def _capture_embedding_sum(enc: SentenceEncoder, batch: TokenBatch) -> torch.Tensor:
    """``(B, L, H)``: word + position (+ type) embeddings, i.e. the input of the embedding
    LayerNorm of a BERT/RoBERTa model, for ``batch`` run through ``enc``."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module: Any, args: Any) -> None:
        captured["sum"] = args[0].detach().clone()

    handle = enc.model.embeddings.LayerNorm.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            enc(batch)
    finally:
        handle.remove()
    return captured["sum"]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_feature_cutoff_changes_input_embeddings_only_in_chosen_dims(
    arch: str, tiny_encoder: SentenceEncoder, tiny_tokenizer: Any, sentences: list[str]
) -> None:
    """The embedding layer's output differs from the plain run exactly in the chosen
    dimensions of each sentence, where the word embedding is removed (zeroed)."""
    enc = tiny_encoder.eval() if arch == "bert" else _tiny_roberta_encoder(tiny_tokenizer)
    batch = enc.tokenize(sentences[:5])
    if arch == "roberta":
        batch.pop("token_type_ids", None)
    view = FeatureCutoff(0.25, seed=7, hidden_size=enc.hidden_size)
    out = view(batch)
    plain = _capture_embedding_sum(enc, batch)
    cut = _capture_embedding_sum(enc, out)
    chosen = out["embedding_mask"][:, 0, :] == 0  # (B, H)
    assert torch.equal(chosen.sum(1), torch.full((5,), int(enc.hidden_size * 0.25)))
    with torch.no_grad():
        word = enc.model.get_input_embeddings()(batch["input_ids"])  # (B, L, H)
    expected = torch.where(chosen.unsqueeze(1), -word, torch.zeros_like(word))
    assert torch.allclose(cut - plain, expected, atol=1e-6)
    differs = (cut - plain).abs().amax(dim=1) > 0  # (B, H): dims that differ at any token
    assert torch.equal(differs, chosen)
    with torch.no_grad():
        assert not torch.allclose(enc(out), enc(batch), atol=1e-4)


def test_token_cutoff_in_encoder_ignores_dropped_tokens(
    tiny_encoder: SentenceEncoder, sentences: list[str]
) -> None:
    enc = tiny_encoder.eval()
    batch = enc.tokenize(sentences[:5])
    out = TokenCutoff(0.4, seed=11)(batch)
    dropped = batch["attention_mask"].bool() & ~out["attention_mask"].bool()
    assert dropped.any()
    # replacing the dropped tokens by other ids changes nothing: they are fully gone
    other = dict(out)
    other["input_ids"] = out["input_ids"].masked_fill(dropped, 4)
    with torch.no_grad():
        emb = enc(out)
        assert torch.allclose(emb, enc(other), atol=1e-6)
        # mean pooling divides by the kept tokens only
        states = enc.model(
            inputs_embeds=enc.model.get_input_embeddings()(out["input_ids"])
            * out["embedding_mask"],
            attention_mask=out["attention_mask"],
            position_ids=torch.arange(out["input_ids"].shape[1]).unsqueeze(0),
        ).last_hidden_state
    keep = out["attention_mask"].unsqueeze(-1).float()
    manual = (states * keep).sum(1) / keep.sum(1)
    assert torch.allclose(emb, manual, atol=1e-5)


def _tiny_roberta_encoder(tiny_tokenizer: Any) -> SentenceEncoder:
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=tiny_tokenizer.pad_token_id,
        type_vocab_size=1,
    )
    return SentenceEncoder(RobertaModel(config), tiny_tokenizer, pooling="mean").eval()


def test_roberta_view_path_matches_plain_path(tiny_tokenizer: Any, sentences: list[str]) -> None:
    """An all-ones embedding mask (the view path, via inputs_embeds) gives RoBERTa's own
    output: position ids with the padding offset are handled right."""
    enc = _tiny_roberta_encoder(tiny_tokenizer)
    batch = enc.tokenize(sentences[:6])
    batch.pop("token_type_ids", None)
    assert (batch["attention_mask"] == 0).any()  # mixed lengths, padded
    ones = dict(batch)
    ones["embedding_mask"] = torch.ones(batch["input_ids"].shape[0], 1, enc.hidden_size)
    with torch.no_grad():
        assert torch.allclose(enc(ones), enc(batch), atol=1e-6)
        # and a real feature cutoff runs on RoBERTa and changes the output
        view = build_view(
            "shuffle+feature_cutoff:0.2", seed=1, context=ViewContext.from_encoder(enc)
        )
        assert isinstance(view, Compose) and isinstance(view.views[0], TokenShuffle)
        assert view.views[1].hidden_size == 32  # type: ignore[attr-defined]
        out = enc(view(batch))
    assert out.shape == (6, 32) and torch.isfinite(out).all()
    assert not torch.allclose(out, enc(batch), atol=1e-4)


def test_roberta_embedding_mask_path_with_left_padding(
    tiny_tokenizer: Any, sentences: list[str]
) -> None:
    """Left padding: RoBERTa numbers positions past the padding; the inputs_embeds path must
    give it the same position ids (from inputs_embeds alone it would count the padding)."""
    enc = _tiny_roberta_encoder(tiny_tokenizer)
    right = enc.tokenize(sentences[:6])
    pad = enc.tokenizer.pad_token_id
    lengths = right["attention_mask"].sum(1)
    assert int(lengths.min()) < right["input_ids"].shape[1]  # some rows are padded
    shift = right["input_ids"].shape[1] - lengths
    idx = (torch.arange(right["input_ids"].shape[1]) - shift.unsqueeze(1)) % right[
        "input_ids"
    ].shape[1]
    left = {k: torch.gather(right[k], 1, idx) for k in ("input_ids", "attention_mask")}
    assert int(left["input_ids"][lengths.argmin(), 0]) == pad
    ones = dict(left)
    ones["embedding_mask"] = torch.ones(6, 1, enc.hidden_size)
    with torch.no_grad():
        plain = enc(left)
        torch.testing.assert_close(enc(ones), plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain, enc(right), atol=1e-5, rtol=1e-5)


def _tiny_model(arch: str, tokenizer: Any) -> Any:
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer), max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id
    )
    layers = dict(num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    configs: dict[str, Any] = {
        "distilbert": tf.DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, **common),
        "albert": tf.AlbertConfig(hidden_size=32, embedding_size=16, **layers, **common),
        "electra": tf.ElectraConfig(hidden_size=32, embedding_size=16, **layers, **common),
        "deberta-v2": tf.DebertaV2Config(hidden_size=32, **layers, **common),
        "xlm-roberta": tf.XLMRobertaConfig(hidden_size=32, **layers, **common),
        "mpnet": tf.MPNetConfig(hidden_size=32, **layers, **common),
    }
    torch.manual_seed(0)
    return tf.AutoModel.from_config(configs[arch])


@pytest.mark.parametrize(
    "arch",
    [
        "distilbert",
        "albert",
        "electra",
        "deberta-v2",
        "xlm-roberta",
        "mpnet",
    ],
)
def test_embedding_mask_path_matches_plain_path_for_other_models(
    arch: str, tiny_tokenizer: Any, sentences: list[str]
) -> None:
    """Any model exposing get_input_embeddings(): an all-ones embedding mask reproduces the
    plain forward (positions, padding handled as the model does), and a cutoff view changes
    it. Embedding width may differ from the hidden size (ALBERT, ELECTRA)."""
    enc = SentenceEncoder(_tiny_model(arch, tiny_tokenizer), tiny_tokenizer, pooling="mean").eval()
    batch = enc.tokenize(sentences[:6])
    if arch in ("distilbert", "mpnet"):  # their tokenizers give no token types
        batch.pop("token_type_ids", None)
    width = enc.model.get_input_embeddings().embedding_dim
    ones = dict(batch)
    ones["embedding_mask"] = torch.ones(batch["input_ids"].shape[0], 1, width)
    view = build_view(
        "feature_cutoff:0.25+token_cutoff:0.2", seed=2, context=ViewContext.from_encoder(enc)
    )
    with torch.no_grad():
        plain = enc(batch)
        assert torch.allclose(enc(ones), plain, atol=1e-5)
        cut = enc(view(batch))
    assert view.views[0].hidden_size == width  # type: ignore[attr-defined]
    assert torch.isfinite(cut).all() and not torch.allclose(cut, plain, atol=1e-4)
