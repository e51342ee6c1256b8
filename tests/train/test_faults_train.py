"""Fault injection for training runs (issue 14.7): kill -9 at deterministic points (between
and during checkpoint writes) then resume, compared byte for byte with an uninterrupted
run; concurrent writers; damaged, truncated and swapped files of every kind in a run folder.
Each case ends in a clear error or the correct result, never a traceback or a silent wrong
resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.train.test_trainer import corpus_file, make_config, read_log
from textcl.errors import CorruptFileError, FolderConflictError
from textcl.train import Trainer, find_latest_checkpoint, train
from textcl.train.state import STATE_JSON, STATE_TENSORS

__all__ = ["corpus_file"]

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from textcl.errors import TextclError
    from textcl.train import TrainConfig, Trainer
    import textcl.io, textcl.train.state, textcl.train.checkpoints as ck

    model, data, out, kill, resume = sys.argv[1:6]
    cfg = TrainConfig(
        model=model, train_file=data, output_dir=out, batch_size=8, max_length=16, lr=1e-3,
        max_steps=8, eval_steps=-1, save_steps=2, logging_steps=1, seed=7, view_b="mask:0.2",
        report_to="none", save_total_limit=2,
    )
    kind, _, at = kill.partition(":")
    callback = None

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == "step":  # between checkpoint writes, after step N
        callback = lambda trainer, step: die() if step == int(at) else None
    elif kind == "ckpt":  # inside the checkpoint of step N: model written, temp folder there
        save = ck.save_checkpoint_state

        def hooked(folder, payload):
            if payload["state"]["step"] == int(at):
                assert ".tmp-" in str(folder) and (folder / "model").is_dir()
                die()
            return save(folder, payload)

        ck.save_checkpoint_state = hooked
    elif kind == "json":  # half of trainer_state.json written to its temp file
        write = textcl.train.state.write_json

        def hooked_json(path, obj):
            if obj["payload"]["state"]["step"] == int(at):
                text = textcl.io.dumps_json(obj)
                tmp = path.parent / f".{path.name}.tmp-killed"
                tmp.write_text(text[: len(text) // 2])
                die()
            return write(path, obj)

        textcl.train.state.write_json = hooked_json
    try:
        Trainer(cfg, step_callback=callback).train(resume="auto" if resume == "1" else None)
    except TextclError as e:
        print(f"textcl: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    """
)


def run_script(tmp: Path, model: Path, data: Path, out: Path, kill: str, resume: bool) -> Any:
    script = tmp / "fault_run.py"
    if not script.exists():
        script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), str(model), str(data), str(out), kill, str(int(resume))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def final_bytes(out: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted((out / "final").iterdir())
        if p.suffix == ".safetensors"
    }


@pytest.mark.slow
def test_kill9_then_resume_is_byte_identical(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    done = run_script(tmp_path, tiny_model_dir, corpus_file, straight, "none", False)
    assert done.returncode == 0, done.stderr[-2000:]
    want = final_bytes(straight)
    assert set(want) >= {"model.safetensors", "textcl_head.safetensors"}
    want_log = [
        {k: v for k, v in r.items() if k not in ("time", "sentences_per_s", "elapsed_s")}
        for r in read_log(straight)
    ]
    for kill, leftover in (
        ("step:1", None),  # before any checkpoint
        ("step:5", None),  # between checkpoints (4 written, 6 not)
        ("ckpt:4", "checkpoints/.step-00000004.tmp-*"),  # inside a checkpoint write
        ("json:6", "checkpoints/.step-00000006.tmp-*"),  # half a state file written
    ):
        out = tmp_path / kill.replace(":", "-")
        killed = run_script(tmp_path, tiny_model_dir, corpus_file, out, kill, False)
        assert killed.returncode == -signal.SIGKILL, (kill, killed.stderr[-2000:])
        if leftover is not None:
            assert list(out.glob(leftover)), kill  # the kill did land mid-write
        resumed = run_script(tmp_path, tiny_model_dir, corpus_file, out, "none", True)
        assert resumed.returncode == 0, (kill, resumed.stderr[-2000:])
        assert final_bytes(out) == want, kill
        assert not list(out.rglob(".*.tmp-*")), kill  # orphans cleaned at the restart
        got_log = [
            {k: v for k, v in r.items() if k not in ("time", "sentences_per_s", "elapsed_s")}
            for r in read_log(out)
        ]
        assert got_log == want_log, kill
    # Negative control: a different run (another seed's batches) differs in its bytes.
    other = tmp_path / "other"
    script = (tmp_path / "fault_run.py").read_text().replace("seed=7", "seed=8")
    (tmp_path / "fault_run.py").write_text(script)
    assert run_script(tmp_path, tiny_model_dir, corpus_file, other, "none", False).returncode == 0
    assert final_bytes(other) != want


@pytest.mark.slow
def test_concurrent_writers_one_wins(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    script = tmp_path / "fault_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [str(tiny_model_dir), str(corpus_file), str(out), "none", "0"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    # One trains; the other gets the lock error (busy) or, if it came after the first had
    # finished, the ownership error: both exit 4 with one line, no traceback.
    assert codes == [0, 4], results
    loser = next(err for code, err in results if code == 4)
    assert "Traceback" not in loser and ("in use by" in loser or "--resume" in loser)
    assert max(r["step"] for r in read_log(out)) == 8
    assert len(list((out / "checkpoints").glob("step-*"))) == 2


# ---------------------------------------------------------------------- damaged files
def _run(model: Path, data: Path, out: Path, **kw: Any) -> Any:
    cfg = make_config(model, data, out, max_steps=4, eval_steps=-1, save_steps=2, **kw)
    return cfg, train(cfg)


def test_swapped_state_files_between_checkpoints_are_refused(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg, _ = _run(tiny_model_dir, corpus_file, out)
    a, b = out / "checkpoints" / "step-00000002", out / "checkpoints" / "step-00000004"
    for name in (STATE_JSON, STATE_TENSORS, "model/model.safetensors", "config.json"):
        work = tmp_path / name.replace("/", "_")
        shutil.copytree(out, work)
        wa, wb = work / "checkpoints" / a.name, work / "checkpoints" / b.name
        tmp = wa / (Path(name).name + ".swap")
        os.replace(wa / name, tmp)
        os.replace(wb / name, wa / name)
        os.replace(tmp, wb / name)
        with pytest.raises(CorruptFileError, match=r"step-0000000[24]"):
            Trainer(
                make_config(
                    tiny_model_dir, corpus_file, work, max_steps=6, eval_steps=-1, save_steps=2
                )
            ).train(resume=True)
    assert cfg.max_steps == 4


def test_missing_file_in_checkpoint_is_named(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _run(tiny_model_dir, corpus_file, out)
    ckpt = out / "checkpoints" / "step-00000004"
    (ckpt / "model" / "tokenizer.json").unlink()
    with pytest.raises(CorruptFileError, match=r"tokenizer\.json: missing"):
        train(
            make_config(tiny_model_dir, corpus_file, out, max_steps=6, eval_steps=-1), resume=True
        )


@pytest.mark.parametrize("content", [b"", b"{not json\n", b"\xff\xfe\x00garbage", b"[]\n"])
def test_damaged_run_config_and_log_are_repaired_on_resume(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path, content: bytes
) -> None:
    """The run's config.json and metrics.jsonl are outputs of the run state: a resume
    rewrites them from the checkpoint (correct result), the report names a damaged one."""
    from textcl import report

    out = tmp_path / "run"
    _run(tiny_model_dir, corpus_file, out)
    good_log = read_log(out)
    (out / "metrics.jsonl").write_bytes(content)
    (out / "config.json").write_bytes(content)
    if content:
        with pytest.raises(CorruptFileError, match=r"(metrics\.jsonl|config\.json)"):
            report.load_run(out)
    result = train(
        make_config(tiny_model_dir, corpus_file, out, max_steps=6, eval_steps=-1, save_steps=2),
        resume=True,
    )
    assert result.steps == 6
    log = read_log(out)
    assert log[: len(good_log)] == good_log and [r["step"] for r in log][-2:] == [5, 6]
    assert json.loads((out / "config.json").read_text())["config"]["max_steps"] == 6


def test_output_dir_is_a_file_and_legacy_folder(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        train(make_config(tiny_model_dir, corpus_file, path, max_steps=2, eval_steps=-1))
    assert path.read_text() == "x"
    # A folder with an old (pickle) checkpoint only: a new run is refused, overwrite clears.
    out = tmp_path / "old"
    (out / "checkpoints" / "step-00000100").mkdir(parents=True)
    (out / "checkpoints" / "step-00000100" / "trainer_state.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(FolderConflictError):
        train(make_config(tiny_model_dir, corpus_file, out, max_steps=2, eval_steps=-1))
    train(make_config(tiny_model_dir, corpus_file, out, max_steps=2, eval_steps=-1, overwrite=True))
    found = find_latest_checkpoint(out)
    assert found is not None and found.name == "step-00000002"
