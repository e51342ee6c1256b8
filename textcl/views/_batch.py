"""Private helpers shared by the token-level views (shuffle, cutoff, repetition)."""

from __future__ import annotations

import torch
from torch import Tensor

from textcl.tokens import TokenBatch, as_token_batch, batch_tensors


def require_special_tokens_mask(batch: TokenBatch, view: str) -> Tensor:
    """The batch's ``special_tokens_mask`` as bool ``(B, L)``; a ``ValueError`` without it.

    Views that move or drop tokens must know which positions are special tokens or
    padding; :meth:`textcl.SentenceEncoder.tokenize` always provides the mask.
    """
    if "input_ids" not in batch or "attention_mask" not in batch:
        raise ValueError(f"{view}: a token batch needs 'input_ids' and 'attention_mask'")
    special = batch.get("special_tokens_mask")
    if special is None:
        raise ValueError(
            f"{view} needs batch['special_tokens_mask'] (1 for special tokens and padding) to "
            "keep special tokens fixed; SentenceEncoder.tokenize provides it"
        )
    ids = batch["input_ids"]
    if ids.dim() != 2 or batch["attention_mask"].shape != ids.shape or special.shape != ids.shape:
        raise ValueError(
            f"{view}: input_ids, attention_mask and special_tokens_mask must share one (B, L) "
            f"shape, got {tuple(ids.shape)}, {tuple(batch['attention_mask'].shape)} and "
            f"{tuple(special.shape)}"
        )
    return special.bool()


def per_token_keys(batch: TokenBatch) -> list[str]:
    """Keys holding one value per token slot ``(B, L)``, other than ``position_ids``.

    Those values belong to the token (its id, segment, attention, label, ...) and move with
    it; ``position_ids`` belong to the slot.
    """
    shape = batch["input_ids"].shape
    return [
        k
        for k, v in batch.items()
        if k != "position_ids" and isinstance(v, Tensor) and v.shape == shape
    ]


def embedding_mask_3d(batch: TokenBatch) -> Tensor | None:
    """The batch's ``embedding_mask`` viewed as 3-D (leading dims added), or None."""
    mask = batch.get("embedding_mask")
    if mask is None:
        return None
    while mask.dim() < 3:
        mask = mask.unsqueeze(0)
    if mask.dim() > 3:
        raise ValueError(
            f"embedding_mask must be broadcastable to (B, L, H), got shape {tuple(mask.shape)}"
        )
    return mask


def is_per_token_mask(mask: Tensor, length: int) -> bool:
    """Whether a 3-D embedding mask varies over token positions (``(., L, .)``)."""
    return mask.shape[1] == length and length > 1


def combine_embedding_mask(batch: TokenBatch, new: Tensor) -> Tensor:
    """Multiply ``new`` into the batch's existing ``embedding_mask`` (composed views)."""
    old = batch.get("embedding_mask")
    if old is None:
        return new
    return old.to(device=new.device, dtype=new.dtype) * new


def gather_tokens(batch: TokenBatch, index: Tensor) -> TokenBatch:
    """A new batch whose slot ``(b, j)`` holds the token of slot ``(b, index[b, j])``.

    ``index`` is ``(B, L)`` (same length: a permutation within rows). Per-token keys and a
    per-token ``embedding_mask`` move; ``position_ids`` and other keys stay.
    """
    out = batch_tensors(batch.copy())
    dev_index = index.to(batch["input_ids"].device)
    for key in per_token_keys(batch):
        out[key] = torch.gather(batch_tensors(batch)[key], 1, dev_index)
    mask = embedding_mask_3d(batch)
    if mask is not None and is_per_token_mask(mask, index.shape[1]):
        full = mask.expand(index.shape[0], -1, -1)
        idx3 = dev_index.to(full.device).unsqueeze(-1).expand(-1, -1, full.shape[2])
        out["embedding_mask"] = torch.gather(full, 1, idx3)
    return as_token_batch(out)


def random_ranks(allowed: Tensor, generator: torch.Generator) -> Tensor:
    """Long ``(B, L)``: a uniformly random rank ``0..n_b-1`` for each allowed slot of row
    ``b`` (``n_b`` allowed slots), and ranks ``>= n_b`` for the others."""
    keys = torch.rand(allowed.shape, generator=generator)
    keys = torch.where(allowed, keys, 2.0 + torch.arange(allowed.shape[1]).float())
    return keys.argsort(dim=1).argsort(dim=1)
