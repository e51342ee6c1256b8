"""Trainer callbacks: the order of the hooks, and steering a run through the control."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.train.test_trainer import corpus_file, fake_evaluator, make_config, read_log
from textcl.train import Trainer, TrainerCallback, TrainerControl, find_latest_checkpoint
from textcl.train.callbacks import RunInfo, scalars
from textcl.train.state import TrainerState

__all__ = ["corpus_file"]  # the fixture, shared with test_trainer


class Recorder(TrainerCallback):
    """Records each hook as ``(hook, step, detail)``; ``steer(hook, step, control)``
    may set flags."""

    def __init__(self, steer: Any = None) -> None:
        self.calls: list[tuple[str, int, Any]] = []
        self.steer = steer

    def _note(
        self,
        hook: str,
        run: RunInfo,
        state: TrainerState,
        control: TrainerControl,
        detail: Any = None,
    ) -> None:
        self.calls.append((hook, state.step, detail))
        if self.steer is not None:
            self.steer(hook, state.step, control)

    def on_train_begin(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        self._note("begin", run, state, control)

    def on_step_end(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        ckpts = sorted(p.name for p in (run.output_dir / "checkpoints").glob("step-*"))
        self._note("step", run, state, control, ckpts[-1] if ckpts else None)

    def on_log(
        self, run: RunInfo, state: TrainerState, control: TrainerControl, record: Any
    ) -> None:
        self._note("log", run, state, control, record["event"])

    def on_evaluate(
        self, run: RunInfo, state: TrainerState, control: TrainerControl, metrics: Any
    ) -> None:
        self._note("evaluate", run, state, control, "stsb_dev_spearman" in metrics)

    def on_save(
        self, run: RunInfo, state: TrainerState, control: TrainerControl, checkpoint: Any
    ) -> None:
        self._note("save", run, state, control, checkpoint.name if checkpoint else None)

    def on_train_end(self, run: RunInfo, state: TrainerState, control: TrainerControl) -> None:
        self._note("end", run, state, control)


def events(out: Path) -> list[tuple[str, int]]:
    return [(r["event"], r["step"]) for r in read_log(out)]


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step-*"))


def test_hooks_run_in_order(tiny_model_dir: Path, corpus_file: Path, tmp_path: Path) -> None:
    """Step end (before the step's checkpoint), log, evaluate, save; the end of the run."""
    rec = Recorder()
    cfg = make_config(
        tiny_model_dir, corpus_file, tmp_path / "run", max_steps=4, eval_steps=2, logging_steps=2
    )
    Trainer(cfg, evaluator=fake_evaluator, callbacks=[rec]).train()
    assert rec.calls == [
        ("begin", 0, None),
        ("step", 1, None),
        ("step", 2, None),  # before the checkpoint of step 2
        ("log", 2, "train"),
        ("log", 2, "eval"),
        ("evaluate", 2, True),
        ("save", 2, "step-00000002"),
        ("step", 3, "step-00000002"),
        ("step", 4, "step-00000002"),
        ("log", 4, "train"),
        ("log", 4, "eval"),  # the final evaluation and checkpoint
        ("evaluate", 4, True),
        ("save", 4, "step-00000004"),
        ("end", 4, None),
    ]


def test_should_stop_ends_the_run_as_max_steps_would(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """Stopped after step 3 of 6: logged, evaluated, saved like a run of max_steps=3."""

    def stop(hook: str, step: int, control: TrainerControl) -> None:
        if hook == "step" and step == 3:
            control.should_stop = True

    stopped, short = tmp_path / "stopped", tmp_path / "short"
    rec = Recorder(stop)
    cfg = make_config(tiny_model_dir, corpus_file, stopped, max_steps=6, eval_steps=2)
    result = Trainer(cfg, evaluator=fake_evaluator, callbacks=[rec]).train()
    train_short = make_config(tiny_model_dir, corpus_file, short, max_steps=3, eval_steps=2)
    Trainer(train_short, evaluator=fake_evaluator).train()
    assert result.steps == 3 and rec.calls[-1] == ("end", 3, None)
    assert events(stopped) == events(short)
    assert ("eval", 3) in events(stopped)  # the final evaluation
    assert checkpoints(stopped) == checkpoints(short) == ["step-00000002", "step-00000003"]
    assert (stopped / "final").is_dir()
    assert json.loads((stopped / "results.json").read_text())["steps"] == 3
    # A stopped run resumes towards max_steps.
    assert Trainer(cfg, evaluator=fake_evaluator).train(resume=True).steps == 6


def test_should_stop_after_an_evaluation_does_not_repeat_it(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    def stop(hook: str, step: int, control: TrainerControl) -> None:
        if hook == "evaluate" and step == 2:
            control.should_stop = True

    out = tmp_path / "run"
    cfg = make_config(tiny_model_dir, corpus_file, out, max_steps=6, eval_steps=2)
    result = Trainer(cfg, evaluator=fake_evaluator, callbacks=[Recorder(stop)]).train()
    assert result.steps == 2 and result.final_metrics is not None
    assert events(out) == [("train", 1), ("train", 2), ("eval", 2)]
    assert checkpoints(out) == ["step-00000002"]
    assert (out / "final").is_dir()


def test_should_save_forces_a_checkpoint(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    def save(hook: str, step: int, control: TrainerControl) -> None:
        if hook == "step" and step == 2:
            control.should_save = True

    out = tmp_path / "run"
    cfg = make_config(tiny_model_dir, corpus_file, out, max_steps=4, eval_steps=-1)
    Trainer(cfg, evaluator=fake_evaluator, callbacks=[Recorder(save)]).train()
    assert checkpoints(out) == ["step-00000002", "step-00000004"]
    assert find_latest_checkpoint(out).name == "step-00000004"  # type: ignore[union-attr]


def test_should_evaluate_forces_an_evaluation(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    def evaluate(hook: str, step: int, control: TrainerControl) -> None:
        if hook == "step" and step == 1:
            control.should_evaluate = True

    out = tmp_path / "run"
    cfg = make_config(tiny_model_dir, corpus_file, out, max_steps=3, eval_steps=0)
    Trainer(cfg, evaluator=fake_evaluator, callbacks=[Recorder(evaluate)]).train()
    assert [s for e, s in events(out) if e == "eval"] == [1, 3]  # forced, final


def test_trackers_share_one_key_filter() -> None:
    record = {
        "event": "eval",
        "step": 4,
        "epoch": 0,
        "time": 1.5,
        "best": True,
        "stsb_dev_spearman": 70.0,
        "primary_metric": "stsb_dev_spearman",
        "scales": {"stsb_dev_spearman": 100.0},
        "elapsed_s": 2.0,
    }
    assert scalars(record) == {
        "eval/epoch": 0,
        "eval/stsb_dev_spearman": 70.0,
        "eval/elapsed_s": 2.0,
    }


def test_partial_callback_objects_work(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """Any object with some of the hooks is a callback (the others are skipped)."""
    seen: list[int] = []

    class OnlyStep:
        def on_step_end(self, run: Any, state: TrainerState, control: Any) -> None:
            seen.append(state.step)

    cfg = make_config(tiny_model_dir, corpus_file, tmp_path / "run", max_steps=2, eval_steps=-1)
    Trainer(cfg, evaluator=fake_evaluator, callbacks=[OnlyStep()]).train()
    assert seen == [1, 2]
