"""Token masking view (BERT-style masking as a contrastive augmentation)."""

from __future__ import annotations

import torch

from textcl.tokens import TokenBatch, as_token_batch, batch_tensors
from textcl.views.base import RandomView, check_rate, editable_mask
from textcl.views.registry import register_view

MASK_MODES = ("token", "attention")


@register_view("mask")
class TokenMask(RandomView):
    """Mask a random fraction of the real, non-special tokens of each sentence.

    Used as an augmentation by CLEAR (Wu et al. 2020) and compared in SimCSE's Table 1
    (Gao et al. 2021), where masking 15% of tokens is one of the discrete augmentations.

    Args:
        rate: fraction in ``[0, 1)`` of each sentence's editable tokens to mask; each token
            is masked independently with this probability (default 0.15, BERT's rate).
        mode: ``token`` replaces the token with the tokenizer's mask token (``[MASK]`` /
            ``<mask>``); ``attention`` instead zeroes its attention-mask entry so no other
            token attends to it (for tokenizers without a mask token). The pooling mask
            follows the attention mask, so an attention-masked token is also left out of
            mean/max pooling.
        seed: seed of the view's own CPU generator (None: non-deterministic).

    Special tokens and padding are never touched. ``token`` mode needs the mask token id:
    pass ``mask_token_id`` (``build_view(spec, context=ViewContext.from_encoder(encoder))``
    passes the tokenizer's).
    """

    def __init__(
        self,
        rate: float = 0.15,
        mode: str = "token",
        seed: int | None = None,
        mask_token_id: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.rate = check_rate(rate)
        if mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {mode!r}: expected one of {', '.join(MASK_MODES)}")
        self.mode = mode
        self.mask_token_id = mask_token_id

    def __call__(self, batch: TokenBatch) -> TokenBatch:
        if "input_ids" not in batch or "attention_mask" not in batch:
            raise ValueError("mask view: a token batch needs 'input_ids' and 'attention_mask'")
        allowed = editable_mask(batch).cpu()
        draw = torch.rand(allowed.shape, generator=self.generator) < self.rate
        chosen = (draw & allowed).to(batch["input_ids"].device)
        out = batch_tensors(batch.copy())
        if self.mode == "token":
            if self.mask_token_id is None:
                raise ValueError(
                    "mask view: no mask token id (pass mask_token_id; a tokenizer without a "
                    "mask token needs mode='attention')"
                )
            out["input_ids"] = batch["input_ids"].masked_fill(chosen, self.mask_token_id)
        else:
            out["attention_mask"] = batch["attention_mask"].masked_fill(chosen, 0)
            if "special_tokens_mask" in batch:
                # A token nothing attends to behaves like padding for later views.
                out["special_tokens_mask"] = batch["special_tokens_mask"].masked_fill(chosen, 1)
        return as_token_batch(out)

    def __repr__(self) -> str:
        return f"TokenMask(rate={self.rate}, mode={self.mode!r}, seed={self.seed})"
