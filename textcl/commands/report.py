"""``textcl report RUN_DIR``: a self-contained HTML report of a training run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from textcl.evaluation.runs import evaluate_run
from textcl.report import load_run, write_report

HELP = "write a self-contained HTML report (config, metrics, plots, STS table) of a training run"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help=HELP, description=HELP + ".")
    p.add_argument("run_dir", metavar="RUN_DIR", help="training run folder (holds metrics.jsonl)")
    p.add_argument(
        "-o", "--output", default=None, help="output HTML file (default: RUN_DIR/report.html)"
    )
    p.add_argument(
        "--results",
        action="append",
        default=None,
        metavar="FILE",
        help="STS results JSON from `textcl eval --output` (repeatable; default: "
        "RUN_DIR/sts_results.json when present)",
    )
    p.add_argument(
        "--sts",
        action="store_true",
        help="evaluate the run's best/ (else final/) encoder on STS now and add the table, "
        "the predicted-vs-gold scatter and the positive-vs-random cosine histogram "
        "(writes RUN_DIR/sts_results.json)",
    )
    p.add_argument(
        "--tasks",
        default="stsb",
        help="with --sts: comma-separated STS tasks (default: stsb)",
    )
    p.add_argument("--split", default="test", help="with --sts: STS-B split (default: test)")
    p.add_argument("--data", default=None, help="with --sts: data folder (default: $TEXTCL_DATA)")
    p.add_argument("--batch-size", type=int, default=64, help="with --sts: encoding batch size")
    p.add_argument("--title", default=None, help="report title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_data = load_run(args.run_dir)  # fail early on a bad run folder
    results: list[Any] | None = list(args.results) if args.results else None
    similarity = None
    source = ""
    if args.sts:
        res_path, similarity, source = evaluate_run(
            run_data.run_dir,
            tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
            split=args.split,
            data_dir=args.data,
            batch_size=args.batch_size,
            show_progress=True,  # the CLI keeps its progress bars
        )
        results = [*(results or []), res_path]
    out = write_report(
        run_data.run_dir,
        output=args.output,
        results=results,
        similarity=similarity,
        similarity_source=source,
        title=args.title,
    )
    print(Path(out))
    return 0
