"""Trainer callbacks: code that watches a run and steers it through a control object.

A callback implements any of the :class:`TrainerCallback` hooks (the others default to
no-ops). Every hook gets the run (:class:`RunInfo`: config, folder, rank, the trainer), the
run state (:class:`~textcl.train.state.TrainerState`: step, epoch, log history, best
metric) and the :class:`TrainerControl`, whose flags a hook may set to steer the run (after
transformers' ``TrainerCallback`` / ``TrainerControl``).

Order of the hooks in a run (the trainer's loop, :meth:`textcl.train.Trainer.train`):

* ``on_train_begin`` once, after setup (and a resume), before the first step;
* per optimizer step: ``on_step_end`` (the flags hold this step's cadence from the config:
  ``logging_steps``, ``eval_steps``, ``save_steps``; a hook may change them), then
  ``on_log`` with the train record (``should_log``), ``on_evaluate`` after an evaluation
  (``should_evaluate``), ``on_save`` after a checkpoint (``should_save``), then the
  trainer's plain ``step_callback(trainer, step)`` if given; the run ends after the step
  when ``should_stop`` is set (by any hook of the step). The last step is always logged;
  its evaluation and checkpoint are the final ones;
* at the end (``max_steps``/``epochs`` reached, or ``should_stop``): the final evaluation
  (``on_log``, ``on_evaluate``), ``final/``, the last checkpoint (``on_save``) and
  ``results.json``, then ``on_train_end`` (also when the run fails: close what you opened).

``on_log`` also sees every evaluation record (``event`` ``eval``). Reporting is callbacks
too: :class:`MetricsJsonl` (``OUTPUT_DIR/metrics.jsonl``), :class:`TensorBoardCallback` and
:class:`WandbCallback` (``report_to``), on rank 0 only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from textcl.errors import InputError
from textcl.io import atomic_write_text, dumps_json
from textcl.train.config import TrainConfig
from textcl.train.run_folder import METRICS_FILE, TENSORBOARD_DIR
from textcl.train.state import TrainerState


@dataclass
class TrainerControl:
    """What the trainer does next; callbacks set these flags (each step starts from the
    config's cadence; ``should_stop`` stays set once set). Under torchrun every rank must
    set the same flags: evaluation, checkpoints and the end of the run are collective."""

    should_log: bool = False
    """Log this step's train record (``metrics.jsonl``, trackers)."""
    should_evaluate: bool = False
    """Evaluate after this step."""
    should_save: bool = False
    """Write a checkpoint after this step."""
    should_stop: bool = False
    """End the run after this step, as if ``max_steps`` ended there: final evaluation,
    ``final/``, last checkpoint, ``results.json`` (the step's own evaluation and checkpoint
    are not repeated). A stopped run resumes (``resume``) towards ``max_steps``."""


@dataclass(frozen=True)
class RunInfo:
    """The run a callback watches: its config, folder and process (read-only)."""

    config: TrainConfig
    output_dir: Path
    is_main: bool
    """Rank 0 (the process that writes the run folder)."""
    trainer: Any
    """The :class:`~textcl.train.Trainer` (its encoder, optimizer...): read it, steer the
    run through the control (typed loosely: the trainer imports this module)."""


class TrainerCallback(Protocol):
    """Hooks of a training run. Subclass it (every hook defaults to a no-op) or give any
    object with some of the hooks: the trainer calls those it has."""

    def on_train_begin(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        """After setup (and a resume), before the first step."""
        return None

    def on_step_end(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        """After an optimizer step (``state.step`` counts it), before its logging,
        evaluation and checkpoint, which ``control`` decides."""
        return None

    def on_log(
        self,
        run: RunInfo,
        state: TrainerState,
        control: TrainerControl,
        record: Mapping[str, Any],
    ) -> None:
        """A record was added to the log history (``event``: ``train`` or ``eval``)."""
        return None

    def on_evaluate(
        self,
        run: RunInfo,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, float],
    ) -> None:
        """After an evaluation (``state.best_step`` says whether it was the best)."""
        return None

    def on_save(
        self, run: RunInfo, state: TrainerState, control: TrainerControl, checkpoint: Path | None
    ) -> None:
        """After a checkpoint was written (``checkpoint`` is None on ranks other than 0)."""
        return None

    def on_train_end(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        """The run ended (normally, stopped, or by an exception)."""
        return None


class CallbackList:
    """Calls a hook on each callback in order (a hook a callback lacks is skipped)."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.callbacks = list(callbacks)

    def call(
        self, hook: str, run: RunInfo, state: TrainerState, control: TrainerControl, *args: Any
    ) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(run, state, control, *args)


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a log record for a tracker, as ``<event>/<key>`` (bookkeeping keys,
    flags and non-numbers left out): the one key filter of every tracker."""
    return {
        f"{record['event']}/{k}": v
        for k, v in record.items()
        if k not in ("step", "event", "time", "best")
        and isinstance(v, int | float)
        and not isinstance(v, bool)
    }


class MetricsJsonl(TrainerCallback):
    """``OUTPUT_DIR/metrics.jsonl``: one JSON object per log record. At the start it is
    rewritten from the run state (a resume drops the records of an interrupted run past
    its checkpoint; a damaged log is replaced)."""

    def on_train_begin(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        atomic_write_text(
            run.output_dir / METRICS_FILE,
            "".join(dumps_json(r, indent=None) + "\n" for r in state.log_history),
        )

    def on_log(
        self,
        run: RunInfo,
        state: TrainerState,
        control: TrainerControl,
        record: Mapping[str, Any],
    ) -> None:
        with open(run.output_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(dumps_json(record, indent=None) + "\n")


class TensorBoardCallback(TrainerCallback):
    """Scalars under ``OUTPUT_DIR/tb``; the config as hyper-parameters (text).
    ``required=False`` (``report_to=auto``): a missing tensorboard is no error."""

    def __init__(self, required: bool = True) -> None:
        self.required = required
        self.writer: Any = None

    def on_train_begin(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if self.required:
                raise InputError(
                    "config field 'report_to': tensorboard is not installed "
                    "(pip install tensorboard) or use --report-to none"
                ) from None
            return
        self.writer = SummaryWriter(log_dir=str(run.output_dir / TENSORBOARD_DIR))
        self.writer.add_text("config", "```\n" + dumps_json(run.config.to_dict()) + "```", 0)

    def on_log(
        self,
        run: RunInfo,
        state: TrainerState,
        control: TrainerControl,
        record: Mapping[str, Any],
    ) -> None:
        if self.writer is not None:
            for tag, value in scalars(record).items():
                self.writer.add_scalar(tag, value, record["step"])

    def on_train_end(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbCallback(TrainerCallback):
    """Weights & Biases (optional; offline runs follow ``WANDB_MODE``)."""

    def __init__(self) -> None:
        self.run: Any = None

    def on_train_begin(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        try:
            import wandb
        except ImportError:
            raise InputError(
                "config field 'report_to': wandb is not installed (pip install wandb) or use "
                "--report-to none"
            ) from None
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "textcl"),
            name=run.output_dir.name,
            dir=str(run.output_dir),
            config=run.config.to_dict(),
        )

    def on_log(
        self,
        run: RunInfo,
        state: TrainerState,
        control: TrainerControl,
        record: Mapping[str, Any],
    ) -> None:
        if self.run is not None:
            self.run.log(scalars(record), step=int(record["step"]))

    def on_train_end(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def reporting_callbacks(config: TrainConfig, is_main: bool) -> Sequence[TrainerCallback]:
    """``metrics.jsonl`` and the tracker of ``report_to``, on rank 0 (none elsewhere)."""
    if not is_main:
        return []
    callbacks: list[TrainerCallback] = [MetricsJsonl()]
    if config.report_to in ("auto", "tensorboard"):
        callbacks.append(TensorBoardCallback(required=config.report_to == "tensorboard"))
    elif config.report_to == "wandb":
        callbacks.append(WandbCallback())
    return callbacks
