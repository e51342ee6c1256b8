"""Token shuffle view (ConSERT, Yan et al. 2021)."""

from __future__ import annotations

import torch

from textcl.tokens import TokenBatch
from textcl.views._batch import gather_tokens, require_special_tokens_mask
from textcl.views.base import RandomView, editable_mask
from textcl.views.registry import register_view


@register_view("shuffle")
class TokenShuffle(RandomView):
    """Randomly permute the order of the real, non-special tokens of each sentence.

    Paper: ConSERT (Yan et al. 2021, "ConSERT: A Contrastive Framework for Self-Supervised
    Sentence Representation Transfer"), whose best unsupervised pair is token shuffle +
    feature cutoff. There is no rate: every sentence is fully shuffled (ConSERT's setting).

    Implementation: the TOKENS move (``input_ids`` with their ``token_type_ids``, any other
    per-token ``(B, L)`` key and per-token ``embedding_mask`` rows), while the position ids
    stay with the slots. ConSERT instead permutes the position ids; for an encoder with
    absolute position embeddings and bidirectional attention both give the same set of
    (token, position) pairs, hence identical mean/max/CLS-pooled embeddings, and moving tokens
    needs no knowledge of the model's position convention (RoBERTa's offsets). Unlike
    ConSERT, special tokens ([CLS]/[SEP]/<s>/</s>) and padding keep their slots.

    Args:
        seed: seed of the view's own CPU generator (None: non-deterministic).
    """

    def __call__(self, batch: TokenBatch) -> TokenBatch:
        require_special_tokens_mask(batch, "shuffle")
        allowed = editable_mask(batch).cpu()
        n_rows, length = allowed.shape
        positions = torch.arange(length).expand(n_rows, length).float()
        # Allowed slots first (random order), then the others in slot order.
        src_keys = torch.where(
            allowed, torch.rand(allowed.shape, generator=self.generator), 2.0 + positions
        )
        src = src_keys.argsort(dim=1)
        # Allowed slots first in slot order, then the others in slot order.
        dest = torch.where(allowed, positions, float(length) + positions).argsort(dim=1)
        index = torch.empty_like(src).scatter_(1, dest, src)
        return gather_tokens(batch, index)

    def __repr__(self) -> str:
        return f"TokenShuffle(seed={self.seed})"
