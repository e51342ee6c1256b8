"""``textcl index build``: build a FAISS index (flat / ivf / hnsw / ivfpq / opq-ivfpq / a
factory string) over an index folder;
``textcl index verify``: check every file of an index folder against its manifest."""

from __future__ import annotations

import argparse
from typing import Any

from textcl.errors import InputError
from textcl.search import build_faiss_index, verify_index
from textcl.search.binary_index import BINARY_KINDS
from textcl.search.convert import quantize_index
from textcl.search.faiss_index import FAISS_KINDS, IVF_KINDS
from textcl.search.faiss_pq import FACTORY_KIND, PQ_KINDS

HELP = "build a FAISS vector index over an index folder written by `textcl encode`"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("index", help=HELP, description=HELP + ".")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build a FAISS index", description=HELP + ".")
    b.add_argument("--index", required=True, help="index folder")
    b.add_argument(
        "--kind",
        choices=(*FAISS_KINDS, *BINARY_KINDS),
        default=None,
        help="index kind (default: hnsw; factory with --factory; binary-flat / binary-hnsw "
        "for binary / ubinary indexes)",
    )
    b.add_argument("--nlist", type=int, default=None, help="IVF cells (default ~4*sqrt(N))")
    b.add_argument(
        "--pq-m",
        type=int,
        default=None,
        help="IVF-PQ sub-quantizers, must divide the dimension (default: largest divisor "
        "<= dim/8, 48 for 384-d)",
    )
    b.add_argument("--pq-bits", type=int, default=None, help="bits per PQ code (default: 8)")
    b.add_argument(
        "--factory",
        default=None,
        metavar="STRING",
        help="any FAISS index_factory string, e.g. 'IVF1024,PQ32x8' or 'HNSW32,SQ8' "
        "(--kind factory; inner product)",
    )
    b.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="training sample of the IVF / PQ / factory kinds (default: 256*nlist, at "
        "least 256*2**pq_bits, at most 1,000,000)",
    )
    b.add_argument("--m", type=int, default=None, help="HNSW links per node (default: 32)")
    b.add_argument(
        "--ef-construction", type=int, default=None, help="HNSW build candidates (default: 200)"
    )
    b.add_argument(
        "--seed", type=int, default=None, help="training sample / k-means seed (default: 0)"
    )
    b.set_defaults(func=run)
    v = sub.add_parser(
        "verify",
        help="check every file of an index folder against its manifest (sizes, sha256)",
        description="Check an index folder written by `textcl encode`: the manifest, every "
        "shard's embeddings, texts and offsets (size, sha256, .npy header, offsets) and FAISS "
        "files. Exit 0 when intact; a damaged file is named with exit code 3.",
    )
    v.add_argument("--index", required=True, help="index folder")
    v.set_defaults(func=run_verify)
    qz = sub.add_parser(
        "quantize",
        help="convert a float index folder into a new quantized one (int8/uint8/binary/ubinary)",
        description="Write a quantized copy of a float32/float16 index folder into a new folder "
        "(texts hard-linked or copied; int8 ranges calibrated on the first rows; atomic, "
        "locked, resumable). The source is not changed.",
    )
    qz.add_argument("--index", required=True, help="source index folder (float32 / float16)")
    qz.add_argument("--output", required=True, help="new index folder (created)")
    qz.add_argument("--dtype", required=True, choices=("int8", "uint8", "binary", "ubinary"))
    qz.add_argument(
        "--calibration-size",
        type=int,
        default=10_000,
        help="int8 ranges from the first N rows (default: 10000)",
    )
    qz.add_argument(
        "--rescore-dtype",
        choices=("float32", "int8", "none"),
        default=None,
        help="rescoring shards (default: int8 for binary, float32 for int8)",
    )
    qz.set_defaults(func=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    m = quantize_index(
        args.index,
        args.output,
        args.dtype,
        calibration_size=args.calibration_size,
        rescore_dtype=args.rescore_dtype,
    )
    print(
        f"{args.output}: {m.count} {m.dtype} embeddings in {len(m.shards)} shard(s), rescoring "
        f"{m.quantization['rescore_dtype']}"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    idx = verify_index(args.index)
    m = idx.manifest
    files = sum(len(s.files()) for s in m.shards) + len(m.faiss)
    print(
        f"{args.index}: OK, {m.count} embeddings in {len(m.shards)} shard(s); {files} file(s) "
        "match the manifest"
    )
    return 0


TRAINED = (*IVF_KINDS, FACTORY_KIND)
BUILD_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "nlist": ("--nlist", IVF_KINDS),
    "m": ("--m", ("hnsw",)),
    "ef_construction": ("--ef-construction", ("hnsw",)),
    "seed": ("--seed", TRAINED),
    "train_size": ("--train-size", TRAINED),
    "pq_m": ("--pq-m", PQ_KINDS),
    "pq_bits": ("--pq-bits", PQ_KINDS),
    "factory": ("--factory", (FACTORY_KIND,)),
}
"""``index build`` option -> its flag and the index kinds it applies to."""


def run(args: argparse.Namespace) -> int:
    kind = args.kind or (FACTORY_KIND if args.factory is not None else "hnsw")
    given = {name: getattr(args, name) for name in BUILD_FLAGS if getattr(args, name) is not None}
    for name in given:
        flag, kinds = BUILD_FLAGS[name]
        if kind not in kinds and kind.removeprefix("binary-") not in kinds:
            raise InputError(
                f"{flag} applies only to --kind {' / '.join(kinds)}, not to --kind {kind}; "
                f"drop {flag}"
            )
    if kind == FACTORY_KIND and args.factory is None:
        raise InputError("--kind factory needs --factory STRING (a FAISS index_factory string)")
    entry = build_faiss_index(args.index, kind, **given)
    params = ", ".join(f"{k}={v}" for k, v in entry["params"].items())
    print(
        f"{args.index}/{entry['file']}: {kind} over {entry['count']} vectors"
        f"{' (' + params + ')' if params else ''} in {entry['build_seconds']:.1f} s, "
        f"{entry['bytes'] / max(1, entry['count']):.1f} bytes per vector"
    )
    return 0
