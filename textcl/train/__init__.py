"""Contrastive training: :class:`TrainConfig` describes a run, :func:`train` runs it."""

from __future__ import annotations

from textcl.train.callbacks import (
    MetricsJsonl,
    RunInfo,
    TensorBoardCallback,
    TrainerCallback,
    TrainerControl,
    WandbCallback,
)
from textcl.train.checkpoints import find_latest_checkpoint
from textcl.train.config import TrainConfig
from textcl.train.evaluators import Evaluator, MetricEvaluator, sts_dev_evaluator
from textcl.train.state import TrainerState
from textcl.train.trainer import Trainer, TrainResult, train

__all__ = [
    "Evaluator",
    "MetricEvaluator",
    "MetricsJsonl",
    "RunInfo",
    "TensorBoardCallback",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "WandbCallback",
    "find_latest_checkpoint",
    "sts_dev_evaluator",
    "train",
]
