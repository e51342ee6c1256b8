"""Contrastive training: :class:`TrainConfig` describes a run, :func:`train` runs it."""

from __future__ import annotations

from textcl.train.config import TrainConfig
from textcl.train.state import TrainerState
from textcl.train.trainer import (
    Evaluator,
    MetricEvaluator,
    Trainer,
    TrainResult,
    find_latest_checkpoint,
    sts_dev_evaluator,
    train,
)

__all__ = [
    "Evaluator",
    "MetricEvaluator",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerState",
    "find_latest_checkpoint",
    "sts_dev_evaluator",
    "train",
]
