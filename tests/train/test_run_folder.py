"""A run folder belongs to one run: lock, ownership, resume fingerprint, no pickle, the run
state (TrainerState) behind TrainResult, the evaluator's primary metric, and the bookkeeping
of the loop (batch planning, sentences/s, trackers)."""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import TINY_SENTENCES
from tests.train.test_trainer import corpus_file, fake_evaluator, make_config, read_log
from textcl.data.text import plan_epoch
from textcl.errors import CorruptFileError, FolderBusyError, FolderConflictError, InputError
from textcl.io import FolderLock
from textcl.train import Trainer, find_latest_checkpoint, train
from textcl.train.state import STATE_JSON, STATE_TENSORS, TrainerState, load_checkpoint_state
from textcl.train.trainer import MetricEvaluator

__all__ = ["corpus_file"]  # the fixture, re-used


def quick(model: Path, data: Path, out: Path, **kw: Any) -> Any:
    return make_config(model, data, out, **{"max_steps": 4, "eval_steps": 2, **kw})


# ---------------------------------------------------------------------- no pickle
class _Payload:
    """Unpickling this writes a file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def test_planted_pickle_is_refused_and_never_runs(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    marker = tmp_path / "payload-ran"
    ckpt = out / "checkpoints" / "step-00000003"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_bytes(pickle.dumps(_Payload(marker)))
    # The control: this file really is a payload when unpickled.
    pickle.loads((ckpt / "trainer_state.pt").read_bytes())
    assert marker.read_text() == "pwned"
    marker.unlink()
    cfg = quick(tiny_model_dir, corpus_file, out)
    for resume in (True, str(ckpt)):
        with pytest.raises(CorruptFileError, match=r"trainer_state\.pt.*old-format.*pickle"):
            Trainer(cfg, evaluator=fake_evaluator).train(resume=resume)
        assert not marker.exists()
    # A new run does not silently take over the folder either.
    with pytest.raises(FolderConflictError, match=r"--resume.*--overwrite"):
        Trainer(cfg, evaluator=fake_evaluator).train()
    assert not marker.exists()


def test_checkpoint_has_no_pickle_and_state_round_trips(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = train(quick(tiny_model_dir, corpus_file, out), evaluator=fake_evaluator)
    ckpt = find_latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step-00000004"
    names = {p.name for p in ckpt.iterdir()}
    assert {STATE_JSON, STATE_TENSORS, "model", "config.json"} <= names
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    payload = load_checkpoint_state(ckpt)
    state = TrainerState.from_dict(payload["state"], "x")
    # TrainResult and metrics.jsonl come from the same run state.
    assert result.state is not None and state.log_history == result.state.log_history
    assert read_log(out) == state.log_history
    assert state.step == result.steps == 4
    assert result.best_metrics is not None and result.best_metrics["step"] == state.best_step
    assert payload["optimizer"]["state"]  # the Adam moments made it through
    summary = json.loads((out / "results.json").read_text())
    assert summary["best"]["step"] == state.best_step
    assert summary["primary_metric"] == "stsb_dev_spearman"


@pytest.mark.parametrize("victim", [STATE_TENSORS, STATE_JSON, "model/model.safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_file_is_named(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path, victim: str, damage: str
) -> None:
    out = tmp_path / "run"
    cfg = quick(tiny_model_dir, corpus_file, out, eval_steps=-1, save_steps=2)
    train(cfg)
    ckpt = out / "checkpoints" / "step-00000004"
    path = ckpt / victim
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        i = len(data) - 10 if victim != STATE_JSON else data.index(b'"step": 4') + 9
        data[i] = data[i] ^ 0x01 if victim != STATE_JSON else ord("5")
        path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as info:
        Trainer(cfg).train(resume=ckpt)
    assert str(path) in str(info.value) or str(ckpt / STATE_JSON) in str(info.value)


# ---------------------------------------------------------------------- one owner per folder
def test_second_writer_fails_at_once(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    import subprocess

    out = tmp_path / "run"
    out.mkdir()
    # Another process holds the lock (as a running `textcl train` does).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from textcl.io import FolderLock; "
            f"FolderLock({str(out)!r}, 'training run').acquire(); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.perf_counter()
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
            Trainer(quick(tiny_model_dir, corpus_file, out), evaluator=fake_evaluator).train()
        assert time.perf_counter() - start < 5
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (kill -9): its lock went with it.
    train(quick(tiny_model_dir, corpus_file, out), evaluator=fake_evaluator)


def test_lock_held_during_the_run(tiny_model_dir: Path, corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    seen: list[bool] = []

    def probe(trainer: Trainer, step: int) -> None:
        import fcntl

        with open(out / ".textcl.lock") as fh:  # a second descriptor: flock conflicts
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append(False)
            except BlockingIOError:
                seen.append(True)

    Trainer(
        quick(tiny_model_dir, corpus_file, out), evaluator=fake_evaluator, step_callback=probe
    ).train()
    assert seen == [True] * 4
    with FolderLock(out, "x"):  # released afterwards
        pass


def test_new_run_refuses_foreign_checkpoints_overwrite_clears(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = train(quick(tiny_model_dir, corpus_file, out, max_steps=6), evaluator=fake_evaluator)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(FolderConflictError, match=r"--resume.*--overwrite"):
        train(quick(tiny_model_dir, corpus_file, out, lr=5e-4), evaluator=fake_evaluator)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # untouched
    second = train(
        quick(tiny_model_dir, corpus_file, out, max_steps=2, overwrite=True),
        evaluator=fake_evaluator,
    )
    assert first.steps == 6 and second.steps == 2
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert max(r["step"] for r in read_log(out)) == 2


def test_resume_refuses_changed_recipe_naming_fields(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train(quick(tiny_model_dir, corpus_file, out), evaluator=fake_evaluator)
    for change, fields in (
        ({"lr": 5e-4}, ["lr"]),
        ({"pooling": "mean", "temperature": 0.1}, ["pooling", "temperature"]),
        ({"view_b": "mask:0.2"}, ["view_b"]),
    ):
        with pytest.raises(FolderConflictError) as info:
            train(
                quick(tiny_model_dir, corpus_file, out, **change),
                evaluator=fake_evaluator,
                resume=True,
            )
        msg = str(info.value)
        for f in fields:
            assert f"{f}:" in msg
        assert "batch_size" not in msg
    # Other data with the same path: refused by its content.
    corpus_file.write_text("\n".join(TINY_SENTENCES) + "\n")
    with pytest.raises(FolderConflictError, match="data_sha256"):
        train(quick(tiny_model_dir, corpus_file, out), evaluator=fake_evaluator, resume=True)


def test_resume_may_extend_and_change_cadence(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train(quick(tiny_model_dir, corpus_file, out), evaluator=fake_evaluator)
    result = train(
        quick(tiny_model_dir, corpus_file, out, max_steps=6, eval_steps=3, logging_steps=2),
        resume=True,
        evaluator=fake_evaluator,
    )
    assert result.steps == 6


def test_changed_model_weights_refuse_resume(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "run"
    train(quick(model, corpus_file, out, eval_steps=-1))
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(FolderConflictError, match="model_weights_sha256"):
        train(quick(model, corpus_file, out, eval_steps=-1), resume=True)


def test_stale_tmp_removed_and_umask_followed(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    (out / "checkpoints" / ".step-00000002.tmp-abc" / "model").mkdir(parents=True)
    (out / ".results.json.tmp-xyz").write_text("half")
    old = os.umask(0o027)
    try:
        train(quick(tiny_model_dir, corpus_file, out), evaluator=fake_evaluator)
    finally:
        os.umask(old)
    assert not list(out.rglob(".*.tmp-*"))
    for name in ("results.json", "metrics.jsonl", "config.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name
    ckpt = out / "checkpoints" / "step-00000004"
    assert ckpt.stat().st_mode & 0o777 == 0o750
    assert (ckpt / STATE_JSON).stat().st_mode & 0o777 == 0o640


def test_save_limit_prunes_only_this_runs_oldest(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    kept: list[list[str]] = []

    def spy(trainer: Trainer, step: int) -> None:
        kept.append(sorted(p.name for p in (out / "checkpoints").glob("step-*")))

    cfg = make_config(
        tiny_model_dir,
        corpus_file,
        out,
        max_steps=5,
        eval_steps=-1,
        save_steps=1,
        save_total_limit=2,
    )
    Trainer(cfg, step_callback=spy).train()
    assert kept[-1] == ["step-00000003", "step-00000004"]
    assert kept[0] == ["step-00000001"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000004",
        "step-00000005",
    ]


# ---------------------------------------------------------------------- primary metric
def test_custom_evaluator_primary_metric_picks_best(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """No stsb_dev_spearman: best/ by the evaluator's own metric, lower is better."""
    calls: list[float] = []

    def val_loss(encoder: Any) -> dict[str, float]:
        value = [5.0, 2.0, 3.0][len(calls)]  # evaluation 2 (step 4) is the best
        calls.append(value)
        return {"val_loss": value}

    out = tmp_path / "run"
    ev = MetricEvaluator(val_loss, "val_loss", greater_is_better=False)
    result = train(quick(tiny_model_dir, corpus_file, out, max_steps=6), evaluator=ev)
    assert calls == [5.0, 2.0, 3.0]
    assert result.best_dir == out / "best" and (out / "best").is_dir()
    assert result.best_metrics is not None and result.best_metrics["step"] == 4
    assert result.state is not None and result.state.best_metric == 2.0
    assert [r["best"] for r in read_log(out) if r["event"] == "eval"] == [True, True, False]
    # Negative control: the same numbers with greater_is_better flips the choice.
    calls.clear()
    ev2 = MetricEvaluator(val_loss, "val_loss", greater_is_better=True)
    r2 = train(quick(tiny_model_dir, corpus_file, tmp_path / "r2", max_steps=6), evaluator=ev2)
    assert r2.best_metrics is not None and r2.best_metrics["step"] == 2


def test_plain_evaluator_without_primary_metric_fails_clearly(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=r"'stsb_dev_spearman'.*primary_metric"):
        train(
            quick(tiny_model_dir, corpus_file, tmp_path / "r"),
            evaluator=lambda enc: {"accuracy": 0.5},
        )


def test_nan_metric_is_never_best_and_json_stays_strict(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = train(
        quick(tiny_model_dir, corpus_file, out),
        evaluator=lambda enc: {"stsb_dev_spearman": math.nan},
    )
    assert result.best_dir is None
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
    json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))


# ---------------------------------------------------------------------- batches
def test_batch_larger_than_distinct_items_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text("\n".join(list(TINY_SENTENCES) * 3) + "\n")  # 48 lines, 16 distinct
    with pytest.raises(InputError, match=r"'batch_size': 20 is more than the 16 distinct"):
        Trainer(make_config(tiny_model_dir, data, tmp_path / "o", batch_size=20))
    Trainer(make_config(tiny_model_dir, data, tmp_path / "o", batch_size=16))  # control


def test_plan_epoch_drop_last_gives_only_full_batches() -> None:
    # Many duplicates: deferral leaves short batches in the tail (the torchrun failure).
    hashes = np.array([0, 1, 2, 3] * 6 + [4, 5, 6, 7, 8, 9, 0, 0, 0], dtype=np.uint64)
    found_short_mid = False
    for seed in range(40):
        loose = plan_epoch(hashes, 4, seed=seed, epoch=0)
        sizes = [len(b) for b in loose]
        if any(s < 4 for s in sizes[:-1]):
            found_short_mid = True  # the case the old drop_last let through
        tight = plan_epoch(hashes, 4, seed=seed, epoch=0, drop_last=True)
        assert tight and all(len(b) == 4 for b in tight), (seed, [len(b) for b in tight])
        for b in tight:
            assert len({int(hashes[i]) for i in b}) == 4
        assert [b for b in loose if len(b) == 4] == tight
    assert found_short_mid


# ---------------------------------------------------------------------- logging
def test_sentences_per_s_excludes_evaluation_time(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that jumps 1000 s during each evaluation: deterministic however loaded the
    # machine is (a real sleep races with slow training steps on a busy box).
    pause = 1000.0
    real = time.perf_counter
    skipped = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + skipped[0])

    def slow(encoder: Any) -> dict[str, float]:
        skipped[0] += pause
        return fake_evaluator(encoder)

    out = tmp_path / "run"
    cfg = make_config(
        tiny_model_dir,
        corpus_file,
        out,
        max_steps=8,
        eval_steps=2,
        logging_steps=4,
        save_steps=100,
    )
    start = time.perf_counter()
    train(cfg, evaluator=slow)
    wall = time.perf_counter() - start
    rates = [r["sentences_per_s"] for r in read_log(out) if r["event"] == "train"]
    # Each window of 4 steps (32 sentences) holds >= 1 evaluation of 1000 s: counted, the
    # rate would be below 32/1000 sentences/s; 4 tiny steps take far less than 1000 s.
    assert len(rates) == 2 and min(rates) > 32 / pause, rates
    assert wall > 4 * pause  # control: the evaluations did take their (clock) time


def test_report_to_wandb_logs_config_and_metrics(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged: list[tuple[dict[str, Any], int]] = []
    inits: list[dict[str, Any]] = []

    class Run:
        def log(self, values: dict[str, Any], step: int) -> None:
            logged.append((values, step))

        def finish(self) -> None:
            inits.append({"finished": True})

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: inits.append(kw) or Run()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    train(quick(tiny_model_dir, corpus_file, out, report_to="wandb"), evaluator=fake_evaluator)
    assert inits[0]["config"]["lr"] == 1e-3 and inits[0]["dir"] == str(out)
    assert inits[-1] == {"finished": True}
    steps = [s for v, s in logged if "train/loss" in v]
    assert steps == [1, 2, 3, 4]
    assert any("eval/stsb_dev_spearman" in v for v, _ in logged)


def test_report_to_missing_tracker_is_a_clear_error(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(InputError, match="wandb is not installed"):
        train(
            quick(tiny_model_dir, corpus_file, tmp_path / "a", report_to="wandb"),
            evaluator=fake_evaluator,
        )
    with pytest.raises(ValueError, match="'report_to'"):
        quick(tiny_model_dir, corpus_file, tmp_path / "b", report_to="mlflow")
    # none: no tb/ folder even where tensorboard is installed.
    train(quick(tiny_model_dir, corpus_file, tmp_path / "c", report_to="none", eval_steps=-1))
    assert not (tmp_path / "c" / "tb").exists()


def test_report_to_tensorboard_logs_hparams_and_scalars(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Any]] = []

    class Writer:
        def __init__(self, log_dir: str) -> None:
            calls.append(("init", log_dir))

        def add_text(self, tag: str, text: str, step: int) -> None:
            calls.append(("text", (tag, text)))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append(("scalar", (tag, step)))

        def close(self) -> None:
            calls.append(("close", None))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    out = tmp_path / "run"
    train(
        quick(tiny_model_dir, corpus_file, out, report_to="tensorboard"), evaluator=fake_evaluator
    )
    assert calls[0] == ("init", str(out / "tb")) and calls[-1] == ("close", None)
    texts = [v for k, v in calls if k == "text"]
    assert texts and texts[0][0] == "config" and '"lr": 0.001' in texts[0][1]
    scalars = [v for k, v in calls if k == "scalar"]
    assert ("train/loss", 4) in scalars and ("eval/stsb_dev_spearman", 2) in scalars
    assert not any(tag.endswith(("/best", "/scales", "/time")) for tag, _ in scalars)
    # Explicit tensorboard without it installed: a clear error, not a silent no-op.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(InputError, match="tensorboard is not installed"):
        train(
            quick(tiny_model_dir, corpus_file, tmp_path / "b", report_to="tensorboard"),
            evaluator=fake_evaluator,
        )


def test_crafted_state_file_list_cannot_point_outside(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """A crafted trainer_state.json (valid checksum recomputed by the crafter) naming a
    file outside its checkpoint is refused before anything is read there."""
    from textcl.io import write_json
    from textcl.train.state import _digest

    out = tmp_path / "run"
    cfg = quick(tiny_model_dir, corpus_file, out, eval_steps=-1)
    train(cfg)
    ckpt = out / "checkpoints" / "step-00000004"
    data = json.loads((ckpt / STATE_JSON).read_text())
    for rel in ("../../../outside.txt", str(tmp_path / "abs.txt")):
        body = {k: v for k, v in data.items() if k != "sha256"}
        body["files"] = {**data["files"], rel: "0" * 64}
        write_json(ckpt / STATE_JSON, {**body, "sha256": _digest(body)})
        with pytest.raises(CorruptFileError, match="points outside the checkpoint"):
            Trainer(cfg).train(resume=True)
