"""``textcl encode``: encode a corpus into a sharded, resumable index folder for search."""

from __future__ import annotations

import argparse
from typing import Any

from textcl.search import encode_corpus

HELP = (
    "encode a corpus (.txt/.jsonl/.csv/.parquet/datasets folder/hub dataset) into an index folder"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("encode", help=HELP, description=HELP + ".")
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument(
        "--input",
        required=True,
        help="corpus: .txt (one text a line), .jsonl, .json, .csv, .tsv (those optionally .gz), "
        ".parquet, a datasets save_to_disk folder, or a hub dataset id",
    )
    p.add_argument("--output", required=True, help="index folder (created; resumed if unfinished)")
    p.add_argument(
        "--text-column",
        default="text",
        help="text column (field) of a table: jsonl/csv/tsv/parquet/datasets",
    )
    p.add_argument("--id-column", default=None, help="id field (default: line number / row)")
    p.add_argument("--split", default="train", help="split of a datasets folder or hub dataset")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "int8", "uint8", "binary", "ubinary"),
        default="float32",
        help="stored vectors: float32, float16, or quantized: int8/uint8 (ranges calibrated on "
        "the first --calibration-size texts), binary/ubinary (packed sign bits, dim/8 bytes); "
        "quantized indexes are searched with rescoring (docs: search.md)",
    )
    p.add_argument(
        "--calibration-size",
        type=int,
        default=10_000,
        help="int8/uint8 (and int8 rescoring) ranges: calibrated on the embeddings of the first "
        "N non-blank texts (default: 10000)",
    )
    p.add_argument(
        "--rescore-dtype",
        choices=("float32", "int8", "none"),
        default=None,
        help="rescoring shards of a quantized index, read (mmap) only at the candidates "
        "(default: int8 for binary/ubinary, float32 for int8/uint8)",
    )
    p.add_argument(
        "--shard-size", type=int, default=50_000, help="texts per shard (the resume grain)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="token-budget batching: at most this many padded tokens per forward pass",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16", "qint8"),
        default="auto",
        help="auto (bf16 on CPUs with AMX/AVX512-BF16 and on bf16 GPUs, else fp32), fp32 "
        "(force full precision), bf16, fp16 (CUDA), qint8 (CPU dynamic int8 quantization); "
        "recorded in the index manifest, a resume must use the same (default: auto)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="store raw (not L2-normalised) embeddings: search then ranks by inner product",
    )
    p.add_argument("--overwrite", action="store_true", help="discard an existing index in OUTPUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest = encode_corpus(
        args.model,
        args.input,
        args.output,
        text_column=args.text_column,
        id_column=args.id_column,
        split=args.split,
        dtype=args.dtype,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        normalize=args.normalize,
        precision=args.precision,
        device=args.device,
        overwrite=args.overwrite,
        show_progress=not args.no_progress,
        calibration_size=args.calibration_size,
        rescore_dtype=args.rescore_dtype,
    )
    print(
        f"{args.output}: {manifest.count} embeddings ({manifest.dimension}-d {manifest.dtype}) "
        f"in {len(manifest.shards)} shard(s); {manifest.skipped} blank row(s) skipped"
    )
    return 0
