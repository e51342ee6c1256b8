"""``textcl train``: contrastive training from flags or a JSON/YAML config file.

Every :class:`textcl.train.TrainConfig` field is a flag (``--batch-size``, ``--view-a``,
...). Values come, by priority: flags given on the command line; ``--config FILE``;
the dataclass defaults (the unsupervised SimCSE recipe).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any

HELP = "train a sentence encoder with contrastive learning (SimCSE / ConSERT family)"

SHORT_HELP = {
    "model": "hub id or local folder of the starting encoder",
    "train_file": "training data: text file/folder/dataset (unsup) or CSV/TSV/JSONL (sup)",
    "output_dir": "run folder (checkpoints/, best/, final/, metrics.jsonl, config.json)",
    "objective": "unsup (two views of raw sentences) or sup (pairs/triples)",
    "columns": "sup: comma-separated anchor,positive[,hard_negative] column names",
    "view_a": "view spec of the first view, e.g. dropout, mask:0.15, shuffle",
    "view_b": "view spec of the second view (and of hard negatives), e.g. feature_cutoff:0.2",
    "head": "projection head: none, train (MLP at training time only: SimCSE), always",
    "eval_steps": "STS-B dev every N steps (0: only at the end, -1: never)",
    "grad_cache_chunk": "gradient cache: embed in chunks of N sentences (huge batches)",
    "num_workers": "DataLoader processes for tokenization and token-level views (0: none)",
    "dropout": "set every transformer dropout layer to this rate (ConSERT: 0)",
    "precision": (
        "auto (bf16/fp16 on GPU, bf16 on CPUs with AMX/AVX512-BF16, else fp32), fp32, bf16, fp16"
    ),
}


def _field_type(field: dataclasses.Field[Any]) -> type:
    hints = typing.get_type_hints(_config_class())
    hint = hints[field.name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    return origin if origin is not None else hint


def _config_class() -> Any:
    from textcl.train.config import TrainConfig

    return TrainConfig


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help=HELP, description=HELP + ". " + __doc__.split("\n\n")[1]
    )
    p.add_argument("--config", metavar="FILE", help="JSON or YAML file of TrainConfig fields")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint folder, or (no value) the newest one in --output-dir",
    )
    p.add_argument(
        "--mlp-train-only",
        dest="head",
        action="store_const",
        const="train",
        default=argparse.SUPPRESS,
        help="SimCSE: MLP head at training time only (same as --head train)",
    )
    for field in dataclasses.fields(_config_class()):
        flag = "--" + field.name.replace("_", "-")
        kind = _field_type(field)
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
        kwargs["help"] = SHORT_HELP.get(field.name, f"TrainConfig.{field.name}")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif kind is list:
            p.add_argument(flag, type=_split_list, **kwargs)
        else:
            p.add_argument(flag, type=kind, **kwargs)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The run's TrainConfig: defaults, then ``--config`` file, then flags."""
    from textcl.train.config import read_config_file

    cls = _config_class()
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return cls.from_dict(values, args.config or "command line")


def run(args: argparse.Namespace) -> int:
    from textcl.distributed import cleanup
    from textcl.train import Trainer

    config = config_from_args(args)
    resume: Any = args.resume
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
