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


def train_parser():  # type: ignore[no-untyped-def]
    from textcl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_flag_has_plain_help_with_its_default() -> None:
    import argparse
    import dataclasses

    from textcl.train.config import TrainConfig, field_docs

    docs = field_docs()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(docs) == fields, f"fields without a docstring: {sorted(fields - set(docs))}"
    parser = train_parser()
    seen = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = action.help or ""
        assert text.strip(), action.option_strings
        for markup in ("``", ":class:", ":func:", "TrainConfig."):
            assert markup not in text, (action.option_strings, text)
        if action.dest in fields and action.option_strings[0] == "--" + action.dest.replace(
            "_", "-"
        ):
            seen.add(action.dest)
            assert "(default: " in text or "(required)" in text or "default:" in text, text
    assert seen == fields
    shown = " ".join(parser.format_help().split())
    assert "(default: 64)" in shown and "(default: 3e-05)" in shown
    from textcl.pooling import POOLING_STRATEGIES

    assert "{" + ",".join(POOLING_STRATEGIES) + "}" in shown  # choices
    assert "GLOBAL batch" in shown and "not a per-device batch" in shown


def test_help_is_plain_text_in_a_real_terminal_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out and "TrainConfig." not in out
    assert "--learning-rate" in out and "--num-train-epochs" in out and "--bf16" in out


def test_training_arguments_aliases() -> None:
    cfg = parse(["--learning-rate", "1e-4", "--num-train-epochs", "3", "--bf16"])
    assert (cfg.lr, cfg.epochs, cfg.precision) == (1e-4, 3, "bf16")
    assert parse(["--fp16"]).precision == "fp16"
    assert parse(["--precision", "fp32"]).precision == "fp32"
    assert parse(["--lr", "2e-5"]).lr == 2e-5


def test_precision_flags_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse(["--bf16", "--fp16"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_choices_are_checked_at_parse_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--pooling", "avg"])
    assert "invalid choice: 'avg'" in capsys.readouterr().err


def test_resume_from_checkpoint_alias() -> None:
    from textcl.cli import build_parser

    parser = build_parser()
    base = ["train", "--model", "m"]
    assert parser.parse_args([*base, "--resume-from-checkpoint"]).resume == "latest"
    assert parser.parse_args([*base, "--resume-from-checkpoint", "ck/step-1"]).resume == "ck/step-1"
    assert parser.parse_args(base).resume is None
