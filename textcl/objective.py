"""A training objective: embed token batches, compute a loss over the embeddings, backpropagate.

:class:`LossStep` is the plain step; :class:`textcl.gradcache.CachedLoss` wraps the same loss
in the gradient cache (as sentence-transformers' ``CachedMultipleNegativesRankingLoss`` wraps
MNRL). Both are called the same way, so a training step has one path::

    loss = objective(encoder_or_ddp, inputs, autocast=..., scaler=...)  # backward done
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from textcl.tokens import TokenBatch, as_token_batch, batch_tensors

Embed = Callable[[TokenBatch], Tensor]
"""Maps a token batch ``(b, L)`` to embeddings ``(b, D)`` with autograd (an encoder or its
DDP wrapper)."""
AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]
Inputs = Sequence[TokenBatch]
"""One token batch per role, e.g. ``[view_a, view_b]`` or ``[anchor, positive, negative]``."""
Scaler = torch.amp.GradScaler | None

__all__ = ["AutocastFactory", "Embed", "Inputs", "LossStep", "Scaler", "embed_batches"]


def _mergeable(inputs: Sequence[TokenBatch]) -> bool:
    first = batch_tensors(inputs[0])
    rows = first["input_ids"].shape[0]
    others = [batch_tensors(b) for b in inputs[1:]]
    return (
        len(inputs) > 1
        and all(v.dim() > 0 and v.shape[0] == rows for v in first.values())
        and all(
            b.keys() == first.keys() and all(b[k].shape == first[k].shape for k in first)
            for b in others
        )
    )


def embed_batches(embed: Embed, inputs: Sequence[TokenBatch]) -> list[Tensor]:
    """The embeddings of each token batch of ``inputs``.

    Batches of one shape (the two views of unsupervised SimCSE, any length-preserving view)
    go through ``embed`` as ONE ``(k*B, L)`` batch, as in the SimCSE reference code: half the
    per-layer kernel launches and Python dispatch, and larger GEMMs. Dropout masks are drawn
    independently per row either way. Batches of different lengths (supervised pairs) keep
    one forward pass each, so no padding is added.
    """
    if not inputs:
        raise ValueError("inputs is empty: pass at least one token batch")
    if not _mergeable(inputs):
        return [embed(b) for b in inputs]
    parts = [batch_tensors(b) for b in inputs]
    merged = as_token_batch({k: torch.cat([b[k] for b in parts]) for k in parts[0]})
    return list(embed(merged).chunk(len(inputs)))


class LossStep:
    """The plain objective: embed every input with autograd, apply ``loss`` to the
    embeddings ``loss(z_0, z_1, ...)`` (e.g. :class:`textcl.losses.InfoNCE` on
    ``[z_a, z_b(, z_neg)]``), backpropagate (scaled by ``scaler`` when given).

    Calling it returns the loss, detached and unscaled, with the parameters' ``.grad``
    accumulated (zero them before). Under DDP pass the DDP module as ``embed``: its backward
    averages the gradients over ranks.
    """

    def __init__(self, loss: Callable[..., Tensor]) -> None:
        self.loss = loss

    def compute(self, reps: Sequence[Tensor]) -> Tensor:
        """The loss of the embeddings ``reps`` (one tensor per input)."""
        out = self.loss(*reps)
        if not isinstance(out, Tensor) or out.dim() != 0:
            raise ValueError("the loss must return a scalar tensor")
        return out

    def __call__(
        self,
        embed: Embed,
        inputs: Sequence[TokenBatch],
        *,
        autocast: AutocastFactory | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        ctx = autocast if autocast is not None else contextlib.nullcontext
        return self.step(embed, inputs, ctx, scaler)

    def step(
        self, embed: Embed, inputs: Inputs, autocast: AutocastFactory, scaler: Scaler
    ) -> Tensor:
        """The step behind ``__call__`` (subclasses change how, not the call)."""
        with autocast():
            loss = self.compute(embed_batches(embed, inputs))
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return loss.detach()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loss!r})"
