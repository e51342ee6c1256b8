"""Word repetition (ESimCSE): copies of real tokens, re-padded batch, specials never copied."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.views.batches import PAD, clone_batch, fixed_slots, token_batches
from textcl import SentenceEncoder
from textcl.tokens import TokenBatch
from textcl.views import TokenCutoff, ViewContext, WordRepetition, build_view

SETTINGS = settings(max_examples=50, deadline=None)


@SETTINGS
@given(batch=token_batches(), seed=st.integers(0, 2**16), rate=st.floats(0.05, 0.95))
def test_repetition_only_copies_real_tokens(batch: TokenBatch, seed: int, rate: float) -> None:
    n_rows, length = batch["input_ids"].shape
    tagged = clone_batch(batch)
    tagged["tag"] = torch.arange(length).expand(n_rows, length).clone()  # travels with tokens
    out = WordRepetition(rate, seed=seed)(tagged)
    new_length = out["input_ids"].shape[1]
    assert new_length >= length
    real = ~fixed_slots(batch)
    old_padding = batch["special_tokens_mask"].bool() & ~batch["attention_mask"].bool()
    padding = out["special_tokens_mask"].bool() & ~out["attention_mask"].bool()
    for b in range(n_rows):
        src = out["tag"][b][~padding[b]].tolist()
        # every non-padding slot, in order, each once, real tokens possibly twice in a row
        assert (
            sorted(set(src))
            == src[:1] + sorted(set(src))[1:]
            == (~old_padding[b]).nonzero().flatten().tolist()
        )
        assert src == sorted(src)
        copies = len(src) - len(set(src))
        for i in set(src):
            if src.count(i) > 1:
                assert src.count(i) == 2 and bool(real[b, i])
        n = int(real[b].sum())
        assert copies <= min(n, max(2, int(rate * n)))
        # each slot carries its source token's values
        for key in ("input_ids", "special_tokens_mask", "token_type_ids", "attention_mask"):
            assert out[key][b][~padding[b]].tolist() == batch[key][b][src].tolist(), key
    # padding: attention 0, special 1, pad id; on the side the batch was padded on
    assert bool((out["input_ids"][padding] == PAD).all())
    left = bool((old_padding[:, 0] & ~old_padding[:, -1]).any())
    for b in range(n_rows):
        n_pad = int(padding[b].sum())
        expected = [1] * n_pad + [0] * (new_length - n_pad)
        if not left:
            expected = expected[::-1]
        assert padding[b].long().tolist() == expected
    if "position_ids" in batch:
        # consecutive positions over the real slots, from the row's first position
        for b in range(n_rows):
            pos = out["position_ids"][b][~padding[b]].tolist()
            assert pos == list(range(pos[0], pos[0] + len(pos)))


def test_repetition_counts_follow_esimcse() -> None:
    n = 20
    batch = {
        "input_ids": torch.tensor([[2, *range(10, 10 + n), 3]]),
        "attention_mask": torch.ones(1, n + 2, dtype=torch.long),
        "special_tokens_mask": torch.tensor([[1] + [0] * n + [1]]),
    }
    view = WordRepetition(0.32, seed=0)
    grown = [view(batch)["input_ids"].shape[1] - (n + 2) for _ in range(600)]
    # k ~ Uniform{0..int(0.32*20)=6}: all values seen, none beyond, mean 3
    assert set(grown) == set(range(7))
    assert abs(sum(grown) / len(grown) - 3.0) < 0.3


def test_repetition_keeps_cut_tokens_dropped_and_caps_length() -> None:
    batch = {
        "input_ids": torch.tensor([[2, *range(10, 20), 3], [2, 10, 11, 3, 0, 0, 0, 0, 0, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1] * 12, [1] * 4 + [0] * 8]),
        "special_tokens_mask": torch.tensor([[1] + [0] * 10 + [1], [1, 0, 0] + [1] * 9]),
    }
    cut = TokenCutoff(0.3, seed=0)(batch)
    for seed in range(20):
        out = WordRepetition(0.9, seed=seed, max_length=13)(cut)
        assert out["input_ids"].shape[1] <= 13
        assert out["embedding_mask"].shape == (*out["input_ids"].shape, 1)
        # dropped tokens (attention 0, not special) keep a zero embedding row; never copied
        dropped = (out["attention_mask"] == 0) & (out["special_tokens_mask"] == 0)
        assert int(dropped.sum()) == int(
            ((cut["attention_mask"] == 0) & (cut["special_tokens_mask"] == 0)).sum()
        )
        assert bool((out["embedding_mask"][..., 0][dropped] == 0).all())
        assert bool(
            (out["embedding_mask"][..., 0][~dropped & (out["attention_mask"] == 1)] == 1).all()
        )


def test_repetition_in_encoder(tiny_encoder: SentenceEncoder, sentences: list[str]) -> None:
    enc = tiny_encoder.eval()
    batch = enc.tokenize(sentences[:8])
    view = build_view("repetition", seed=0, context=ViewContext.from_encoder(enc))
    assert view.pad_token_id == enc.tokenizer.pad_token_id  # type: ignore[attr-defined]
    assert view.max_length == 64  # type: ignore[attr-defined]  # tiny BERT positions
    out = view(batch)
    with torch.no_grad():
        emb = enc(out)
    assert emb.shape == (8, enc.hidden_size) and torch.isfinite(emb).all()
