"""``textcl mine``: hard negatives for (anchor, positive) pairs, retrieved from an index
(or from the pairs' own positives), written as (sent0, sent1, hard_neg) triples."""

from __future__ import annotations

import argparse
from typing import Any

from textcl.commands.options import options_from_args
from textcl.io import dumps_json
from textcl.search.mine import FORMATS, SAMPLING, MineOptions, mine_to_file

HELP = (
    "mine hard negatives for (anchor, positive) pairs from an index (default: the pairs' "
    "positives) and write (sent0, sent1, hard_neg) triples for `textcl train --objective sup`"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("mine", help=HELP, description=HELP + ".")
    p.add_argument(
        "--pairs",
        required=True,
        help="(anchor, positive) pairs: .csv/.tsv/.jsonl/.json (optionally .gz), .parquet, a "
        "datasets save_to_disk folder or a hub dataset id (what `textcl train` reads)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="triples file (.jsonl, .csv or .tsv; written atomically)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="encoder (folder or hub id); required without --index, else checked against "
        "the index (default: the index's model)",
    )
    p.add_argument(
        "--index",
        default=None,
        help="index folder written by `textcl encode` to mine from (default: the distinct "
        "positives of the pairs, encoded in memory)",
    )
    p.add_argument("--anchor-column", default="sent0", help="anchor column (default: sent0)")
    p.add_argument("--positive-column", default="sent1", help="positive column (default: sent1)")
    p.add_argument("--num-negatives", type=int, default=1, help="negatives per pair (one row each)")
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="candidates retrieved per anchor (default: --range-max + max positives + 1)",
    )
    p.add_argument(
        "--range-min",
        type=int,
        default=0,
        help="skip the first N candidates left after the rules (the likely false negatives)",
    )
    p.add_argument(
        "--range-max",
        type=int,
        default=None,
        help="take negatives only from the first N candidates left (default: range-min + "
        "num-negatives (x10 with a score rule) + max positives per anchor)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="absolute margin: keep a candidate only if score <= positive score - MARGIN",
    )
    p.add_argument(
        "--relative-margin",
        type=float,
        default=None,
        help="relative margin: keep a candidate only if score <= positive score - "
        "|positive score| * R (0.05: NV-Retriever's TopK-PercPos 95%%)",
    )
    p.add_argument("--max-score", type=float, default=None, help="skip candidates scoring above S")
    p.add_argument("--min-score", type=float, default=None, help="skip candidates scoring below S")
    p.add_argument(
        "--sampling",
        choices=SAMPLING,
        default="top",
        help="top: the best candidates left; random: drawn from the window (seeded)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --sampling random")
    p.add_argument("--format", choices=FORMATS, default=None, help="default: from --output")
    p.add_argument(
        "--with-scores",
        action="store_true",
        help="add pos_score and neg_score columns (textcl train ignores them)",
    )
    p.add_argument(
        "--faiss",
        default=None,
        metavar="KIND",
        help="with --index: search through its FAISS index of this kind (default: exact)",
    )
    p.add_argument("--nprobe", type=int, default=None, help="FAISS IVF cells searched")
    p.add_argument("--ef-search", type=int, default=None, help="FAISS HNSW candidate list")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16", "qint8"),
        default="auto",
        help="encoding precision (see textcl encode)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1")
    p.add_argument("--split", default="train", help="split of a datasets folder or hub dataset")
    p.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="skip (and count) malformed pairs instead of stopping at the first",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(
        MineOptions, args, absolute_margin=args.margin, show_progress=not args.no_progress
    )
    summary = mine_to_file(
        args.pairs,
        args.output,
        args.model,
        index=args.index,
        options=options,
        fmt=args.format,
        with_scores=args.with_scores,
        overwrite=args.overwrite,
    )
    print(dumps_json(summary), end="")
    return 0
