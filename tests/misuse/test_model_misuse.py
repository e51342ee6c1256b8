"""Misuse of model folders, encoder config, evaluation data and the run report (issue 25).

One test (or parametrised case) per misuse case, in the style of the index fault suite
(tests/search/test_faults_index.py): the command, run in-process through
``textcl.cli.main``, its exit code and a message fragment naming the file or field, and the
sha256 of every file of the folders involved before and after (nothing lost, nothing
written beside the inputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from textcl.cli import main
from textcl.encoder import SentenceEncoder
from textcl.errors import InputError

EXIT_USAGE, EXIT_CORRUPT = 2, 3


def tree_hashes(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders`` (relative path -> hex digest)."""
    out: dict[str, str] = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``textcl ARGV`` in-process: (exit code, stderr)."""
    rc = main(argv)
    return rc, capsys.readouterr().err


def assert_fails(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    code: int,
    fragments: list[str],
    *folders: Path,
) -> str:
    """Run ``argv``: it must exit ``code`` with one ``error:`` line holding every fragment,
    no traceback, and leave every file of ``folders`` as it was."""
    before = tree_hashes(*folders)
    rc, err = run_cli(argv, capsys)
    assert rc == code, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert tree_hashes(*folders) == before
    return err


@pytest.fixture
def saved_model(tiny_encoder: SentenceEncoder, tmp_path: Path) -> Path:
    """A textcl model folder (SentenceEncoder.save) of the tiny encoder."""
    return tiny_encoder.save(tmp_path / "model")


@pytest.fixture
def stsb_copy(sts_dir: Path, tmp_path: Path) -> Path:
    """A copy of the real STS-B and SICK folders (SentEval layout) that a test may edit."""
    root = tmp_path / "sts"
    root.mkdir()
    for name in ("STSBenchmark", "SICK"):
        shutil.copytree(sts_dir / name, root / name)
    return root


def _edit_line(path: Path, lineno: int, edit: Callable[[str], str]) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_text("\n".join(lines), encoding="utf-8")


def _set_column(col: int, value: str) -> Callable[[str], str]:
    def edit(line: str) -> str:
        cols = line.split("\t")
        cols[col] = value
        return "\t".join(cols)

    return edit


# ------------------------------------------------------------------ 1. tokenizer files
def test_model_folder_without_tokenizer_files_fails_at_load(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a default tokenizer of 5 tokens loaded silently (STS-B 7.51, every search
    score 1.0). After: exit 2 naming the folder and the files it lacks."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, bare / name)
    assert_fails(
        ["eval", "--model", str(bare), "--tasks", "stsb"],
        capsys,
        EXIT_USAGE,
        [str(bare), "no tokenizer files", "tokenizer.json", "vocab.txt"],
        bare,
    )
    with pytest.raises(InputError, match="no tokenizer files"):
        SentenceEncoder.load(bare)


def test_tokenizer_smaller_than_the_embedding_table_is_refused(
    tiny_tokenizer: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``_check_tokenizer_matches_model`` only refused a tokenizer LARGER than the
    embedding table, so another model's (or a default) tokenizer far smaller passed."""
    from tests.helpers import build_tiny_bert

    folder = tmp_path / "other-tokenizer"
    build_tiny_bert(vocab_size=1000).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)  # 115 tokens for 1000 rows
    assert_fails(
        ["eval", "--model", str(folder), "--tasks", "stsb"],
        capsys,
        EXIT_USAGE,
        ["tokenizer/model mismatch", "115 tokens", "1000 rows"],
        folder,
    )


# ------------------------------------------------------------------ 2. max_length
def test_max_length_above_the_position_embeddings_fails_before_encoding(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], sts_dir: Path
) -> None:
    """Before: a RuntimeError (traceback) in the position embeddings at the first long
    sentence. After: exit 2 at load naming max_length and the model's limit (64)."""
    assert_fails(
        ["eval", "--model", str(tiny_model_dir), "--tasks", "stsb", "--max-length", "1000"],
        capsys,
        EXIT_USAGE,
        ["max_length 1000", "limit of 64 tokens"],
        tiny_model_dir,
    )


def test_max_length_is_checked_by_every_encoder_entry(tiny_encoder: SentenceEncoder) -> None:
    """encode / tokenize with their own max_length, and training's setting through
    ``check_max_length``, get the same error before any work."""
    with pytest.raises(InputError, match=r"max_length 100 .*limit of 64"):
        tiny_encoder.encode(["a sentence"], max_length=100)
    with pytest.raises(InputError, match=r"max_length 65 .*limit of 64"):
        tiny_encoder.tokenize(["a sentence"], max_length=65)
    with pytest.raises(InputError, match=r"config field 'max_length' 512 .*limit of 64"):
        tiny_encoder.check_max_length(512, "config field 'max_length'")
    assert tiny_encoder.check_max_length(64) == 64


def test_saved_max_length_above_the_limit_names_the_folder(
    saved_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file = saved_model / "textcl_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["max_length"] = 4096
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    assert_fails(
        ["eval", "--model", str(saved_model), "--tasks", "stsb"],
        capsys,
        EXIT_USAGE,
        [f"{saved_model}: saved max_length 4096", "limit of 64"],
        saved_model,
    )


# ------------------------------------------------------------------ 3. textcl_config.json
@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("normalize", "yes", "field 'normalize' must be true or false, got a string 'yes'"),
        ("format", 2, "field 'format' is 2: this textcl reads format 1 only"),
        ("format", True, "field 'format' must be an integer, got a bool"),
        ("max_length", True, "field 'max_length' must be an integer, got a bool"),
        ("max_length", 32.0, "field 'max_length' must be an integer, got a number"),
        ("include_prompt", 1, "field 'include_prompt' must be true or false, got an integer"),
        ("pooling", ["mean"], "field 'pooling' must be a string, got a list"),
        ("dense_modules", "2_Dense", "field 'dense_modules' must be a list of folder names"),
        ("prompts", {"query": 3}, "field 'prompts': prompt 'query' is not a string"),
        ("pooling", "maxx", "unknown pooling"),
    ],
)
def test_textcl_config_is_strictly_typed(
    saved_model: Path, capsys: pytest.CaptureFixture[str], field: str, value: Any, fragment: str
) -> None:
    """Before: ``normalize: "yes"`` and ``format: 2`` loaded silently (a string is truthy).
    After: exit 2 naming the file and the field."""
    cfg_file = saved_model / "textcl_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg[field] = value
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    assert_fails(
        ["eval", "--model", str(saved_model), "--tasks", "stsb"],
        capsys,
        EXIT_USAGE,
        [str(cfg_file), fragment],
        saved_model,
    )


def test_textcl_config_not_an_object(saved_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = saved_model / "textcl_config.json"
    cfg_file.write_text("[1, 2]", encoding="utf-8")
    assert_fails(
        ["eval", "--model", str(saved_model), "--tasks", "stsb"],
        capsys,
        EXIT_USAGE,
        [str(cfg_file), "expected a JSON object, got a list"],
        saved_model,
    )


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("max_seq_length", "128", "field 'max_seq_length' must be an integer, got '128'"),
        ("max_seq_length", True, "field 'max_seq_length' must be an integer, got True"),
        ("do_lower_case", "no", "field 'do_lower_case' must be true or false, got 'no'"),
    ],
)
def test_sentence_bert_config_is_strictly_typed(
    saved_model: Path, capsys: pytest.CaptureFixture[str], field: str, value: Any, fragment: str
) -> None:
    """A sentence-transformers folder (no textcl_config.json): its sentence_bert_config.json
    fields are typed too (before: "128" became 128, true became max_length 1, "no" was
    truthy and refused as lower-casing)."""
    (saved_model / "textcl_config.json").unlink()
    cfg_file = saved_model / "sentence_bert_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg[field] = value
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    assert_fails(
        ["eval", "--model", str(saved_model), "--tasks", "stsb"],
        capsys,
        EXIT_USAGE,
        [str(cfg_file), fragment],
        saved_model,
    )


@pytest.mark.parametrize(
    ("rel", "what"),
    [
        ("1_Pooling/config.json", "Pooling config"),
        ("sentence_bert_config.json", "sentence-transformers Transformer config"),
        ("config_sentence_transformers.json", "sentence-transformers config"),
    ],
)
def test_sentence_transformers_files_must_be_objects(
    saved_model: Path, capsys: pytest.CaptureFixture[str], rel: str, what: str
) -> None:
    """A crafted sentence-transformers folder whose module config is a JSON list: before,
    the Pooling config reached ``.get`` and died with an AttributeError trace; now exit 3
    naming the file and what it found."""
    (saved_model / "textcl_config.json").unlink()
    cfg_file = saved_model / rel
    assert cfg_file.is_file(), sorted(p.name for p in saved_model.iterdir())
    cfg_file.write_text("[1, 2]", encoding="utf-8")
    assert_fails(
        ["eval", "--model", str(saved_model), "--tasks", "stsb"],
        capsys,
        EXIT_CORRUPT,
        [str(cfg_file), f"{what} must be a JSON object, got list"],
        saved_model,
    )


# ------------------------------------------------------------------ 4. STS data
@pytest.mark.parametrize(
    ("rel", "lineno", "col", "value", "fragment"),
    [
        (
            "STSBenchmark/sts-dev.csv",
            7,
            4,
            "7.2",
            "gold score '7.2' is outside the task's range 0-5",
        ),
        (
            "STSBenchmark/sts-dev.csv",
            9,
            4,
            "-0.5",
            "gold score '-0.5' is outside the task's range 0-5",
        ),
        ("SICK/SICK_trial.txt", 5, 3, "0.5", "gold score '0.5' is outside the task's range 1-5"),
    ],
)
def test_gold_score_outside_the_task_range(
    tiny_model_dir: Path,
    stsb_copy: Path,
    capsys: pytest.CaptureFixture[str],
    rel: str,
    lineno: int,
    col: int,
    value: str,
    fragment: str,
) -> None:
    """Before: scored without a word. After: exit 2 naming file:line."""
    path = stsb_copy / rel
    _edit_line(path, lineno, _set_column(col, value))
    task = "stsb" if "STSB" in rel else "sickr"
    model, data = str(tiny_model_dir), str(stsb_copy)
    assert_fails(
        ["eval", "--model", model, "--tasks", task, "--split", "dev", "--data", data],
        capsys,
        EXIT_USAGE,
        [f"{path}:{lineno}:", fragment],
        tiny_model_dir,
        stsb_copy,
    )


def test_duplicated_pair_is_warned_with_count_and_first_line(
    stsb_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a pair copied over another line was scored without a word. After: a warning
    with the count (beyond the published file's 2) and the first file:line; scored as is."""
    from textcl.evaluation.data import load_sts_task

    path = stsb_copy / "STSBenchmark" / "sts-dev.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[9] = lines[4]  # line 10 repeats line 5: same pair count, one more duplicate
    path.write_text("\n".join(lines), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="textcl.evaluation.data"):
        task = load_sts_task("stsb", "dev", stsb_copy)
    assert task.n_pairs == 1500
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1, msgs
    assert "3 repeated sentence pair(s)" in msgs[0] and "published file has 2" in msgs[0]
    assert f"{path} line 10 repeats line 5" in msgs[0]


def test_published_sts_data_loads_silently_and_unchanged(
    sts_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real SentEval files (with their genuine repeated pairs) load without a warning
    and with the published counts and score ranges."""
    from textcl.evaluation.data import SCORE_RANGES, TASKS, load_sts_task

    with caplog.at_level(logging.WARNING, logger="textcl.evaluation.data"):
        for task in TASKS:
            for split in (
                ("test", "dev", "train", "all") if task in ("stsb", "sickr") else ("test",)
            ):
                t = load_sts_task(task, split, sts_dir)
                low, high = SCORE_RANGES[task]
                assert low <= t.scores.min() and t.scores.max() <= high
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# ------------------------------------------------------------------ 5. run folder as model
def _run_folder(root: Path, model: Path, *, best: bool = True, final: bool = True) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "x", "pooling": "mean"}), "utf-8")
    (run / "metrics.jsonl").write_text(
        json.dumps({"event": "train", "step": 10, "epoch": 0, "time": 1.0, "loss": 2.0}) + "\n",
        "utf-8",
    )
    for name, present in (("best", best), ("final", final)):
        if present:
            shutil.copytree(model, run / name)
    return run


@pytest.mark.parametrize(("best", "final"), [(True, True), (False, True), (False, False)])
def test_eval_on_a_run_folder_names_its_model_folders(
    saved_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    best: bool,
    final: bool,
) -> None:
    """Before: "could not load a tokenizer ... install sentencepiece". After: exit 2 saying
    it is a textcl run folder and naming best/ and final/."""
    run = _run_folder(tmp_path, saved_model, best=best, final=final)
    expected = [str(run / n) for n, p in (("best", best), ("final", final)) if p]
    err = assert_fails(
        ["eval", "--model", str(run), "--tasks", "stsb"],
        capsys,
        EXIT_USAGE,
        [f"{run} is a textcl training run folder, not a model folder", *expected],
        run,
    )
    if not expected:
        assert "holds no model yet" in err


# ------------------------------------------------------------------ 6-7. report
def _report_run(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8"
    )
    return run


SHORT_RUN = [
    # 100 steps of 64 over 11,914 sentences: epoch 0 throughout; every eval a new best.
    {"event": "train", "step": 50, "epoch": 0, "time": 10.0, "loss": 2.0},
    {
        "event": "eval",
        "step": 50,
        "epoch": 0,
        "time": 11.0,
        "stsb_dev_spearman": 70.0,
        "best": True,
    },
    {"event": "train", "step": 100, "epoch": 0, "time": 20.0, "loss": 1.5},
    {
        "event": "eval",
        "step": 100,
        "epoch": 0,
        "time": 21.0,
        "stsb_dev_spearman": 75.0,
        "best": True,
    },
]


def test_report_names_the_line_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "'utf-8' codec can't decode byte 0xff in position 93" (no file, no line).
    After: exit 3 naming metrics.jsonl and line 3."""
    run = _report_run(tmp_path, SHORT_RUN)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_bytes().split(b"\n")
    lines[2] = b'{"event": "train", "step": 100, "loss": \xff\xfe}'
    metrics.write_bytes(b"\n".join(lines))
    assert_fails(
        ["report", str(run)],
        capsys,
        EXIT_CORRUPT,
        [f"{metrics}:3: not UTF-8 text", "0xff"],
        run,
    )


def _eval_rows(html_text: str) -> list[str]:
    body = html_text.split("<h2>Evaluation metrics</h2>", 1)[1].split("</table>", 1)[0]
    return [row for row in body.split("<tr>")[2:]]


def test_report_short_run_shows_fractional_epoch_and_one_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "epochs 0.00" and a star on every eval row. After: a float epoch shows its
    fraction (0.54), an integer epoch is shown as the index it is (never 0.00), and only
    the run's best evaluation has the star."""
    records = [dict(r) for r in SHORT_RUN]
    run = _report_run(tmp_path, records)
    rc, _ = run_cli(["report", str(run)], capsys)
    assert rc == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "<td>epochs</td><td>0.00</td>" not in text
    assert "<td>epoch (fraction not logged)</td><td>index 0</td>" in text
    rows = _eval_rows(text)
    assert all("<td>index 0</td>" in r and "<td>0.00</td>" not in r for r in rows)
    assert ["★" in r for r in rows] == [False, True]

    # Fractional epochs (as logged by a trainer that logs them) are shown with their fraction.
    shutil.rmtree(run)
    for r in records:
        r["epoch"] = round(r["step"] * 64 / 11914, 4)
    run = _report_run(tmp_path, records)
    assert run_cli(["report", str(run)], capsys)[0] == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "<td>epochs</td><td>0.54</td>" in text
    assert "<td>100</td><td>0.54</td>" in text


def test_report_best_row_follows_results_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """results.json's best.step picks the starred row (here the first one)."""
    run = _report_run(tmp_path, SHORT_RUN)
    (run / "results.json").write_text(
        json.dumps({"steps": 100, "best": {"step": 50, "stsb_dev_spearman": 70.0}}), "utf-8"
    )
    assert run_cli(["report", str(run)], capsys)[0] == 0
    rows = _eval_rows((run / "report.html").read_text(encoding="utf-8"))
    assert ["★" in r for r in rows] == [True, False]


def test_report_malformed_results_json_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _report_run(tmp_path, SHORT_RUN)
    (run / "results.json").write_text(json.dumps({"best": {"step": "50"}}), "utf-8")
    assert_fails(
        ["report", str(run)],
        capsys,
        EXIT_CORRUPT,
        [f"{run / 'results.json'}: field 'best.step' must be an integer"],
        run,
    )
