"""``textcl train``: contrastive training from flags or a JSON/YAML config file.

Every :class:`textcl.train.TrainConfig` field is a flag (``--batch-size``, ``--view-a``,
...). Values come, by priority: flags given on the command line; ``--config FILE``;
the dataclass defaults (the unsupervised SimCSE recipe).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from typing import Any

from textcl.distributed import cleanup
from textcl.errors import InputError
from textcl.pooling import HEAD_MODES, POOLING_STRATEGIES
from textcl.train import Trainer
from textcl.train.config import (
    OBJECTIVES,
    PRECISIONS,
    TrainConfig,
    check_config_file_values,
    config_line,
    field_docs,
    read_config_file,
)
from textcl.views.registry import available_views

HELP = "train a sentence encoder with contrastive learning (SimCSE / ConSERT family)"

DESCRIPTION = (
    HELP + ". Every TrainConfig field is a flag; values come from the flags given, then "
    "--config FILE, then the defaults (the unsupervised SimCSE recipe). Hugging Face "
    "TrainingArguments names work as aliases: --learning-rate, --num-train-epochs, "
    "--resume-from-checkpoint, --bf16, --fp16. --batch-size is the GLOBAL batch over all "
    "processes (there is no per-device batch flag)."
)

ALIASES: dict[str, tuple[str, ...]] = {
    "lr": ("--learning-rate",),
    "epochs": ("--num-train-epochs",),
}
"""Extra flag names of config fields (Hugging Face ``TrainingArguments`` names)."""


def _choices() -> dict[str, tuple[str, ...]]:

    return {
        "objective": tuple(OBJECTIVES),
        "pooling": tuple(POOLING_STRATEGIES),
        "head": tuple(HEAD_MODES),
        "precision": tuple(PRECISIONS),
    }


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain_text(doc: str) -> str:
    """A docstring made fit for ``--help``: reST roles and literals become plain text and
    ``%`` is escaped for argparse."""
    doc = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], doc)
    return doc.replace("``", "").replace("%", "%%")


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def field_help(field: dataclasses.Field[Any], doc: str, choices: tuple[str, ...] | None) -> str:
    """``--help`` text of a config field: its docstring, choices and default."""
    text = plain_text(doc).rstrip(".") if doc else field.name.replace("_", " ")
    if field.name in ("view_a", "view_b"):
        text += "; views: " + ", ".join(available_views())
    if choices and not all(re.search(rf"\b{re.escape(c)}\b", text) for c in choices):
        text += "; choices: " + ", ".join(choices)
    if re.search(r"\bdefault:", text, re.IGNORECASE):
        return text  # the docstring says what the default means
    if field.default is not dataclasses.MISSING:
        default: Any = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:  # pragma: no cover - every TrainConfig field has a default
        default = None
    if default == "":
        return f"{text} (required)"
    return f"{text} (default: {plain_text(_default_text(default))})"


def _field_type(field: dataclasses.Field[Any]) -> type:
    hints = typing.get_type_hints(_config_class())
    hint = hints[field.name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    return origin if origin is not None else hint


def _config_class() -> Any:

    return TrainConfig


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers: Any) -> None:

    p = subparsers.add_parser("train", help=HELP, description=DESCRIPTION)
    p.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or YAML file of TrainConfig fields (a run's config.json works too); "
        "flags given on the command line win (default: none)",
    )
    p.add_argument(
        "--resume",
        "--resume-from-checkpoint",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint folder, or (no value) from the newest checkpoint "
        "in --output-dir (default: start a new run)",
    )
    head = p.add_mutually_exclusive_group()  # --mlp-train-only is a --head value: not both
    head.add_argument(
        "--mlp-train-only",
        dest="head",
        action="store_const",
        const="train",
        default=argparse.SUPPRESS,
        help="SimCSE: MLP head at training time only (same as --head train)",
    )
    docs = field_docs(_config_class())
    choices = _choices()
    for field in dataclasses.fields(_config_class()):
        flags = ["--" + field.name.replace("_", "-"), *ALIASES.get(field.name, ())]
        kind = _field_type(field)
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
        kwargs["help"] = field_help(field, docs.get(field.name, ""), choices.get(field.name))
        target: Any = head if field.name == "head" else p
        if field.name == "precision":
            target = p.add_mutually_exclusive_group()
            for name in ("bf16", "fp16"):
                target.add_argument(
                    f"--{name}",
                    dest="precision",
                    action="store_const",
                    const=name,
                    default=argparse.SUPPRESS,
                    help=f"same as --precision {name}",
                )
        if field.name in choices:
            kwargs["choices"] = choices[field.name]
        if kind is bool:
            target.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        elif kind is list:
            target.add_argument(*flags, type=_split_list, metavar="A,B", **kwargs)
        else:
            target.add_argument(*flags, type=kind, **kwargs)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The run's TrainConfig: defaults, then ``--config`` file, then flags. A refused field
    is named with its flag, or with the config file and line that gave it; a config file
    may not carry the command-line-only keys (``overwrite``, ``resume``)."""

    cls = _config_class()
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    if args.config:
        check_config_file_values(args.config, values)
    names = {f.name for f in dataclasses.fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    values.update(flags)

    def locate(name: str) -> str:
        if name in flags or not args.config:
            return f"command line (--{name.replace('_', '-')})"
        line = config_line(args.config, name)
        return f"{args.config}:{line}" if line else str(args.config)

    return cls.from_dict(values, args.config or "command line", locate=locate)


def run(args: argparse.Namespace) -> int:

    config = config_from_args(args)
    resume: Any = args.resume
    if resume is not None and config.overwrite:
        raise InputError(
            "--resume and --overwrite exclude each other: --resume continues the run of "
            "--output-dir, --overwrite replaces it with a new run; give one"
        )
    if resume == "latest":
        resume = True
    try:
        result = Trainer(config).train(resume=resume)
    finally:
        cleanup()  # leave torchrun's process group cleanly (no-op in one process)
    if os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 reports
    print(f"trained {result.steps} steps; final model: {result.final_dir}")
    key = "stsb_dev_spearman"
    rows = [
        ("start (step 0)", result.start_metrics),
        (f"final (step {result.steps})", result.final_metrics),
        (f"best (step {(result.best_metrics or {}).get('step')})", result.best_metrics),
    ]
    shown = [(name, m) for name, m in rows if m is not None and key in m]
    if shown:
        print(f"{'':18} {'STS-B dev Spearman':>18} {'alignment':>10} {'uniformity':>10}")
        for name, m in shown:
            cells = [f"{m[k]:.4f}" if k in m else "-" for k in ("alignment", "uniformity")]
            print(f"{name:18} {m[key]:18.2f} {cells[0]:>10} {cells[1]:>10}")
    if result.best_dir is not None:
        print(f"best model: {result.best_dir}")
    return 0
