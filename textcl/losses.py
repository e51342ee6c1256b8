"""Contrastive losses over sentence embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InfoNCE(nn.Module):
    """In-batch InfoNCE over cosine similarity / temperature (SimCSE, Gao et al. 2021).

    For anchors ``z_a[i]`` and positives ``z_b[i]`` the loss is

        -log  exp(s(a_i, b_i)/t) / ( sum_j exp(s(a_i, b_j)/t) + sum_j w_ij exp(s(a_i, n_j)/t) )

    with cosine similarity ``s``, every other positive ``b_j`` and every hard negative
    ``n_j`` of the batch as negatives, and ``w_ij = exp(hard_negative_weight)`` when
    ``i == j`` (the anchor's own hard negative), 1 otherwise. As in SimCSE's code,
    ``hard_negative_weight`` is added to the logit: it is ``log(alpha)`` of the paper.

    Args:
        temperature: ``t`` > 0 (SimCSE: 0.05).
        symmetric: also score positives against anchors (``b -> a``) and average both
            directions; hard negatives enter only the ``a -> b`` direction.
        hard_negative_weight: logit offset for each anchor's own hard negative (0 = none).

    ``forward(z_a, z_b, z_neg=None)``: ``z_a``, ``z_b`` and ``z_neg`` are ``(B, D)``; returns
    a scalar (mean over anchors). Similarities and the softmax run in float32, also under
    bf16/fp16 autocast.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        hard_negative_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if (
            not isinstance(temperature, (int, float))
            or not temperature > 0
            or not math.isfinite(temperature)
        ):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        if not math.isfinite(hard_negative_weight):
            raise ValueError(f"hard_negative_weight must be finite, got {hard_negative_weight!r}")
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)
        self.hard_negative_weight = float(hard_negative_weight)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, symmetric={self.symmetric}, "
            f"hard_negative_weight={self.hard_negative_weight}"
        )

    @staticmethod
    def _check(z_a: Tensor, z_b: Tensor, z_neg: Tensor | None) -> None:
        if z_a.dim() != 2 or z_a.shape != z_b.shape:
            raise ValueError(
                f"z_a and z_b must both be (batch, dim); got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
            )
        if z_neg is not None and z_neg.shape != z_a.shape:
            raise ValueError(
                f"z_neg must be (batch, dim) like z_a {tuple(z_a.shape)}, got {tuple(z_neg.shape)}"
            )

    def similarity_logits(
        self, z_a: Tensor, z_b: Tensor, z_neg: Tensor | None = None, label_offset: int = 0
    ) -> Tensor:
        """Logits ``(B, M)`` of anchors against ``[z_b; z_neg]`` (``M = B`` or ``M = 2B``),
        hard-negative weight included. ``z_b``/``z_neg`` may hold more rows than ``z_a`` (e.g.
        gathered from other ranks); the anchor ``i`` positive is row ``i + label_offset``."""
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            a = F.normalize(z_a.float(), dim=-1)
            cands = z_b.float() if z_neg is None else torch.cat([z_b.float(), z_neg.float()])
            logits = a @ F.normalize(cands, dim=-1).T / self.temperature
            if z_neg is not None and self.hard_negative_weight != 0.0:
                n_pos = z_b.shape[0]
                rows = torch.arange(z_a.shape[0], device=z_a.device)
                bonus = torch.zeros_like(logits)
                bonus[rows, n_pos + rows + label_offset] = self.hard_negative_weight
                logits = logits + bonus
        return logits

    def forward(self, z_a: Tensor, z_b: Tensor, z_neg: Tensor | None = None) -> Tensor:
        self._check(z_a, z_b, z_neg)
        labels = torch.arange(z_a.shape[0], device=z_a.device)
        logits = self.similarity_logits(z_a, z_b, z_neg)
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            back = self.similarity_logits(z_b, z_a)
            loss = (loss + F.cross_entropy(back, labels)) / 2
        return loss
