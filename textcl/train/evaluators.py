"""Evaluators: what scores an encoder during training and which metric picks ``best/``.

An evaluator maps a :class:`~textcl.encoder.SentenceEncoder` to metrics and declares its
primary metric (:class:`Evaluator`); :class:`MetricEvaluator` wraps a plain callable,
:func:`sts_dev_evaluator` is the default (the SimCSE protocol: STS-B dev Spearman).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from textcl.encoder import SentenceEncoder
from textcl.errors import InputError
from textcl.evaluation import evaluate_sts
from textcl.evaluation.alignment import alignment_uniformity
from textcl.evaluation.data import load_sts_task

BEST_METRIC = "stsb_dev_spearman"
"""The primary metric of :func:`sts_dev_evaluator` (and of plain-callable evaluators)."""


@runtime_checkable
class Evaluator(Protocol):
    """Maps an encoder to metrics, e.g. ``{"stsb_dev_spearman": 76.1, "alignment": ...}``,
    and declares which metric picks the best checkpoint.

    A plain callable ``encoder -> metrics`` works too: its primary metric is
    :data:`BEST_METRIC` (greater is better), and it must return it.
    """

    primary_metric: str
    greater_is_better: bool

    def __call__(self, encoder: SentenceEncoder) -> Mapping[str, float]: ...


EvaluatorLike = Evaluator | Callable[[SentenceEncoder], Mapping[str, float]]


class MetricEvaluator:
    """Wrap a plain ``encoder -> metrics`` callable with its primary metric and direction.

    ``MetricEvaluator(my_eval, "val_loss", greater_is_better=False)``; ``scales`` says
    how each stored value is scaled (e.g. ``{"stsb_dev_spearman": 100}``: ×100);
    ``check`` (optional) tells before training whether the evaluation can run.
    """

    def __init__(
        self,
        fn: Callable[[SentenceEncoder], Mapping[str, float]],
        primary_metric: str,
        greater_is_better: bool = True,
        scales: Mapping[str, float] | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.fn = fn
        self.primary_metric = primary_metric
        self.greater_is_better = greater_is_better
        self.scales = dict(scales or {})
        self.check = check
        """Called before training (when the run evaluates): raises when the evaluation
        could not run (e.g. its data is missing), so the run fails before its first step."""

    def __call__(self, encoder: SentenceEncoder) -> Mapping[str, float]:
        return self.fn(encoder)


def sts_dev_evaluator(data_dir: str | None = None, batch_size: int = 128) -> MetricEvaluator:
    """The SimCSE protocol's evaluator: STS-B dev Spearman (x100, cosine, ``all``), plus
    alignment and uniformity (Wang & Isola 2020) on STS-B dev. Primary metric:
    ``stsb_dev_spearman`` (greater is better)."""

    def evaluate(encoder: SentenceEncoder) -> dict[str, float]:

        cache: dict[str, np.ndarray] = {}

        def embed(texts: list[str]) -> np.ndarray:
            """Both metrics read STS-B dev: encode each sentence once for both."""
            new = [t for t in dict.fromkeys(texts) if t not in cache]
            if new:
                vectors = encoder.encode(new, batch_size=batch_size, output="numpy")
                cache.update(zip(new, np.asarray(vectors), strict=True))
            return np.stack([cache[t] for t in texts])

        result = evaluate_sts(
            embed, tasks=("stsb",), split="dev", data_dir=data_dir, batch_size=batch_size
        )
        metrics = {BEST_METRIC: float(result["tasks"]["stsb"]["spearman"])}
        au = alignment_uniformity(embed, data_dir=data_dir, batch_size=batch_size)
        metrics.update({k: float(v) for k, v in au.items()})
        return metrics

    def check() -> None:
        """STS-B dev (both metrics read it) loads: else the run fails before training."""

        load_sts_task("stsb", "dev", data_dir)

    return MetricEvaluator(
        evaluate, BEST_METRIC, greater_is_better=True, scales={BEST_METRIC: 100.0}, check=check
    )


def check_evaluator(evaluator: EvaluatorLike) -> None:
    """Run ``evaluator``'s ``check`` (if it has one): an :class:`~textcl.errors.InputError`
    naming what is missing when the evaluation cannot run."""
    check = getattr(evaluator, "check", None)
    if not callable(check):
        return
    try:
        check()
    except (OSError, ValueError) as e:
        raise InputError(
            f"the evaluation (every eval_steps and at the end of the run) cannot run: {e}. "
            "Give the STS data (--data-dir, or $TEXTCL_DATA), or train without evaluation "
            "(--eval-steps -1)"
        ) from e


def primary_metric(evaluator: EvaluatorLike) -> tuple[str, bool]:
    """``(primary metric, greater is better)`` of ``evaluator`` (a plain callable's:
    :data:`BEST_METRIC`, greater is better)."""
    return (
        getattr(evaluator, "primary_metric", BEST_METRIC),
        bool(getattr(evaluator, "greater_is_better", True)),
    )


def metric_scales(evaluator: EvaluatorLike) -> dict[str, float]:
    """How each of ``evaluator``'s stored values is scaled (none declared: empty)."""
    return dict(getattr(evaluator, "scales", {}) or {})
