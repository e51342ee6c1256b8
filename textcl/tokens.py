"""Token batches: the :data:`TokenBatch` type and the token-level helpers around it.

A leaf module (it imports no other textcl module): views, objectives, GradCache, the
momentum encoder, prompt templates and the trainer's collator use it without importing the
encoder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Required, TypedDict, cast

import numpy as np
import torch
from torch import Tensor

MODEL_INPUT_KEYS: tuple[str, ...] = ("attention_mask", "token_type_ids", "position_ids")
"""Batch keys passed to the transformer besides ``input_ids`` / ``inputs_embeds``."""


class TokenBatch(TypedDict, total=False):
    """A padded token batch, as :meth:`SentenceEncoder.tokenize` returns and views map.

    ``input_ids`` and ``attention_mask`` ``(B, L)`` always; ``token_type_ids`` and
    ``position_ids`` ``(B, L)`` are passed to the model; ``special_tokens_mask`` ``(B, L)``
    (1 for special tokens and padding) is read by views, never passed to the model;
    ``embedding_mask`` (a float multiplier broadcastable to ``(B, L, H)``, set by cutoff
    views) scales the word embeddings, which the model then gets as ``inputs_embeds``;
    ``pooling_mask`` ``(B, L)``, when present, replaces ``attention_mask`` for the pooling
    only (prompt tokens left out with ``include_prompt=False``).
    """

    input_ids: Required[Tensor]
    attention_mask: Required[Tensor]
    token_type_ids: Tensor
    position_ids: Tensor
    special_tokens_mask: Tensor
    embedding_mask: Tensor
    pooling_mask: Tensor


def as_token_batch(tensors: Mapping[str, Tensor]) -> TokenBatch:
    """``tensors`` typed as a :class:`TokenBatch` (a new dict; keys are not checked)."""
    return cast(TokenBatch, dict(tensors))


def batch_tensors(batch: TokenBatch) -> dict[str, Tensor]:
    """``batch`` typed as a plain ``dict[str, Tensor]`` (the same object), for code that
    walks its keys generically (slicing, moving, per-token keys)."""
    return cast(dict[str, Tensor], batch)


def padding_position_offset(model: Any) -> int | None:
    """``padding_idx`` of models that number positions from ``padding_idx + 1`` and give
    padding the position ``padding_idx`` (RoBERTa, XLM-R, CamemBERT, MPNet, ...: their
    embeddings module has a ``padding_idx``); ``None`` for models counting from 0 (BERT)."""
    idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return idx if isinstance(idx, int) and not isinstance(idx, bool) else None


def max_positions(model: Any) -> int | None:
    """Longest sequence ``model``'s position embeddings allow: ``max_position_embeddings``,
    less the ``padding_idx + 1`` reserved slots of RoBERTa-style models (None: unknown)."""
    pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(pos, int) or pos <= 0:
        return None
    idx = padding_position_offset(model)
    return pos - (idx + 1 if idx is not None else 0)


def padded_position_ids(input_ids: Tensor, padding_idx: int) -> Tensor:
    """The position ids a RoBERTa-style model derives from ``input_ids``: real tokens
    ``padding_idx + 1, +2, ...`` in order, padding ``padding_idx`` (either padding side)."""
    real = input_ids.ne(padding_idx).long()
    return torch.cumsum(real, dim=1) * real + padding_idx


def check_texts(texts: object, what: str = "texts") -> list[str]:
    """Validate sentences given as any iterable of strings (list, tuple, 1-D numpy array of
    str, generator, ...); return them as a list.

    Raises ``ValueError`` for an empty input and ``TypeError`` naming the first non-string
    item (or the input itself when it is a string, bytes, a mapping or not iterable).
    Empty strings are valid sentences.
    """
    if isinstance(texts, str | bytes | Mapping) or not isinstance(texts, Iterable):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}")
    if isinstance(texts, np.ndarray) and texts.ndim != 1:
        raise TypeError(f"{what} must be a 1-D array of strings, got shape {texts.shape}")
    out = list(texts)
    if len(out) == 0:
        raise ValueError(f"{what} is empty: nothing to encode")
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, not str: {t!r:.80}")
        if type(t) is not str:  # numpy.str_ and other subclasses: plain str for tokenizers
            out[i] = str(t)
    return out


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> TokenBatch:
    """Tokenize, truncate to ``max_length`` and pad ``texts`` into a :data:`TokenBatch` with
    ``special_tokens_mask`` (1 for special tokens and padding). Needs only the tokenizer,
    so DataLoader workers can run it."""
    texts = check_texts(texts)
    enc = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    batch = as_token_batch({k: v for k, v in enc.items() if isinstance(v, Tensor)})
    # Padding counts as "special" for views: neither may be altered.
    batch["special_tokens_mask"] = (
        batch["special_tokens_mask"].bool() | ~batch["attention_mask"].bool()
    ).long()
    return batch


def token_ids(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length``, not padded."""
    enc = tokenizer(
        texts,
        padding=False,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
    )
    ids: list[list[int]] = enc["input_ids"]
    return ids


def pad_token_ids(tokenizer: Any, seqs: list[list[int]]) -> TokenBatch:
    """``input_ids`` and ``attention_mask`` of ``seqs`` padded with the tokenizer's pad
    token, on its padding side."""
    longest = max(len(s) for s in seqs)
    pad_id = int(tokenizer.pad_token_id)
    input_ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    for i, s in enumerate(seqs):
        n = len(s)
        if left:
            input_ids[i, longest - n :] = torch.tensor(s, dtype=torch.long)
            mask[i, longest - n :] = 1
        else:
            input_ids[i, :n] = torch.tensor(s, dtype=torch.long)
            mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def exclude_prompt_from_mask(attention_mask: Tensor, prompt_length: int) -> Tensor:
    """A copy of ``attention_mask`` ``(B, L)`` with each row's first ``prompt_length`` real
    tokens set to 0 (left padding is skipped): the pooling mask when prompt tokens are not
    pooled (``include_prompt=False``)."""
    present = attention_mask.bool()
    rank = present.long().cumsum(dim=1)  # 1..n over real tokens
    return (present & (rank > prompt_length)).to(attention_mask.dtype)


PASS_OVERHEAD_TOKENS = 64
"""What :func:`batch_bounds` counts one more forward pass as, in padded tokens: a pass's fixed
cost (a dozen small operations per layer, Python, the threads' hand-offs) and the lower
speed of small matrix products. all-MiniLM-L6-v2, fp32, 2 CPU threads, 1,101 Wikipedia
sentences encoded in groups of 137 (a server's merged batches) and at once: CPU seconds
greedy 11.38 / 8.31, overhead 16: 10.31 / 8.16, 32: 9.46 / 7.84, 64: 9.10 / 7.74,
96: 8.98 / 7.75, 256: 9.85 / 8.65, 1024: 10.61 / 9.17 (docs/inference.md, "Cutting
batches")."""


def batch_bounds(
    lengths: Sequence[int],
    batch_size: int,
    max_tokens: int | None = None,
    pass_overhead: int = PASS_OVERHEAD_TOKENS,
) -> list[tuple[int, int]]:
    """Split sentences sorted longest first into ``[start, stop)`` batches.

    Each batch has at most ``batch_size`` sentences. Without ``max_tokens`` they are
    consecutive chunks of ``batch_size``. With ``max_tokens`` each batch also holds at most
    ``max_tokens`` padded tokens (``size * lengths[start]``, the first being the longest; a
    single sentence longer than that forms a batch of its own), and the cut is the one that
    costs least, counting each batch as its padded tokens plus ``pass_overhead``: a
    dynamic programme over the cut points. Greedy filling padded a batch whose first sentence
    is long with many short ones (a server's merged batch of 137 mixed sentences ran 1.4-1.6
    padded tokens per real one); this cut pads little and still keeps batches large.
    """
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    n = len(lengths)
    if max_tokens is None:
        return [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    # best[i]: least cost of cutting lengths[:i]; start[i]: where its last batch starts
    best = [0] * (n + 1)
    start = [0] * (n + 1)
    for i in range(1, n + 1):
        cost, where = -1, i - 1
        for j in range(i - 1, max(-1, i - 1 - batch_size), -1):
            rows = i - j
            padded = rows * max(1, lengths[j])  # lengths[j] is the batch's longest
            if rows > 1 and padded > max_tokens:
                break  # earlier starts are longer and hold more rows: over budget too
            c = best[j] + pass_overhead + padded
            if cost < 0 or c < cost:
                cost, where = c, j
        best[i], start[i] = cost, where
    bounds: list[tuple[int, int]] = []
    stop = n
    while stop > 0:
        bounds.append((start[stop], stop))
        stop = start[stop]
    bounds.reverse()
    return bounds
