"""``textcl eval --model PATH_OR_ID``: evaluate an encoder on the STS suite."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from textcl.encoder import SentenceEncoder
from textcl.errors import InputError
from textcl.evaluation import evaluate_sts, expand_tasks, format_sts_table
from textcl.io import write_json
from textcl.precision import check_device, resolve_inference_precision
from textcl.search.manifest import check_apart

HELP = "evaluate an encoder on STS12-16, STS-B and SICK-R (Spearman of cosine similarity ×100)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help=HELP, description=HELP + ".")
    p.add_argument(
        "--model",
        required=True,
        metavar="PATH_OR_ID",
        help="model folder (textcl, sentence-transformers or plain transformers) or hub id",
    )
    p.add_argument(
        "--tasks",
        default="all",
        help="comma-separated: sts12,sts13,sts14,sts15,sts16,stsb,sickr, or all (default: all)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("test", "dev", "train", "all"),
        help="split of stsb / sickr (STS12-16 are test only; sickr dev = trial; all = MTEB's "
        "protocol: SICK-R on its three files together, STS-B test) (default: test)",
    )
    p.add_argument(
        "--pooling", default=None, help="override the model's pooling (default: its own)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default: 64)")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="truncation in tokens (default: the model's own, e.g. max_seq_length)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="STS data folder (SentEval layout, or a root with sts/); default: $TEXTCL_DATA, "
        "else the Hugging Face hub",
    )
    p.add_argument(
        "--similarity",
        default="",
        help="extra similarities to report besides cosine: dot,euclidean,manhattan",
    )
    p.add_argument("--device", default=None, help="torch device (default: CUDA if available)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16", "qint8"),
        default="auto",
        help="inference precision: auto (bf16 on CPUs with AMX/AVX512-BF16 and on bf16 GPUs, "
        "else fp32), fp32 (force full precision), bf16, fp16 (CUDA), qint8 (CPU dynamic int8); recorded in "
        "the results (default: auto)",
    )
    p.add_argument("-o", "--output", default=None, help="write the results JSON here")
    p.add_argument(
        "--predictions", action="store_true", help="include per-pair predictions in the JSON"
    )
    p.set_defaults(func=run)


def check_output(output: Path, model: str, data: str | None) -> None:
    """Before any work: the results file is not a folder, does not sit inside the model
    folder (a new ``.json`` there changes the model's weights hash) and does not replace a
    file of the STS data folder (``--data``, else ``$TEXTCL_DATA``)."""
    if output.is_dir():
        raise InputError(f"-o/--output {output}: a folder, expected a results file name")
    others = [("model folder", Path(model).expanduser())]
    data_dir = data or os.environ.get("TEXTCL_DATA")
    if data_dir and output.exists():
        others.append(("STS data folder", Path(data_dir).expanduser()))
    local = [(what, p) for what, p in others if p.is_dir()]
    check_apart(output, "-o/--output", local, noun="the results file")


def run(args: argparse.Namespace) -> int:
    tasks = expand_tasks(args.tasks)  # fail on a bad task name before loading the model
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    extra = [s.strip() for s in args.similarity.split(",") if s.strip()]
    check_device(args.device)  # one line for a device this machine lacks
    if args.output:
        check_output(Path(args.output).expanduser(), args.model, args.data)
    encoder = SentenceEncoder.from_pretrained(
        args.model, pooling=args.pooling, max_length=args.max_length, device=args.device
    )
    resolve_inference_precision(args.precision, encoder.device)  # fail before encoding
    encoder.precision = args.precision
    results = evaluate_sts(
        encoder,
        tasks=tasks,
        split=args.split,
        data_dir=args.data,
        batch_size=args.batch_size,
        return_predictions=args.predictions,
        similarities=extra,
        model_name=str(args.model),
        show_progress=True,  # the CLI keeps its progress bars
    )
    results["max_length"] = encoder.effective_max_length
    results["precision"] = encoder.last_precision or resolve_inference_precision(
        args.precision, encoder.device
    )
    print(format_sts_table(results))
    if args.output:
        out = write_json(args.output, results)
        print(f"results written to {out}")
    return 0
