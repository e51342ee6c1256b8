"""``textcl search``: top-k semantic search over an index folder (exact or FAISS)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from textcl.data.readers import read_lines
from textcl.search import search
from textcl.search.binary_index import BINARY_KINDS
from textcl.search.faiss_index import FAISS_KINDS

HELP = "search an index folder written by `textcl encode` (exact, or through FAISS)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("search", help=HELP, description=HELP + ".")
    p.add_argument("--index", required=True, help="index folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", action="append", help="a query (repeatable)")
    q.add_argument("--queries", help="UTF-8 text file with one query a line ('-': stdin)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--format", choices=("table", "jsonl"), default="table")
    p.add_argument(
        "--model", default=None, help="query encoder (default: the model in the manifest)"
    )
    p.add_argument(
        "--faiss",
        nargs="?",
        const=True,
        default=None,
        choices=(True, *FAISS_KINDS, *BINARY_KINDS),
        metavar="KIND",
        help="search through a FAISS index built with `textcl index build` "
        f"(optionally name its kind: {', '.join(FAISS_KINDS)}; "
        f"{', '.join(BINARY_KINDS)} for a binary index)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every file's sha256 against the manifest before searching (otherwise "
        "sizes always, and each file's sha256 on its first use)",
    )
    p.add_argument(
        "--nprobe", type=int, default=None, help="FAISS IVF cells searched (default: 16)"
    )
    p.add_argument(
        "--rescore-multiplier",
        type=int,
        default=None,
        metavar="N",
        help="re-rank top-k * N candidates exactly with the float query: a quantized index "
        "(default: 4) or a FAISS search (default: 4 for ivfpq / opq-ivfpq / factory, off for "
        "the others); 0 or 1: off",
    )
    p.add_argument(
        "--candidate-pool",
        type=int,
        default=None,
        metavar="P",
        help="a binary index with rescoring rows: take the Hamming top P, keep the top-k * "
        "multiplier of them by the float query against their sign vectors, then rescore "
        "those (default: the larger of 2000 and N / 500; binary-hnsw: off; 0: off)",
    )
    p.add_argument("--ef-search", type=int, default=None, help="FAISS HNSW candidate list")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument(
        "--truncate-dim",
        type=int,
        default=None,
        metavar="D",
        help="Matryoshka: search on the first D dimensions of the stored vectors and the "
        "queries (re-normalised; exact search only)",
    )
    p.set_defaults(func=run)


def read_queries(path: str) -> list[str]:
    """Non-blank lines of ``path`` (``-``: stdin), one query a line. A file is read by
    :func:`textcl.data.readers.read_lines` (``.gz`` too): bad UTF-8 names the file and
    line, a byte order mark is stripped."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no such queries file")
        lines = [line for _, _, line in read_lines(file)]
    queries = [line.strip() for line in lines if line.strip()]
    if not queries:
        raise ValueError(f"{path}: no queries (the file has no non-blank line)")
    return queries


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def format_table(results: list[list[Any]]) -> str:
    width = max(40, shutil.get_terminal_size((120, 20)).columns)
    out: list[str] = []
    for hits in results:
        if not hits:
            continue
        out.append(f"query: {hits[0].query}")
        id_w = max(2, *(len(h.id) for h in hits))
        out.append(f"{'rank':>4}  {'score':>7}  {'id':<{id_w}}  text")
        text_w = max(20, width - (4 + 2 + 7 + 2 + id_w + 2))
        for h in hits:
            out.append(f"{h.rank + 1:>4}  {h.score:7.4f}  {h.id:<{id_w}}  {_clip(h.text, text_w)}")
        out.append("")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    queries = list(args.query) if args.query else read_queries(args.queries)
    results = search(
        args.index,
        queries,
        model=args.model,
        top_k=args.top_k,
        faiss=args.faiss,
        verify=args.verify,
        batch_size=args.batch_size,
        device=args.device,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        truncate_dim=args.truncate_dim,
        rescore_multiplier=args.rescore_multiplier,
        candidate_pool=args.candidate_pool,
    )
    if args.format == "jsonl":
        for hits in results:
            for h in hits:
                print(json.dumps(h.to_dict(), ensure_ascii=False))
    else:
        print(format_table(results), end="")
    return 0
