"""Misuse of ``textcl train`` (issue 25): every case through ``textcl.cli.main`` in-process
(the Python API where the CLI cannot reach the fault), with the exit code, a message
fragment naming the file, field or flag, and sha256 of the old run / model folder before
and after (nothing lost).

Cases: ``--overwrite`` with a bad model, model inside the run, bad field, failing run and
``kill -9`` in between (1); outputs sharing a path with an input (2); operational flags in a
config file (3); evaluation data missing (4); conflicting flags, strict config types and
ranges (5); a resume from another run's checkpoint or past ``max_steps`` (6); a full disk
while writing a checkpoint (7).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TINY_SENTENCES
from textcl.cli import main
from textcl.encoder import SentenceEncoder
from textcl.errors import EXIT_CONFLICT, EXIT_OS, EXIT_USAGE
from textcl.train import train
from textcl.train.config import TrainConfig
from textcl.train.run_folder import REPLACED_DIR, claim_folder, settle_replaced

SKIP = (".textcl.lock",)


def tree_hash(folder: Path) -> str:
    """sha256 over every file of ``folder`` (relative path and content; not the lock file)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in SKIP:
            h.update(f"{p.relative_to(folder).as_posix()}\0".encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "corpus.txt"
    path.parent.mkdir()
    path.write_text("\n".join(f"{s} ({i})" for i in range(2) for s in TINY_SENTENCES) + "\n")
    return path


def argv(model: Path | str, data: Path, out: Path, *extra: str) -> list[str]:
    base = ["train", "--model", str(model), "--train-file", str(data), "--output-dir", str(out)]
    base += ["--batch-size", "4", "--max-length", "16", "--max-steps", "3", "--seed", "7"]
    return [*base, "--eval-steps", "-1", "--logging-steps", "1", *extra]


@pytest.fixture
def old_run(tiny_model_dir: Path, corpus: Path, tmp_path: Path) -> Path:
    """A finished run (checkpoints/, final/, config.json, results.json, metrics.jsonl)."""
    out = tmp_path / "run"
    assert main(argv(tiny_model_dir, corpus, out, "--save-steps", "2")) == 0
    assert (out / "final").is_dir() and (out / "checkpoints" / "step-00000003").is_dir()
    return out


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``main(args)``'s exit code (argparse's SystemExit too) and its stderr."""
    try:
        rc = main(args)
    except SystemExit as e:
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------- 1. --overwrite loses nothing
@pytest.mark.parametrize(
    ("model", "extra", "code", "fragment"),
    [
        ("typo", (), EXIT_USAGE, "no such folder"),
        ("inside", (), EXIT_USAGE, "config field 'output_dir'"),
        ("ok", ("--matryoshka-dims", "64"), EXIT_USAGE, "matryoshka_dims"),
        ("ok", ("--seed", "-1"), EXIT_USAGE, "'seed'"),
        ("ok", ("--data-dir", "/nonexistent/sts", "--eval-steps", "2"), EXIT_USAGE, "data_dir"),
        ("ok", ("--max-length", "1000"), EXIT_USAGE, "'max_length' 1000 is more than"),
    ],
    ids=[
        "mistyped-model",
        "model-inside-run",
        "matryoshka-dims",
        "seed-negative",
        "no-sts",
        "max-length-past-positions",
    ],
)
def test_overwrite_with_a_bad_run_keeps_the_old_run(
    old_run: Path,
    tiny_model_dir: Path,
    corpus: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    extra: tuple[str, ...],
    code: int,
    fragment: str,
) -> None:
    source = {"typo": old_run.parent / "tiny-bret", "inside": old_run / "final"}.get(
        model, tiny_model_dir
    )
    before = tree_hash(old_run)
    rc, err = run_cli([*argv(source, corpus, old_run, *extra), "--overwrite"], capsys)
    assert rc == code, err
    assert fragment in err and "Traceback" not in err
    assert tree_hash(old_run) == before
    assert not (old_run / REPLACED_DIR).exists()


class _Boom(Exception):
    pass


def _failing_evaluator(encoder: SentenceEncoder) -> dict[str, float]:
    raise _Boom("evaluation failed")


def test_overwrite_restores_the_old_run_when_the_new_one_fails_before_a_checkpoint(
    old_run: Path, tiny_model_dir: Path, corpus: Path
) -> None:
    before = tree_hash(old_run)
    cfg = TrainConfig(
        model=str(tiny_model_dir),
        train_file=str(corpus),
        output_dir=str(old_run),
        batch_size=4,
        max_steps=4,
        eval_steps=2,
        eval_at_start=True,  # fails before any step: the new run never checkpoints
        overwrite=True,
    )
    with pytest.raises(_Boom):
        train(cfg, evaluator=_failing_evaluator)
    assert tree_hash(old_run) == before
    assert not (old_run / REPLACED_DIR).exists()


def test_overwrite_drops_the_old_run_after_the_first_checkpoint(
    old_run: Path, tiny_model_dir: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = run_cli(
        [*argv(tiny_model_dir, corpus, old_run, "--max-steps", "2"), "--overwrite"], capsys
    )
    assert rc == 0, err
    assert sorted(p.name for p in (old_run / "checkpoints").iterdir()) == ["step-00000002"]
    assert not (old_run / REPLACED_DIR).exists()


def test_kill9_between_set_aside_and_first_checkpoint_restores_the_old_run(
    old_run: Path,
) -> None:
    """What a kill -9 leaves: the old run in .textcl-replaced-run, the new run's config.json
    (and maybe best/) in the folder; the next run into the folder settles it first."""
    before = tree_hash(old_run)
    aside = claim_folder(old_run, resuming=False, overwrite=True)
    assert aside == old_run / REPLACED_DIR and not (old_run / "final").exists()
    (old_run / "config.json").write_text('{"config": {}}')  # the killed run's
    (old_run / "best").mkdir()
    settle_replaced(old_run)
    assert tree_hash(old_run) == before and not aside.exists()


def test_kill9_after_the_first_checkpoint_keeps_the_new_run(old_run: Path) -> None:
    aside = claim_folder(old_run, resuming=False, overwrite=True)
    assert aside is not None
    step = old_run / "checkpoints" / "step-00000001"  # the new run's first checkpoint
    step.parent.mkdir()
    (old_run / REPLACED_DIR / "checkpoints" / "step-00000003").rename(step)
    settle_replaced(old_run)
    assert not aside.exists() and step.is_dir()
    assert not (old_run / "final").exists()  # the old run's final/ went with it


# ----------------------------------------------------- 2. an output never shares an input's path
@pytest.mark.parametrize(
    "where",
    ["model", "inside-model", "contains-model", "train-folder", "contains-data", "in-sts"],
)
def test_output_dir_sharing_a_path_with_an_input_is_refused(
    where: str,
    tiny_model_dir: Path,
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    model = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model)
    sts = tmp_path / "evaldata" / "sts"
    (sts / "STSBenchmark").mkdir(parents=True)
    out = {
        "model": model,
        "inside-model": model / "run",
        "contains-model": model.parent,
        "train-folder": corpus.parent,
        "contains-data": corpus.parent,
        "in-sts": sts / "run",
    }[where]
    data = corpus if where != "train-folder" else corpus.parent
    extra = ["--data-dir", str(sts.parent), "--eval-steps", "2"] if where == "in-sts" else []
    before = tree_hash(tmp_path)
    rc, err = run_cli(argv(model, data, out, *extra), capsys)
    assert rc == EXIT_USAGE, err
    assert "config field 'output_dir'" in err and "choose another --output-dir" in err
    assert tree_hash(tmp_path) == before
    assert not (out / "config.json").exists() or where == "model"  # the model's own


# --------------------------------------------------- 3. operational flags are not in config files
def test_saved_config_has_no_overwrite_and_reusing_it_wipes_nothing(
    old_run: Path, tiny_model_dir: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = run_cli([*argv(tiny_model_dir, corpus, old_run), "--overwrite"], capsys)
    assert rc == 0, err
    saved = json.loads((old_run / "config.json").read_text())
    assert "overwrite" not in saved["config"]
    checkpoint = old_run / "checkpoints" / "step-00000003" / "config.json"
    assert "overwrite" not in json.loads(checkpoint.read_text())["config"]
    before = tree_hash(old_run)
    rc, err = run_cli(["train", "--config", str(old_run / "config.json")], capsys)
    assert rc == EXIT_CONFLICT and "holds another run" in err
    assert tree_hash(old_run) == before


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            '{\n  "config": {\n    "seed": 7,\n    "overwrite": true\n  }\n}\n',
            ":4: config field 'overwrite'",
        ),
        ("seed: 7\nresume: true\n", ":2: config field 'resume'"),
    ],
    ids=["overwrite-true", "resume"],
)
def test_config_file_with_an_operational_field_is_refused(
    old_run: Path,
    tiny_model_dir: Path,
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    fragment: str,
) -> None:
    path = tmp_path / ("run.json" if text.startswith("{") else "run.yaml")
    path.write_text(text)
    before = tree_hash(old_run)
    rc, err = run_cli([*argv(tiny_model_dir, corpus, old_run), "--config", str(path)], capsys)
    assert rc == EXIT_USAGE, err
    assert f"{path}{fragment}" in err and "command line only" in err
    assert tree_hash(old_run) == before


def test_config_file_with_overwrite_false_is_accepted(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"config": {"overwrite": False, "seed": 3}}))
    out = tmp_path / "new"
    rc, err = run_cli([*argv(tiny_model_dir, corpus, out), "--config", str(path)], capsys)
    assert rc == 0, err


# ------------------------------------------------ 4. evaluation that cannot run fails at the start
def test_missing_sts_data_fails_before_training(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc, err = run_cli(
        argv(tiny_model_dir, corpus, out, "--eval-steps", "2", "--data-dir", str(tmp_path / "x")),
        capsys,
    )
    assert rc == EXIT_USAGE, err
    assert "evaluation" in err and f"data_dir={tmp_path / 'x'}" in err and "--eval-steps -1" in err
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists()


def test_evaluation_failing_mid_run_still_writes_the_checkpoint(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    calls: list[int] = []

    def flaky(encoder: SentenceEncoder) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 2:
            raise _Boom("the STS data went away")
        return {"stsb_dev_spearman": 1.0}

    out = tmp_path / "run"
    cfg = TrainConfig(
        model=str(tiny_model_dir),
        train_file=str(corpus),
        output_dir=str(out),
        batch_size=4,
        max_steps=6,
        eval_steps=2,
    )
    with pytest.raises(_Boom):
        train(cfg, evaluator=flaky)
    assert (out / "checkpoints" / "step-00000004").is_dir()  # the failed evaluation's step


# --------------------------------------------------------- 5. conflicting flags, strict types
def test_mlp_train_only_and_head_are_exclusive(
    tiny_model_dir: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = run_cli(
        argv(tiny_model_dir, corpus, tmp_path / "r", "--mlp-train-only", "--head", "always"),
        capsys,
    )
    assert rc == EXIT_USAGE
    assert "--head" in err and "--mlp-train-only" in err


@pytest.mark.parametrize(
    ("text", "suffix", "fragment"),
    [
        (
            '{\n  "max_steps": true\n}\n',
            "json",
            ":2: config field 'max_steps': expected an integer",
        ),
        ('{"seed": 7,\n "lr": [1, 2]}', "json", ":2: config field 'lr': expected a number"),
        ("batch_size: 4.0\n", "yaml", ":1: config field 'batch_size': expected an integer"),
        ("lr: 3e-5\n", "yaml", "write 3.0e-5"),
        ("view_a: [dropout]\n", "yaml", "config field 'view_a': expected a string"),
        ("columns: a,b\n", "yaml", "config field 'columns': expected a list"),
        ("eval_at_start: 1\n", "yaml", "config field 'eval_at_start': expected true or false"),
        ("seed: -1\n", "yaml", ":1: config field 'seed': must be an integer in [0, 4294967295]"),
        ("temperature: -1\n", "yaml", ":1: config field 'temperature': must be > 0"),
        ("learning_rate: 1\n", "yaml", ":1: unknown config field(s) ['learning_rate']"),
    ],
)
def test_config_file_types_and_ranges_are_strict(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    suffix: str,
    fragment: str,
) -> None:
    path = tmp_path / f"run.{suffix}"
    path.write_text(text)
    rc, err = run_cli(["train", "--config", str(path), "--model", "m"], capsys)
    assert rc == EXIT_USAGE, err
    assert fragment in err and str(path) in err


def test_bad_flag_value_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_cli(["train", "--model", "m", "--seed", "-1"], capsys)
    assert rc == EXIT_USAGE
    assert "(--seed)" in err and "[0, 4294967295]" in err


# ------------------------------------------------------------------------ 6. resume misuse
def test_resume_from_another_runs_checkpoint_is_refused(
    old_run: Path,
    tiny_model_dir: Path,
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = tmp_path / "other"
    assert main(argv(tiny_model_dir, corpus, other, "--max-steps", "2")) == 0
    before, other_before = tree_hash(old_run), tree_hash(other)
    foreign = other / "checkpoints" / "step-00000002"
    rc, err = run_cli([*argv(tiny_model_dir, corpus, old_run), "--resume", str(foreign)], capsys)
    assert rc == EXIT_CONFLICT, err
    assert f"{foreign}: a checkpoint of another run folder" in err
    assert tree_hash(old_run) == before and tree_hash(other) == other_before


def test_resume_with_max_steps_below_the_checkpoint_is_an_error(
    old_run: Path, tiny_model_dir: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_hash(old_run)
    rc, err = run_cli(
        [*argv(tiny_model_dir, corpus, old_run, "--max-steps", "1"), "--resume"], capsys
    )
    assert rc == EXIT_USAGE, err
    assert "config field 'max_steps'" in err and "step 3" in err
    assert tree_hash(old_run) == before


# ------------------------------------------------------------------------ 7. full disk
@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every safetensors write fails as on a full disk (Rust's IoError, errno 28)."""
    import safetensors.torch
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def fail(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", fail)
    yield


def test_full_disk_while_saving_a_checkpoint_is_exit_5_with_the_path(
    old_run: Path,
    tiny_model_dir: Path,
    corpus: Path,
    full_disk: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = tree_hash(old_run)
    rc, err = run_cli(
        [*argv(tiny_model_dir, corpus, old_run, "--save-steps", "1"), "--overwrite"], capsys
    )
    assert rc == EXIT_OS, err
    assert str(old_run / "checkpoints" / "step-00000001") in err
    assert "No space left on device" in err and "the disk is full" in err
    assert tree_hash(old_run) == before  # the old run is restored


# ------------------------------------------------------------------------ beyond the list
def test_resume_and_overwrite_exclude_each_other(
    old_run: Path, tiny_model_dir: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_hash(old_run)
    rc, err = run_cli(
        [*argv(tiny_model_dir, corpus, old_run, "--max-steps", "5"), "--resume", "--overwrite"],
        capsys,
    )
    assert rc == EXIT_USAGE, err
    assert "--resume and --overwrite exclude each other" in err
    assert tree_hash(old_run) == before


@pytest.mark.parametrize("device", ["foo", "meta", "cuda:x"])
def test_unknown_device_is_one_line_naming_the_field(
    old_run: Path,
    tiny_model_dir: Path,
    corpus: Path,
    capsys: pytest.CaptureFixture[str],
    device: str,
) -> None:
    before = tree_hash(old_run)
    rc, err = run_cli(
        [*argv(tiny_model_dir, corpus, old_run, "--device", device), "--overwrite"], capsys
    )
    assert rc == EXIT_USAGE, err
    assert f"config field 'device' {device!r}:" in err and "Traceback" not in err
    assert tree_hash(old_run) == before


def test_log_records_carry_the_fractional_epoch(old_run: Path) -> None:
    """A run shorter than an epoch logs the epoch with its fraction (32 sentences in batches
    of 4: 8 batches an epoch), so a report of a 0.54-epoch run no longer shows 0.00."""
    rows = [json.loads(line) for line in (old_run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["event"] == "train"]
    assert [(r["step"], r["epoch"]) for r in train_rows] == [(1, 0.125), (2, 0.25), (3, 0.375)]
