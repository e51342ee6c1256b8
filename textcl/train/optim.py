"""Optimizer and learning-rate schedule of a run: AdamW with decay / no-decay parameter
groups, linear warm-up then linear decay to 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: weight decay on matrices, none on biases and
    norms (1-d parameters or names holding ``norm``)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def can_fuse(params: Sequence[torch.nn.Parameter], device: torch.device) -> bool:
    """Fused AdamW: CPU and CUDA, floating-point parameters on one device type."""
    return device.type in ("cpu", "cuda") and all(
        p.is_floating_point() and p.device.type == device.type for p in params
    )


def make_optimizer(
    module: torch.nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of ``module``."""
    groups = param_groups(module, weight_decay)
    params = [p for g in groups for p in g["params"]]
    return torch.optim.AdamW(
        groups,
        lr=lr,
        # One fused kernel over all parameters instead of a Python loop of ~10 small ops
        # per tensor (torch's default on CPU): same update, ~8x faster optimizer step.
        fused=can_fuse(params, device),
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of ``total`` steps, then linear decay to 0."""
    warmup = int(total * warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
