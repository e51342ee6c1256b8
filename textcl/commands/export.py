"""``textcl export``: a model to an ONNX or OpenVINO model folder (fp32 or static int8)."""

from __future__ import annotations

import argparse
from typing import Any

from textcl.export.exporter import (
    CHECK_SIZE,
    DEFAULT_CALIBRATION_SIZE,
    KEEP_FLOAT_DEFAULTS,
    SMOOTH_ALPHA_DEFAULT,
    export_model,
)
from textcl.export.onnx import DEFAULT_OPSET
from textcl.export.runtime import FORMATS

HELP = "export a model to an ONNX or OpenVINO model folder, fp32 or static int8"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help=HELP, description=HELP + " (docs/export.md).")
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--output", required=True, help="the exported model folder (written atomically)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    p.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="static int8, calibrated on --calibration (default: fp32)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="in-domain sentences (.txt one a line, or .jsonl/.csv/.tsv/.parquet with "
        f"--text-column): the first --calibration-size calibrate, the next {CHECK_SIZE} "
        "check the export",
    )
    p.add_argument(
        "--calibration-size",
        type=int,
        default=DEFAULT_CALIBRATION_SIZE,
        help=f"calibration sentences (default {DEFAULT_CALIBRATION_SIZE})",
    )
    p.add_argument("--text-column", default="text", help="text column of a table file")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset ({DEFAULT_OPSET})")
    p.add_argument(
        "--keep-float",
        default=None,
        help="int8: regular expression of MatMul node names kept float ('' quantizes every "
        f"weight MatMul; default ONNX: {KEEP_FLOAT_DEFAULTS['onnx']!r}, the feed-forward "
        "output projections and the first three layers' feed-forward input projections; "
        f"OpenVINO: {KEEP_FLOAT_DEFAULTS['openvino']!r})",
    )
    p.add_argument(
        "--smooth-alpha",
        type=float,
        default=SMOOTH_ALPHA_DEFAULT,
        help=f"ONNX int8: SmoothQuant migration strength (default {SMOOTH_ALPHA_DEFAULT})",
    )
    p.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        help="refuse (write nothing) when the export's min cosine to the source on the "
        "check sentences is lower",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUTPUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = export_model(
        args.model,
        args.output,
        args.format,
        quantize=args.quantize,
        calibration=args.calibration,
        calibration_size=args.calibration_size,
        text_column=args.text_column,
        opset=args.opset,
        overwrite=args.overwrite,
        keep_float=args.keep_float,
        smooth_alpha=args.smooth_alpha,
        min_cosine=args.min_cosine,
    )
    q = result.info.quality
    bf16 = q.get("bf16")
    at_bf16 = (
        f"; float parts at bf16, as precision auto runs them here: min "
        f"{bf16['min_cosine']:.5f}, mean {bf16['mean_cosine']:.5f}"
        if isinstance(bf16, dict)
        else ""
    )
    print(
        f"{result.path}: {result.info.label} "
        f"(cosine to the source on {q['sentences']} sentences: min {q['min_cosine']:.5f}, "
        f"mean {q['mean_cosine']:.5f}{at_bf16})"
    )
    return 0
