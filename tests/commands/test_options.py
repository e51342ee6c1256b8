"""``options_from_args``: an options dataclass from the parsed flags of the same names."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from textcl.cli import build_parser
from textcl.commands.options import options_from_args
from textcl.search.encode import EncodeOptions
from textcl.search.mine import MineOptions


@dataclasses.dataclass
class Opts:
    batch_size: int = 64
    max_tokens: int | None = None
    show_progress: bool = True


def test_fields_come_from_flags_of_their_names_or_from_given() -> None:
    args = argparse.Namespace(batch_size=8, max_tokens=512, no_progress=True, other="x")
    opts = options_from_args(Opts, args, show_progress=not args.no_progress)
    assert opts == Opts(batch_size=8, max_tokens=512, show_progress=False)
    # given wins over a flag of the same name
    assert options_from_args(Opts, args, batch_size=3, show_progress=True).batch_size == 3


def test_unwired_fields_and_unknown_names_are_errors() -> None:
    args = argparse.Namespace(batch_size=8, max_tokens=None)
    with pytest.raises(TypeError, match="show_progress"):
        options_from_args(Opts, args)  # no flag of that name and not given
    with pytest.raises(TypeError, match="show_progres'"):
        options_from_args(Opts, args, show_progress=True, show_progres=False)
    with pytest.raises(TypeError, match="not a dataclass"):
        options_from_args(dict, args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "cls", "given", "expected"),
    [
        (
            ["encode", "--model", "m", "--input", "c.txt", "--output", "o", "--batch-size", "8",
             "--max-tokens", "none", "--no-progress", "--dtype", "int8"],
            EncodeOptions,
            ("show_progress",),
            {"batch_size": 8, "max_tokens": None, "dtype": "int8", "show_progress": False},
        ),
        (
            ["mine", "--pairs", "p.jsonl", "--output", "o.jsonl", "--model", "m", "--margin",
             "0.1", "--num-negatives", "3"],
            MineOptions,
            ("absolute_margin", "show_progress"),
            {"absolute_margin": 0.1, "num_negatives": 3, "show_progress": True},
        ),
    ],
)  # fmt: skip
def test_the_commands_flags_fill_their_options(
    argv: list[str], cls: type, given: tuple[str, ...], expected: dict[str, object]
) -> None:
    """Every field of EncodeOptions / MineOptions is a flag of `textcl encode` / `textcl
    mine` (or one of the given ones the command computes)."""
    args = build_parser().parse_args(argv)
    values = {
        "show_progress": not args.no_progress,
        "absolute_margin": getattr(args, "margin", None),
    }
    opts = options_from_args(cls, args, **{k: values[k] for k in given})
    for name, value in expected.items():
        assert getattr(opts, name) == value
