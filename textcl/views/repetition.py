"""Word repetition view (ESimCSE, Wu et al. 2022)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from textcl.tokens import TokenBatch, as_token_batch, batch_tensors
from textcl.views._batch import (
    embedding_mask_3d,
    is_per_token_mask,
    per_token_keys,
    require_special_tokens_mask,
)
from textcl.views.base import RandomView, check_rate, editable_mask
from textcl.views.registry import register_view

logger = logging.getLogger(__name__)


@register_view("repetition")
class WordRepetition(RandomView):
    """Duplicate random subword tokens in place, which shifts the tokens after them.

    Paper: ESimCSE (Wu et al. 2022, "ESimCSE: Enhanced Sample Building Method for
    Contrastive Learning of Unsupervised Sentence Embedding"). Default rate: 0.32 (ESimCSE's
    ``dup_rate``). As in ESimCSE, a sentence with ``n`` real non-special tokens gets
    ``k ~ Uniform{0, ..., max(2, int(rate * n))}`` (at most ``n``) distinct tokens, chosen
    uniformly, each followed by a copy of itself. Rate 0 is the identity (ESimCSE's formula
    would still allow 2 copies).

    The batch grows to its new longest row and is re-padded on the side it was padded on
    (left padding is detected from the batch); per-token keys (``token_type_ids``,
    ``special_tokens_mask``, per-token ``embedding_mask`` rows, ...) are copied with their
    token, explicit ``position_ids`` are renumbered consecutively from each row's first
    position. Special tokens and padding are never duplicated; the copies are real tokens.

    Args:
        rate: ``dup_rate`` in ``[0, 1)``.
        seed: seed of the view's own CPU generator.
        pad_token_id: id for new padding slots; default: taken from the batch's padding, 0
            when the batch has none (``ViewContext.from_encoder`` gives the tokenizer's).
        max_length: never grow a sentence beyond this many tokens (default: no limit;
            ``ViewContext.from_encoder`` gives the model's position limit).
    """

    def __init__(
        self,
        rate: float = 0.32,
        seed: int | None = None,
        pad_token_id: int | None = None,
        max_length: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.rate = check_rate(rate)
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self.pad_token_id = pad_token_id
        self.max_length = max_length
        self._warned_pad = False

    def _pad_id(self, ids: Tensor, padding: Tensor) -> int:
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        if padding.any():
            return int(ids[padding][0])
        if not self._warned_pad:
            logger.warning(
                "repetition: pad id unknown (no padding in the batch, no pad_token_id given); "
                "new padding slots use id 0 with attention 0. Pass pad_token_id."
            )
            self._warned_pad = True
        return 0

    def _row_index(self, slots: list[int], candidates: Tensor) -> list[int]:
        n = int(candidates.numel())
        upper = min(n, max(2, int(self.rate * n)))
        if self.max_length is not None:
            upper = min(upper, max(0, self.max_length - len(slots)))
        k = int(torch.randint(0, upper + 1, (1,), generator=self.generator)) if upper > 0 else 0
        chosen = set(candidates[torch.randperm(n, generator=self.generator)[:k]].tolist())
        seq: list[int] = []
        for s in slots:
            seq.append(s)
            if s in chosen:
                seq.append(s)
        return seq

    def __call__(self, batch: TokenBatch) -> TokenBatch:
        special = require_special_tokens_mask(batch, "repetition").cpu()
        if self.rate == 0.0:
            return batch.copy()
        ids = batch["input_ids"]
        device = ids.device
        attention = batch["attention_mask"].bool().cpu()
        padding = special & ~attention
        allowed = editable_mask(batch).cpu()
        n_rows, length = ids.shape
        left = bool((padding[:, 0] & ~padding[:, -1]).any())

        rows = [
            self._row_index(
                (~padding[b]).nonzero().flatten().tolist(), allowed[b].nonzero().flatten()
            )
            for b in range(n_rows)
        ]
        new_len = max([length, *(len(r) for r in rows)])
        index = torch.full((n_rows, new_len), -1, dtype=torch.long)
        for b, seq in enumerate(rows):
            if seq:
                row = torch.tensor(seq, dtype=torch.long)
                if left:
                    index[b, new_len - len(seq) :] = row
                else:
                    index[b, : len(seq)] = row
        is_pad = (index < 0).to(device)
        gather_index = index.clamp(min=0).to(device)
        padding_dev = padding.to(device)

        out = batch_tensors(batch.copy())
        for key in per_token_keys(batch):
            value = batch_tensors(batch)[key]
            if key == "input_ids":
                fill = self._pad_id(ids.cpu(), padding)
            elif key == "attention_mask":
                fill = 0
            elif key == "special_tokens_mask":
                fill = 1
            else:
                fill = int(value[padding_dev][0]) if padding.any() else 0
            gathered = torch.gather(value, 1, gather_index)
            out[key] = gathered.masked_fill(is_pad, fill)

        if "position_ids" in batch:
            pos = batch["position_ids"]
            first = torch.where(is_pad, new_len, torch.arange(new_len, device=device)).amin(1)
            first_old = gather_index.gather(1, first.clamp(max=new_len - 1).unsqueeze(1))
            start = pos.gather(1, first_old)  # (B, 1): position of each row's first token
            rank = torch.cumsum((~is_pad).long(), dim=1) - 1
            pad_pos = int(pos[padding_dev][0]) if padding.any() else 0
            out["position_ids"] = (start + rank).masked_fill(is_pad, pad_pos).to(pos.dtype)

        mask = embedding_mask_3d(batch)
        if mask is not None and is_per_token_mask(mask, length):
            full = mask.expand(n_rows, -1, -1)
            idx3 = gather_index.to(full.device).unsqueeze(-1).expand(-1, -1, full.shape[2])
            rows_mask = torch.gather(full, 1, idx3)
            out["embedding_mask"] = rows_mask.masked_fill(is_pad.to(full.device).unsqueeze(-1), 1)
        return as_token_batch(out)

    def __repr__(self) -> str:
        return f"WordRepetition(rate={self.rate}, seed={self.seed})"
