"""Contrastive training: :class:`TrainConfig` describes a run, :func:`train` runs it."""

from __future__ import annotations

from textcl.train.config import TrainConfig
from textcl.train.trainer import (
    Trainer,
    TrainResult,
    find_latest_checkpoint,
    sts_dev_evaluator,
    train,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "find_latest_checkpoint",
    "sts_dev_evaluator",
    "train",
]
