"""``textcl encode``: encode a corpus into a sharded, resumable index folder for search."""

from __future__ import annotations

import argparse
import os
from typing import Any

from textcl.commands.options import options_from_args
from textcl.errors import InputError
from textcl.inference import AUTO, CPU_MAX_TOKENS
from textcl.search.distributed import (
    DEFAULT_TIMEOUT,
    encode_distributed,
    encode_on_devices,
    parse_devices,
    rank_device,
    torchrun_world,
)
from textcl.search.encode import EncodeOptions, encode_corpus_with
from textcl.search.manifest import Manifest
from textcl.search.ray_engine import encode_with_ray

HELP = (
    "encode a corpus (.txt/.jsonl/.csv/.parquet/datasets folder/hub dataset) into an index folder"
)


def max_tokens_arg(text: str) -> int | str | None:
    """``--max-tokens``: a positive integer, ``auto`` or ``none``."""
    word = text.strip().lower()
    if word in (AUTO, "none"):
        return AUTO if word == AUTO else None
    try:
        value = int(word)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, auto or none, got {text!r}")
    return value


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
        type=max_tokens_arg,
        default=AUTO,
        help="token-budget batching: at most this many padded tokens per forward pass; "
        f"auto (default: {CPU_MAX_TOKENS} on CPU, no budget on GPUs) or none",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the transformer through torch.compile (inductor): faster per sentence, "
        "a compilation wait at the start (pays on large corpora; docs/inference.md)",
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
    g = p.add_argument_group(
        "parallel encoding",
        "shards split across processes; the same index folder as one process "
        "(see docs/distributed-encoding.md). Under torchrun each rank encodes every "
        "WORLD_SIZE-th shard and rank 0 writes the manifest.",
    )
    g.add_argument(
        "--devices",
        default=None,
        help="one process per listed device, e.g. cpu,cpu or cuda:0,cuda:1 (cpu*4: four)",
    )
    g.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds a --devices/torchrun process waits for another (default: 6 h)",
    )
    g.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (this process, --devices or torchrun) or ray (a Ray Data actor pool; "
        "needs the textcl[ray] extra)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        help="a running Ray cluster (host:port, ray://host:port or auto); default: start "
        "Ray locally on this machine",
    )
    g.add_argument("--num-workers", type=int, default=2, help="Ray actors (default: 2)")
    g.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs (and torch threads) per Ray actor"
    )
    g.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray actor (default: 0)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(EncodeOptions, args, show_progress=not args.no_progress)
    ranks = torchrun_world()
    if args.engine == "ray" and (ranks or args.devices):
        raise InputError("--engine ray takes --num-workers, not --devices or torchrun")
    if ranks is not None and args.devices:
        raise InputError("under torchrun each rank is one process: leave --devices out")
    if args.engine == "ray":
        manifest: Manifest | None = encode_with_ray(
            args.model,
            args.input,
            args.output,
            options,
            address=args.ray_address,
            num_workers=args.num_workers,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
        )
    elif ranks is not None:
        rank, world, local_rank = ranks
        device = rank_device(args.device, local_rank)
        manifest = encode_distributed(
            args.model,
            args.input,
            args.output,
            EncodeOptions(**{**options.__dict__, "device": device, "show_progress": False}),
            rank=rank,
            world=world,
            timeout=args.dist_timeout,
            ranks_here=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        )
        if manifest is None:  # rank 0 reports
            return 0
    elif args.devices:
        manifest = encode_on_devices(
            args.model,
            args.input,
            args.output,
            EncodeOptions(**{**options.__dict__, "show_progress": False}),
            parse_devices(args.devices),
            timeout=args.dist_timeout,
        )
    else:
        manifest = encode_corpus_with(args.model, args.input, args.output, options)
    assert manifest is not None
    print(
        f"{args.output}: {manifest.count} embeddings ({manifest.dimension}-d {manifest.dtype}) "
        f"in {len(manifest.shards)} shard(s); {manifest.skipped} blank row(s) skipped"
    )
    return 0
