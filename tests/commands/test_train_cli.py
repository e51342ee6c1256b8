"""`textcl train`: flags and config files fill one TrainConfig; a short run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TINY_SENTENCES
from textcl.cli import main


def parse(argv: list[str]):  # type: ignore[no-untyped-def]
    import argparse

    from textcl.commands import train as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    return cmd.config_from_args(parser.parse_args(["train", *argv]))


def test_defaults_are_the_simcse_unsup_recipe() -> None:
    cfg = parse(["--model", "m", "--train-file", "f", "--output-dir", "o"])
    assert (cfg.pooling, cfg.head, cfg.temperature, cfg.lr) == ("cls", "train", 0.05, 3e-5)
    assert (cfg.batch_size, cfg.max_length, cfg.eval_steps, cfg.epochs) == (64, 32, 125, 1)


def test_config_file_then_flags(tmp_path: Path) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model: m\ntrain_file: f\noutput_dir: o\nbatch_size: 32\nlr: 1.0e-4\n")
    cfg = parse(["--config", str(yaml_file), "--batch-size", "16", "--columns", "a,b"])
    assert (cfg.batch_size, cfg.lr, cfg.columns) == (16, 1e-4, ["a", "b"])
    cfg = parse(
        ["--config", str(yaml_file), "--no-symmetric", "--mlp-train-only", "--view-b", "mask"]
    )
    assert cfg.symmetric is False and cfg.head == "train" and cfg.view_b == "mask"


def test_bad_config_value_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m", "temperature": -1}))
    assert main(["train", "--config", str(bad)]) == 2
    assert "temperature" in capsys.readouterr().err


def test_cli_run_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "c.txt"
    data.write_text("\n".join(TINY_SENTENCES) + "\n")
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--train-file", str(data)]
    argv += ["--output-dir", str(out), "--batch-size", "4", "--max-steps", "3"]
    argv += ["--eval-steps", "-1", "--view-a", "mask:0.1", "--view-b", "mask:0.3"]
    assert main(argv) == 0
    assert (out / "final" / "config.json").is_file()
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["view_a"] == "mask:0.1" and saved["max_steps"] == 3
