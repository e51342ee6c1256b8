"""What a finished run produced, read from its run state: :class:`TrainResult` and the
``results.json`` summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textcl.train.config import TrainConfig
from textcl.train.state import TrainerState


@dataclass
class TrainResult:
    """What a finished run produced (from its :class:`TrainerState`)."""

    output_dir: Path
    steps: int
    final_dir: Path
    best_dir: Path | None
    best_metrics: dict[str, float] | None
    final_metrics: dict[str, float] | None
    start_metrics: dict[str, float] | None = None
    """Metrics of the starting model (with ``eval_at_start``)."""
    state: TrainerState | None = None
    """The run state the result was read from."""


def _numbers(record: Mapping[str, Any] | None) -> dict[str, float] | None:
    if record is None:
        return None
    return {
        k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def run_summary(state: TrainerState, final_metrics: Mapping[str, float] | None) -> dict[str, Any]:
    """``results.json``: the run's outcome, from the run state (its primary metric is
    ``state.best_metric_name``)."""
    return {
        "steps": state.step,
        "elapsed_s": round(state.elapsed_s, 3),
        "primary_metric": state.best_metric_name,
        "greater_is_better": state.greater_is_better,
        "best": {
            "step": state.best_step,
            state.best_metric_name: state.best_metric,
            "metrics": _numbers(state.best_record()),
        },
        "final": dict(final_metrics) if final_metrics is not None else None,
    }


def train_result(
    output_dir: Path, state: TrainerState, final_metrics: Mapping[str, float] | None = None
) -> TrainResult:
    """The :class:`TrainResult` of a run state."""
    best_dir = output_dir / "best" if state.best_step is not None else None
    return TrainResult(
        output_dir=output_dir,
        steps=state.step,
        final_dir=output_dir / "final",
        best_dir=best_dir,
        best_metrics=_numbers(state.best_record()) if best_dir is not None else None,
        final_metrics=dict(final_metrics) if final_metrics is not None else None,
        start_metrics=_numbers(state.eval_record(0)),
        state=state,
    )


def card_facts(
    cfg: TrainConfig, steps: int, data: Any, best_stsb_dev: float | None, best_step: int | None
) -> dict[str, Any]:
    """The run facts the model card of ``best/`` and ``final/`` shows
    (:mod:`textcl.model_card`): recipe, data, steps and the best STS-B dev score (None when
    the run's primary metric is another)."""
    try:
        size: int | None = len(data)
    except TypeError:  # a stream has no length
        size = None
    return {
        "base_model": cfg.model,
        "objective": cfg.objective,
        "views": cfg.view_a if cfg.view_a == cfg.view_b else f"{cfg.view_a} / {cfg.view_b}",
        "temperature": cfg.temperature,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.lr,
        "steps": steps,
        "data": cfg.train_file,
        "data_size": size,
        "best_stsb_dev": best_stsb_dev,
        "best_step": best_step,
        **(
            {"prompt_templates": cfg.resolved_prompt_templates()} if cfg.pooling == "prompt" else {}
        ),
        **({"matryoshka_dims": cfg.matryoshka_dims} if cfg.matryoshka_dims else {}),
    }
