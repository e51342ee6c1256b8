"""Matryoshka representation learning (Kusupati et al. 2022, "Matryoshka Representation
Learning", NeurIPS, arXiv:2205.13147; sentence-transformers' ``MatryoshkaLoss``).

The contrastive loss is applied to nested prefixes of the embedding, so that its first
``d_k`` dimensions are a good embedding on their own (``encode(truncate_dim=d_k)``,
``textcl search --truncate-dim d_k``):

    L = sum_k w_k * loss(z_0[:, :d_k], z_1[:, :d_k], ...)

Each prefix is scored by the wrapped loss itself; :class:`textcl.losses.InfoNCE` uses the
cosine similarity, so every prefix is normalised on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

MATRYOSHKA_DIMS_BERT_BASE: tuple[int, ...] = (768, 512, 256, 128, 64)
"""sentence-transformers' example dimensions for a 768-d encoder."""


def check_matryoshka(
    dims: Sequence[int], weights: Sequence[float] | None = None
) -> tuple[list[int], list[float]]:
    """Validated ``(dims, weights)``: distinct positive integer dims, one finite positive
    weight per dim (default 1 each). Raises ``ValueError`` naming the bad value."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or not dims:
        raise ValueError(f"matryoshka_dims must be a non-empty list of integers, got {dims!r}")
    out_dims: list[int] = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"matryoshka_dims: {d!r} is not a positive integer (in {list(dims)})")
        out_dims.append(int(d))
    if len(set(out_dims)) != len(out_dims):
        raise ValueError(f"matryoshka_dims must be distinct, got {out_dims}")
    if weights is None:
        return out_dims, [1.0] * len(out_dims)
    if len(weights) != len(out_dims):
        raise ValueError(
            f"matryoshka_weights has {len(weights)} value(s) but matryoshka_dims has "
            f"{len(out_dims)}: give one weight per dimension"
        )
    out_w: list[float] = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"matryoshka_weights: {w!r} is not a finite positive number")
        out_w.append(float(w))
    return out_dims, out_w


class MatryoshkaLoss(nn.Module):
    """Wrap a loss over embeddings so that it is summed over nested prefixes.

    ``MatryoshkaLoss(InfoNCE(...), [768, 512, 256, 128, 64])`` is called like the wrapped
    loss, ``loss(z_a, z_b(, z_neg))`` with ``(B, D)`` tensors, and returns
    ``sum_k w_k * loss(z_a[:, :d_k], z_b[:, :d_k], ...)``. It works inside the plain step
    (:class:`textcl.objective.LossStep`) and the gradient cache
    (:class:`textcl.gradcache.CachedLoss`), which both call the loss on full embeddings;
    dims larger than ``D`` raise ``ValueError``.

    Args:
        loss: any callable of embeddings returning a scalar (e.g. ``InfoNCE``).
        dims: prefix sizes ``d_k`` (ST: ``matryoshka_dims``).
        weights: ``w_k`` (default 1 each; ST: ``matryoshka_weights``).
    """

    def __init__(
        self,
        loss: Callable[..., Tensor],
        dims: Sequence[int],
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.loss = loss
        self.dims, self.weights = check_matryoshka(dims, weights)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}"

    def forward(self, *reps: Tensor) -> Tensor:
        if not reps:
            raise ValueError("MatryoshkaLoss needs at least one embedding tensor")
        width = reps[0].shape[-1]
        too_big = [d for d in self.dims if d > width]
        if too_big:
            raise ValueError(
                f"matryoshka_dims {too_big} exceed the embedding size {width}; use dims <= {width}"
            )
        total: Tensor | None = None
        for d, w in zip(self.dims, self.weights, strict=True):
            part = w * self.loss(*(z[..., :d] for z in reps))
            total = part if total is None else total + part
        assert total is not None
        return total
