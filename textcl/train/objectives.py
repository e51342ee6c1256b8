"""The training objective of a run, as its config asks: InfoNCE (over Matryoshka prefixes),
one step plain or through the gradient cache; with a momentum queue or false-negative
control, an :class:`~textcl.losses.ExtendedInfoNCE` run by a
:class:`~textcl.momentum.MomentumContrast`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from textcl.distributed import DistEnv
from textcl.encoder import SentenceEncoder
from textcl.errors import InputError
from textcl.gradcache import CachedLoss
from textcl.losses import ExtendedInfoNCE, InfoNCE
from textcl.matryoshka import MatryoshkaLoss
from textcl.momentum import GuideEncoder, MomentumContrast
from textcl.objective import LossStep
from textcl.train.config import TrainConfig


def uses_extended_loss(cfg: TrainConfig) -> bool:
    """Momentum queue or false-negative control asked for."""
    return bool(cfg.queue_size) or cfg.fn_margin is not None or cfg.fn_threshold is not None


def build_objective(
    cfg: TrainConfig, encoder: SentenceEncoder, env: DistEnv, device: torch.device
) -> tuple[Any, LossStep]:
    """``(loss, objective)`` of a run: the loss function and the step that runs it."""
    loss_fn: Any = InfoNCE(
        temperature=cfg.temperature,
        symmetric=cfg.symmetric,
        hard_negative_weight=cfg.hard_negative_weight,
        dist=env,
    )
    step_loss = _matryoshka(cfg, encoder, loss_fn)
    objective: LossStep = LossStep(step_loss)
    if cfg.grad_cache_chunk is not None:
        objective = CachedLoss(step_loss, cfg.grad_cache_chunk)
    if uses_extended_loss(cfg):
        return _negatives(cfg, encoder, env, device)
    return loss_fn, objective


def _negatives(
    cfg: TrainConfig, encoder: SentenceEncoder, env: DistEnv, device: torch.device
) -> tuple[Any, Any]:
    """Momentum queue and/or false-negative control (issue 17): an ExtendedInfoNCE run
    by a MomentumContrast objective (plain or gradient cache)."""

    loss_fn = ExtendedInfoNCE(
        temperature=cfg.temperature,
        symmetric=cfg.symmetric,
        hard_negative_weight=cfg.hard_negative_weight,
        dist=env,
        fn_margin=cfg.fn_margin,
        fn_threshold=cfg.fn_threshold,
    )
    guide = None
    if cfg.guide_model is not None:
        if not Path(cfg.guide_model).is_dir():
            raise InputError(f"config field 'guide_model': {cfg.guide_model} is not a model folder")
        guide = GuideEncoder.load(cfg.guide_model, encoder.tokenizer, cfg.max_length, device)
    objective = MomentumContrast(
        loss_fn,
        queue_size=cfg.queue_size,
        momentum=cfg.momentum,
        online=encoder,
        chunk_size=cfg.grad_cache_chunk,
        guide=guide,
        dist=env,
    )
    return loss_fn, objective


def _matryoshka(cfg: TrainConfig, encoder: SentenceEncoder, loss: Any) -> Any:
    """``loss`` summed over the ``matryoshka_dims`` prefixes (as configured)."""
    if not cfg.matryoshka_dims:
        return loss

    width = encoder.full_embedding_dim
    if max(cfg.matryoshka_dims) > width:
        raise ValueError(
            f"config field 'matryoshka_dims': {cfg.matryoshka_dims} exceed the embedding "
            f"size {width} of {cfg.model}"
        )
    return MatryoshkaLoss(loss, cfg.matryoshka_dims, cfg.matryoshka_weights)
