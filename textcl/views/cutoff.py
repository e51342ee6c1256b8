"""Cutoff views: token cutoff, span cutoff and feature cutoff.

Papers: Shen et al. 2020, "A Simple but Tough-to-Beat Data Augmentation Approach for Natural
Language Understanding and Generation" (cutoff: token, span and feature); ConSERT (Yan et
al. 2021) uses token cutoff and feature cutoff as contrastive views.

All three act through the batch's ``embedding_mask`` (a float multiplier applied by
:meth:`textcl.SentenceEncoder.forward` to the INPUT embeddings, i.e. the output of
``model.get_input_embeddings()``, which it then passes to the model as ``inputs_embeds``);
token and
span cutoff also set ``attention_mask`` to 0 for the dropped tokens, so that no other token
attends to them and pooling averages over the kept tokens only. Masks of composed views are
multiplied, never overwritten. ``input_ids`` are left unchanged (the model still derives its
default position ids from them), as are special tokens and padding.

Counts follow ConSERT's code: ``int(rate * n)`` tokens (``n`` = real, non-special tokens of
the sentence) or ``int(rate * hidden_size)`` dimensions per sentence.
"""

from __future__ import annotations

import torch

from textcl.tokens import TokenBatch, as_token_batch, batch_tensors
from textcl.views._batch import (
    combine_embedding_mask,
    random_ranks,
    require_special_tokens_mask,
)
from textcl.views.base import RandomView, check_rate, editable_mask
from textcl.views.registry import register_view


def _drop_tokens(batch: TokenBatch, cut: torch.Tensor) -> TokenBatch:
    """Zero the embeddings and the attention of the slots in bool ``cut`` ``(B, L)``."""
    out = batch_tensors(batch.copy())
    device = batch["input_ids"].device
    cut = cut.to(device)
    keep = (~cut).float().unsqueeze(-1)  # (B, L, 1)
    out["embedding_mask"] = combine_embedding_mask(batch, keep)
    attention = batch["attention_mask"]
    out["attention_mask"] = attention.masked_fill(cut, 0)
    return as_token_batch(out)


class _TokenDrop(RandomView):
    """Shared by token and span cutoff: choose slots among the real non-special tokens,
    then drop them with :func:`_drop_tokens`. Subclasses set ``name`` and ``_choose``."""

    name = ""

    def __init__(self, rate: float = 0.1, seed: int | None = None) -> None:
        super().__init__(seed)
        self.rate = check_rate(rate)

    def _choose(self, allowed: torch.Tensor) -> torch.Tensor:
        """Bool ``(B, L)`` slots to drop, a subset of the CPU bool mask ``allowed``."""
        raise NotImplementedError

    def __call__(self, batch: TokenBatch) -> TokenBatch:
        require_special_tokens_mask(batch, self.name)
        if self.rate == 0.0:
            return batch.copy()
        return _drop_tokens(batch, self._choose(editable_mask(batch).cpu()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rate={self.rate}, seed={self.seed})"


@register_view("token_cutoff")
class TokenCutoff(_TokenDrop):
    """Drop ``int(rate * n)`` random whole tokens of each sentence (``n`` real non-special
    tokens): their input embedding is zeroed and their attention mask set to 0.

    Paper: Shen et al. 2020 (cutoff); used as a view by ConSERT (Yan et al. 2021).
    Default rate: 0.1 (the low end of the cutoff rates both papers tune; ConSERT's released
    recipe uses feature cutoff 0.2, see :class:`FeatureCutoff`). Rate 0 is the identity.

    Args:
        rate: fraction of tokens to drop, in ``[0, 1)``.
        seed: seed of the view's own CPU generator.
    """

    name = "token_cutoff"

    def _choose(self, allowed: torch.Tensor) -> torch.Tensor:
        n_cut = (allowed.sum(dim=1) * self.rate).long()  # int(rate * n), as ConSERT
        ranks = random_ranks(allowed, self.generator)
        return allowed & (ranks < n_cut.unsqueeze(1))


@register_view("span_cutoff")
class SpanCutoff(_TokenDrop):
    """Drop one contiguous span of ``int(rate * n)`` real non-special tokens per sentence
    (embedding zeroed, attention 0); the span starts uniformly at random.

    Paper: Shen et al. 2020 (span cutoff). Default rate: 0.1. Rate 0 is the identity.
    "Contiguous" counts real non-special tokens: in a sentence pair the span may continue
    across the middle [SEP], which itself is never dropped.

    Args:
        rate: span length as a fraction of the sentence's tokens, in ``[0, 1)``.
        seed: seed of the view's own CPU generator.
    """

    name = "span_cutoff"

    def _choose(self, allowed: torch.Tensor) -> torch.Tensor:
        n = allowed.sum(dim=1)
        span = (n * self.rate).long()
        # start uniform in [0, n - span]
        start = (torch.rand(n.shape, generator=self.generator) * (n - span + 1).float()).long()
        start = torch.minimum(start, n - span)
        order = torch.cumsum(allowed.long(), dim=1) - 1  # rank of each allowed slot
        return allowed & (order >= start.unsqueeze(1)) & (order < (start + span).unsqueeze(1))


@register_view("feature_cutoff")
class FeatureCutoff(RandomView):
    """Zero ``int(rate * hidden_size)`` random whole dimensions of the input embeddings of
    each sentence (the same dimensions for all its tokens); the ``embedding_mask`` it adds
    is ``(B, 1, H)``.

    Paper: Shen et al. 2020 (feature cutoff); ConSERT (Yan et al. 2021) pairs it with token
    shuffle. Default rate: 0.2 (ConSERT's released unsupervised recipe,
    ``--da_final_1 feature_cutoff --cutoff_rate_final_1 0.2``). Rate 0 is the identity.

    ConSERT zeroes the dimensions after the whole embedding layer (word + position + type,
    LayerNorm); textcl zeroes them in the output of the word-embedding layer
    (``get_input_embeddings()``), before positions and token types are added, which works
    for any Hugging Face encoder exposing input embeddings (BERT, RoBERTa, DistilBERT,
    ALBERT, ELECTRA, MPNet, DeBERTa-v2 are tested; the model still derives its own position
    ids). Token ids, attention and positions (special tokens included) are unchanged. For
    ALBERT/ELECTRA the width is the embedding size, not the hidden size.

    The view must know the encoder's input-embedding width: pass ``hidden_size=`` (or build
    it with ``build_view(spec, context=ViewContext.from_encoder(encoder))``, as the trainer
    does).

    Args:
        rate: fraction of dimensions to zero, in ``[0, 1)``.
        seed: seed of the view's own CPU generator.
        hidden_size: width of the input embeddings.
    """

    def __init__(
        self, rate: float = 0.2, seed: int | None = None, hidden_size: int | None = None
    ) -> None:
        super().__init__(seed)
        self.rate = check_rate(rate)
        if hidden_size is not None and (not isinstance(hidden_size, int) or hidden_size < 1):
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        self.hidden_size = hidden_size

    def __call__(self, batch: TokenBatch) -> TokenBatch:
        require_special_tokens_mask(batch, "feature_cutoff")
        if self.rate == 0.0:
            return batch.copy()
        if self.hidden_size is None:
            raise ValueError(
                "feature_cutoff does not know the encoder's hidden size: pass hidden_size= "
                "(build_view(spec, context=ViewContext.from_encoder(encoder)) does)"
            )
        n_rows = batch["input_ids"].shape[0]
        hidden = self.hidden_size
        ranks = random_ranks(torch.ones((n_rows, hidden), dtype=torch.bool), self.generator)
        keep = (ranks >= int(hidden * self.rate)).float().unsqueeze(1)  # (B, 1, H)
        out = batch_tensors(batch.copy())
        out["embedding_mask"] = combine_embedding_mask(batch, keep.to(batch["input_ids"].device))
        return as_token_batch(out)

    def __repr__(self) -> str:
        return f"FeatureCutoff(rate={self.rate}, seed={self.seed}, hidden_size={self.hidden_size})"
