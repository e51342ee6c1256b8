"""Contrastive losses over sentence embeddings."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from textcl.distributed import DistEnv


class ContrastiveLogits(NamedTuple):
    """What :meth:`InfoNCE.get_logits` returns for this process's anchors."""

    logits: Tensor
    """``(B_r, M)``: local anchors against the global candidates ``[z_b; z_neg]`` / ``t``,
    hard-negative weight included (``M = N`` or ``2N``, ``N`` = global batch)."""
    labels: Tensor
    """``(B_r,)``: column of each anchor's positive (its global row, ``offset_r + i``)."""
    back: Tensor | None
    """``(B_r, N)``: local positives against the global anchors (``symmetric`` only)."""


class InfoNCE(nn.Module):
    """In-batch InfoNCE over cosine similarity / temperature (SimCSE, Gao et al. 2021).

    For anchors ``z_a[i]`` and positives ``z_b[i]`` the loss is

        -log  exp(s(a_i, b_i)/t) / ( sum_j exp(s(a_i, b_j)/t) + sum_j w_ij exp(s(a_i, n_j)/t) )

    with cosine similarity ``s``, every other positive ``b_j`` and every hard negative
    ``n_j`` of the batch as negatives, and ``w_ij = exp(hard_negative_weight)`` when
    ``i == j`` (the anchor's own hard negative), 1 otherwise. As in SimCSE's code,
    ``hard_negative_weight`` is added to the logit: it is ``log(alpha)`` of the paper.

    Distributed (as open_clip's ``ClipLoss``): with ``dist`` (a
    :class:`textcl.distributed.DistEnv` or a process group) of world size ``W``, every rank
    passes its local ``(B_r, D)`` rows; the positives and hard negatives (and, when
    symmetric, the anchors) of all ranks are gathered with gradient
    (:func:`textcl.distributed.gather_with_grad`), so the batch is the global one of
    ``N = sum_r B_r`` rows. The rank's loss is the mean over its anchors times
    ``W * B_r / N``: the mean of the ranks' losses equals the single-process loss over the
    global batch, and gradients averaged over ranks (DDP) equal its gradients.

    Args:
        temperature: ``t`` > 0 (SimCSE: 0.05).
        symmetric: also score positives against anchors (``b -> a``) and average both
            directions; hard negatives enter only the ``a -> b`` direction.
        hard_negative_weight: logit offset for each anchor's own hard negative (0 = none).
        dist: ``None`` (one process), a ``DistEnv`` or a ``torch.distributed`` process group.

    ``forward(z_a, z_b, z_neg=None)``: ``z_a``, ``z_b`` and ``z_neg`` are ``(B_r, D)``;
    returns a scalar. Similarities and the softmax run in float32, also under bf16/fp16
    autocast.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        hard_negative_weight: float = 0.0,
        dist: DistEnv | Any | None = None,
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
        from textcl.distributed import as_dist_env

        self.dist = as_dist_env(dist)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, symmetric={self.symmetric}, "
            f"hard_negative_weight={self.hard_negative_weight}, "
            f"rank={self.rank}, world_size={self.world_size}"
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

    def _scores(self, queries: Tensor, candidates: Tensor) -> Tensor:
        """``cos(queries, candidates) / t`` in float32, ``(Q, C)``."""
        with torch.autocast(device_type=queries.device.type, enabled=False):
            q = F.normalize(queries.float(), dim=-1)
            c = F.normalize(candidates.float(), dim=-1)
            return q @ c.T / self.temperature

    def get_logits(
        self, z_a: Tensor, z_b: Tensor, z_neg: Tensor | None = None
    ) -> ContrastiveLogits:
        """Logits and labels of this rank's anchors against the global candidates (gathered
        from every rank when distributed; all ranks must call it together)."""
        from textcl.distributed import gather_sizes, gather_with_grad

        self._check(z_a, z_b, z_neg)
        n_local = z_a.shape[0]
        offset, sizes = 0, [n_local]
        if self.dist.is_distributed:
            if n_local == 0:
                raise ValueError(
                    f"rank {self.rank} has an empty batch: every rank needs >= 1 anchor"
                )
            sizes = gather_sizes(n_local, z_a.device, self.dist)
            offset = sum(sizes[: self.rank])
        total = sum(sizes)
        labels = torch.arange(n_local, device=z_a.device) + offset
        all_b = gather_with_grad(z_b, self.dist, sizes)
        cands = (
            all_b
            if z_neg is None
            else torch.cat([all_b, gather_with_grad(z_neg, self.dist, sizes)])
        )
        logits = self._scores(z_a, cands)
        if z_neg is not None and self.hard_negative_weight != 0.0:
            bonus = torch.zeros_like(logits)
            bonus[torch.arange(n_local, device=z_a.device), total + labels] = (
                self.hard_negative_weight
            )
            logits = logits + bonus
        back = None
        if self.symmetric:
            back = self._scores(z_b, gather_with_grad(z_a, self.dist, sizes))
        return ContrastiveLogits(logits, labels, back)

    def forward(self, z_a: Tensor, z_b: Tensor, z_neg: Tensor | None = None) -> Tensor:
        out = self.get_logits(z_a, z_b, z_neg)
        loss = F.cross_entropy(out.logits, out.labels)
        if out.back is not None:
            loss = (loss + F.cross_entropy(out.back, out.labels)) / 2
        if self.dist.is_distributed:
            # Mean over ranks == the global mean over anchors (see the class docstring).
            total = out.logits.shape[1] // (1 if z_neg is None else 2)
            loss = loss * (self.world_size * z_a.shape[0] / total)
        return loss
