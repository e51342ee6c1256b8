"""Contrastive losses over sentence embeddings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textcl.distributed import DistEnv, as_dist_env, gather_sizes, gather_with_grad


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

    def _layout(self, z_a: Tensor) -> tuple[Tensor, list[int]]:
        """This rank's labels (global row of each local anchor's positive, ``offset_r + i``)
        and every rank's row count (collective when distributed)."""
        n_local = z_a.shape[0]
        offset, sizes = 0, [n_local]
        if self.dist.is_distributed:
            if n_local == 0:
                raise ValueError(
                    f"rank {self.rank} has an empty batch: every rank needs >= 1 anchor"
                )
            sizes = gather_sizes(n_local, z_a.device, self.dist)
            offset = sum(sizes[: self.rank])
        return torch.arange(n_local, device=z_a.device) + offset, sizes

    def _with_hard_negative_bonus(
        self, logits: Tensor, labels: Tensor, sizes: list[int], z_neg: Tensor | None
    ) -> Tensor:
        """Add ``hard_negative_weight`` to each anchor's own hard negative (column
        ``N + label``, after the ``N`` global positives)."""
        if z_neg is None or self.hard_negative_weight == 0.0:
            return logits
        bonus = torch.zeros_like(logits)
        rows = torch.arange(labels.shape[0], device=labels.device)
        bonus[rows, sum(sizes) + labels] = self.hard_negative_weight
        return logits + bonus

    def get_logits(
        self, z_a: Tensor, z_b: Tensor, z_neg: Tensor | None = None
    ) -> ContrastiveLogits:
        """Logits and labels of this rank's anchors against the global candidates (gathered
        from every rank when distributed; all ranks must call it together)."""
        self._check(z_a, z_b, z_neg)
        labels, sizes = self._layout(z_a)
        all_b = gather_with_grad(z_b, self.dist, sizes)
        cands = (
            all_b
            if z_neg is None
            else torch.cat([all_b, gather_with_grad(z_neg, self.dist, sizes)])
        )
        logits = self._with_hard_negative_bonus(self._scores(z_a, cands), labels, sizes, z_neg)
        back = None
        if self.symmetric:
            back = self._scores(z_b, gather_with_grad(z_a, self.dist, sizes))
        return ContrastiveLogits(logits, labels, back)

    def forward(self, z_a: Tensor, z_b: Tensor, z_neg: Tensor | None = None) -> Tensor:
        out = self.get_logits(z_a, z_b, z_neg)
        return self._reduce(out, out.logits.shape[1] // (1 if z_neg is None else 2))

    def _reduce(self, out: ContrastiveLogits, total: int) -> Tensor:
        """Cross-entropy of ``out`` (both directions averaged when symmetric); when
        distributed, times ``W * B_r / N`` (``total`` = N, the global anchors), so the mean
        over ranks is the global mean over anchors (see the class docstring)."""
        loss = F.cross_entropy(out.logits, out.labels)
        if out.back is not None:
            loss = (loss + F.cross_entropy(out.back, out.labels)) / 2
        if self.dist.is_distributed:
            loss = loss * (self.world_size * out.labels.shape[0] / total)
        return loss


# ---------------------------------------------------------------------------------------------
# Extra (queued) negatives and false-negative control (issue 17). Kept apart from InfoNCE so the
# plain loss stays as it is.
def false_negative_mask(
    sims: Tensor,
    labels: Tensor,
    *,
    margin: float | None = None,
    threshold: float | None = None,
) -> Tensor:
    """Which candidates of each anchor are suspected false negatives, ``(Q, C)`` bool.

    ``sims[i, j]`` is the cosine similarity of anchor ``i`` and candidate ``j`` (of the
    trained model, or of a frozen guide encoder as in GISTEmbed, Solatorio 2024), and
    ``labels[i]`` the column of the anchor's positive. Candidate ``j != labels[i]`` is
    flagged when

    * ``margin`` ("relative", GISTEmbed-style): ``sims[i, j] > sims[i, labels[i]] - margin``
      (a negative nearly as close as the positive, or closer);
    * ``threshold`` ("absolute"): ``sims[i, j] > threshold``.

    Exactly one of ``margin`` and ``threshold`` must be given. The positive is never flagged.
    """
    if (margin is None) == (threshold is None):
        raise ValueError("give exactly one of margin (relative) and threshold (absolute)")
    rows = torch.arange(sims.shape[0], device=sims.device)
    if margin is not None:
        limit = (sims[rows, labels] - margin).unsqueeze(1)
    else:
        limit = torch.full((sims.shape[0], 1), float(threshold), device=sims.device)  # type: ignore[arg-type]
    mask = sims > limit
    mask[rows, labels] = False
    return mask


class ExtendedInfoNCE(InfoNCE):
    """:class:`InfoNCE` with extra negatives (a momentum queue) and false-negative control.

    With a queue ``q_1..q_K`` of past key embeddings (no gradient) the loss of anchor ``i`` is

        -log  exp(s_ii/t) / ( sum_j exp(s(a_i, b_j)/t) + sum_j w_ij exp(s(a_i, n_j)/t)
                               + sum_k exp(s(a_i, q_k)/t) )

    (notation of :class:`InfoNCE`): the queue adds ``K`` negatives to every anchor of the
    ``a -> b`` direction, the momentum-contrast term of MoCo (He et al. 2020, "Momentum
    Contrast for Unsupervised Visual Representation Learning"), ESimCSE (Wu et al. 2022,
    "ESimCSE: Enhanced Sample Building Method for Contrastive Learning of Unsupervised
    Sentence Embedding": queue of momentum-encoder embeddings of the positive view, 2.5x the
    batch, momentum 0.995) and MoCoSE (Cao et al. 2022, "Exploring the Impact of Negative
    Samples of Contrastive Learning: A Case Study of Sentence Embedding"). The queue is the
    same on every rank (the trainer enqueues the global batch), so it is not gathered.

    False-negative control (``fn_margin`` or ``fn_threshold``, see
    :func:`false_negative_mask`): a candidate flagged as a false negative of anchor ``i``
    (in-batch positives, hard negatives and queued keys alike; never the positive) gets the
    logit ``log(fn_weight)`` added: ``fn_weight = 0`` (default) masks it (logit ``-inf``), a
    weight in ``(0, 1)`` down-weights it. The similarities that decide are the model's own
    cosines, or (``guide=`` in :meth:`forward`) those of a frozen guide encoder over the same
    rows (GISTEmbed, Solatorio 2024, "GISTEmbed: Guided In-sample Selection of Training
    Negatives for Text Embedding Fine-tuning"). In the symmetric direction ``b -> a`` the
    same rule applies to the positives against the anchors.

    ``forward(z_a, z_b, z_neg=None, extra_negatives=None, guide=None)``: ``extra_negatives``
    is ``(K, D)`` (may be empty); ``guide`` is ``(g_a, g_b, g_neg, g_extra)``: the guide's
    embeddings of the same rows (``g_neg``/``g_extra`` ``None`` when absent). Without extras
    and false-negative control it equals :class:`InfoNCE`.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        hard_negative_weight: float = 0.0,
        dist: DistEnv | Any | None = None,
        *,
        fn_margin: float | None = None,
        fn_threshold: float | None = None,
        fn_weight: float = 0.0,
    ) -> None:
        super().__init__(temperature, symmetric, hard_negative_weight, dist)
        if fn_margin is not None and fn_threshold is not None:
            raise ValueError("fn_margin and fn_threshold exclude each other: give one")
        for name, value in (("fn_margin", fn_margin), ("fn_threshold", fn_threshold)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if not 0.0 <= fn_weight < 1.0:
            raise ValueError(f"fn_weight must be in [0, 1) (0: mask), got {fn_weight!r}")
        self.fn_margin = fn_margin
        self.fn_threshold = fn_threshold
        self.fn_weight = float(fn_weight)

    @property
    def filters_false_negatives(self) -> bool:
        return self.fn_margin is not None or self.fn_threshold is not None

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", fn_margin={self.fn_margin}, fn_threshold={self.fn_threshold}, "
            f"fn_weight={self.fn_weight}"
        )

    def _cos(self, queries: Tensor, candidates: Tensor) -> Tensor:
        with torch.autocast(device_type=queries.device.type, enabled=False):
            q = F.normalize(queries.float(), dim=-1)
            c = F.normalize(candidates.float(), dim=-1)
            return q @ c.T

    def _suppress(self, logits: Tensor, sims: Tensor, labels: Tensor) -> Tensor:
        mask = false_negative_mask(
            sims.detach(), labels, margin=self.fn_margin, threshold=self.fn_threshold
        )
        fill = -math.inf if self.fn_weight == 0.0 else math.log(self.fn_weight)
        return logits + torch.zeros_like(logits).masked_fill(mask, fill)

    def get_logits(
        self,
        z_a: Tensor,
        z_b: Tensor,
        z_neg: Tensor | None = None,
        extra_negatives: Tensor | None = None,
        guide: Sequence[Tensor | None] | None = None,
    ) -> ContrastiveLogits:
        self._check(z_a, z_b, z_neg)
        if extra_negatives is not None and (
            extra_negatives.dim() != 2
            or (extra_negatives.shape[0] > 0 and extra_negatives.shape[1] != z_a.shape[1])
        ):
            raise ValueError(
                f"extra_negatives must be (K, {z_a.shape[1]}), got {tuple(extra_negatives.shape)}"
            )
        if extra_negatives is not None and extra_negatives.shape[0] == 0:
            extra_negatives = None
        labels, sizes = self._layout(z_a)

        def candidates(b: Tensor, neg: Tensor | None, extra: Tensor | None) -> Tensor:
            parts = [gather_with_grad(b, self.dist, sizes)]
            if neg is not None:
                parts.append(gather_with_grad(neg, self.dist, sizes))
            if extra is not None:
                parts.append(extra.detach().to(b.dtype))
            return torch.cat(parts) if len(parts) > 1 else parts[0]

        cands = candidates(z_b, z_neg, extra_negatives)
        logits = self._with_hard_negative_bonus(self._scores(z_a, cands), labels, sizes, z_neg)
        back = None
        if self.symmetric:
            back = self._scores(z_b, gather_with_grad(z_a, self.dist, sizes))
        if self.filters_false_negatives:
            if guide is None:
                sims = self._cos(z_a, cands)
                back_sims = None if back is None else back.detach() * self.temperature
            else:
                g_a, g_b, g_neg, g_extra = _guide_parts(guide, z_neg, extra_negatives)
                with torch.no_grad():
                    sims = self._cos(g_a, candidates(g_b, g_neg, g_extra))
                    back_sims = (
                        None
                        if back is None
                        else self._cos(g_b, gather_with_grad(g_a, self.dist, sizes))
                    )
            logits = self._suppress(logits, sims, labels)
            if back is not None and back_sims is not None:
                back = self._suppress(back, back_sims, labels)
        return ContrastiveLogits(logits, labels, back)

    def forward(
        self,
        z_a: Tensor,
        z_b: Tensor,
        z_neg: Tensor | None = None,
        extra_negatives: Tensor | None = None,
        guide: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        out = self.get_logits(z_a, z_b, z_neg, extra_negatives, guide)
        # The candidates are N positives (+ N hard negatives) + K extras.
        extra = 0 if extra_negatives is None else extra_negatives.shape[0]
        return self._reduce(out, (out.logits.shape[1] - extra) // (1 if z_neg is None else 2))


def _guide_parts(
    guide: Sequence[Tensor | None], z_neg: Tensor | None, extra: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    if len(guide) != 4:
        raise ValueError("guide must be (g_a, g_b, g_neg, g_extra)")
    g_a, g_b, g_neg, g_extra = guide
    if g_a is None or g_b is None:
        raise ValueError("guide needs the guide embeddings of the anchors and positives")
    if (g_neg is None) != (z_neg is None):
        raise ValueError("guide: g_neg must be given exactly when z_neg is")
    if (g_extra is None or g_extra.shape[0] == 0) != (extra is None):
        raise ValueError("guide: g_extra must hold one row per extra negative")
    if extra is not None and g_extra is not None and g_extra.shape[0] != extra.shape[0]:
        raise ValueError(
            f"guide: g_extra has {g_extra.shape[0]} rows, extra_negatives {extra.shape[0]}"
        )
    return g_a, g_b, g_neg, g_extra
