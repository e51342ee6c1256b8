"""Hypothesis strategy: random padded token batches with [CLS]/[SEP] and mixed lengths."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from textcl.tokens import TokenBatch

PAD, CLS, SEP = 0, 2, 3
HIDDEN = 8


@st.composite
def token_batches(draw: st.DrawFn, allow_pairs: bool = True) -> TokenBatch:
    """A batch like SentenceEncoder.tokenize makes: random ids, random lengths (0-10 real
    tokens), optionally sentence pairs ([CLS] a [SEP] b [SEP] with token types), right or
    left padding, sometimes explicit position ids."""
    n_rows = draw(st.integers(1, 5))
    left = draw(st.booleans())
    pairs = allow_pairs and draw(st.booleans())
    rows: list[tuple[list[int], list[int], list[int]]] = []  # ids, special, types
    for _ in range(n_rows):
        a = draw(st.lists(st.integers(5, 99), min_size=0, max_size=10))
        ids = [CLS, *a, SEP]
        special = [1] + [0] * len(a) + [1]
        types = [0] * len(ids)
        if pairs:
            b = draw(st.lists(st.integers(5, 99), min_size=0, max_size=5))
            ids += [*b, SEP]
            special += [0] * len(b) + [1]
            types += [1] * (len(b) + 1)
        rows.append((ids, special, types))
    extra = draw(st.integers(0, 2))  # padded beyond the longest row, as padding="max_length"
    length = max(len(r[0]) for r in rows) + extra
    input_ids = torch.full((n_rows, length), PAD, dtype=torch.long)
    attention = torch.zeros((n_rows, length), dtype=torch.long)
    special_mask = torch.ones((n_rows, length), dtype=torch.long)
    token_types = torch.zeros((n_rows, length), dtype=torch.long)
    for i, (ids, special, types) in enumerate(rows):
        n = len(ids)
        sl = slice(length - n, length) if left else slice(0, n)
        input_ids[i, sl] = torch.tensor(ids)
        attention[i, sl] = 1
        special_mask[i, sl] = torch.tensor(special)
        token_types[i, sl] = torch.tensor(types)
    batch: TokenBatch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "special_tokens_mask": special_mask,
        "token_type_ids": token_types,
    }
    if draw(st.booleans()):
        batch["position_ids"] = torch.arange(length).expand(n_rows, length).clone()
    return batch


def clone_batch(batch: TokenBatch) -> TokenBatch:
    return {k: v.clone() for k, v in batch.items()}


def fixed_slots(batch: TokenBatch) -> torch.Tensor:
    """Bool (B, L): special tokens and padding."""
    return batch["special_tokens_mask"].bool() | ~batch["attention_mask"].bool()
