"""Token shuffle: only real non-special tokens move; equivalent to ConSERT's position shuffle."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.views.batches import clone_batch, fixed_slots, token_batches
from textcl import SentenceEncoder
from textcl.tokens import TokenBatch
from textcl.views import TokenShuffle


@settings(max_examples=50, deadline=None)
@given(batch=token_batches(), seed=st.integers(0, 2**16))
def test_shuffle_permutes_real_tokens_within_each_row(batch: TokenBatch, seed: int) -> None:
    out = TokenShuffle(seed=seed)(clone_batch(batch))
    fixed = fixed_slots(batch)
    for b in range(batch["input_ids"].shape[0]):
        real = ~fixed[b]
        assert sorted(out["input_ids"][b][real].tolist()) == sorted(
            batch["input_ids"][b][real].tolist()
        )
        # token types travel with their tokens: (id, type) pairs are the same multiset
        pairs_in = sorted(
            zip(
                batch["input_ids"][b][real].tolist(),
                batch["token_type_ids"][b][real].tolist(),
                strict=True,
            )
        )
        pairs_out = sorted(
            zip(
                out["input_ids"][b][real].tolist(),
                out["token_type_ids"][b][real].tolist(),
                strict=True,
            )
        )
        assert pairs_in == pairs_out


def test_shuffle_actually_shuffles_and_is_uniformish() -> None:
    n = 6
    batch = {
        "input_ids": torch.tensor([[2, *range(10, 10 + n), 3, 0, 0]]),
        "attention_mask": torch.tensor([[1] * (n + 2) + [0, 0]]),
        "special_tokens_mask": torch.tensor([[1] + [0] * n + [1, 1, 1]]),
    }
    view = TokenShuffle(seed=0)
    first_token = torch.zeros(n)
    trials = 1200
    for _ in range(trials):
        out = view(batch)
        assert out["input_ids"][0, 0] == 2 and out["input_ids"][0, n + 1] == 3
        first_token[int(out["input_ids"][0, 1]) - 10] += 1
    # each token lands first with probability 1/n (binomial sd ~ 13 for 1200 trials)
    assert bool(((first_token - trials / n).abs() < 60).all()), first_token


def test_token_shuffle_equals_position_id_shuffle(
    tiny_encoder: SentenceEncoder, sentences: list[str]
) -> None:
    """Moving tokens (textcl) == permuting their position ids (ConSERT) for mean pooling."""
    enc = tiny_encoder.eval()
    batch = enc.tokenize(sentences[:6])
    out = TokenShuffle(seed=3)(batch)
    # slot j of `out` holds the token of slot index[j]; recover index from a tagged batch
    tagged = dict(batch)
    n_rows, length = batch["input_ids"].shape
    tagged["tag"] = torch.arange(length).expand(n_rows, length).clone()
    index = TokenShuffle(seed=3)(tagged)["tag"]
    inverse = torch.empty_like(index).scatter_(1, index, torch.arange(length).expand_as(index))
    reference = dict(batch)
    reference["position_ids"] = inverse  # token i keeps its slot, gets position inverse[i]
    with torch.no_grad():
        shuffled = enc(out)
        by_positions = enc(reference)
        plain = enc(batch)
    assert torch.allclose(shuffled, by_positions, atol=1e-5)
    assert not torch.allclose(shuffled, plain, atol=1e-3)
