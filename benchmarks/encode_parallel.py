"""Parallel encode: ``textcl encode --engine ray`` (local Ray, N workers) and ``--devices cpu*N``
vs the one-process encode, same input, same cores: wall time, ratio, identical index.

Input: the first ``--sentences`` lines of the Wikipedia sentences (``corpus/`` of the data
root) into ``--shard-size`` shards with the real all-MiniLM-L6-v2 at fp32. Each engine
writes its own index folder ``--repeats`` times (fresh folders, engines alternating; medians).
One process uses ``--workers`` torch threads; Ray starts locally with ``--workers`` actors of
one CPU (one torch thread) each; ``--devices`` spawns ``--workers`` CPU processes. Wall
times are whole calls (model load, Ray start / process spawn included). Then the indexes
are compared: shard files byte for byte, and the top-10 ids of ``--queries`` queries
(held-out sentences) searched in each.

Run::

    python -m benchmarks encode_parallel                          # 5,000 sentences, 2 workers
    python -m benchmarks encode_parallel --sentences 400 --shard-size 100 --repeats 1  # smoke
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.common import (
    add_common_args,
    data_root,
    median,
    model_path,
    parser_for,
    timed,
    write_result,
)


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.name.startswith("shard-") or p.name == "manifest.json"
    }


def main(argv: list[str] | None = None) -> int:
    parser = parser_for("encode_parallel", __doc__)
    add_common_args(parser, threads=False)
    parser.add_argument("--sentences", type=int, default=5000, help="corpus lines (5000)")
    parser.add_argument("--shard-size", type=int, default=500, help="texts per shard (500)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers / processes / threads")
    parser.add_argument("--repeats", type=int, default=2, help="runs per engine (median)")
    parser.add_argument("--queries", type=int, default=20, help="search queries compared")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--engines",
        default="single,ray,devices",
        help="comma list of single, ray, devices (default: all three)",
    )
    parser.add_argument("--load", default="", help="a note on the machine's load (uptime)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TEXTCL_CPU_BF16", "0")

    import torch

    from textcl.search import search
    from textcl.search.distributed import encode_on_devices
    from textcl.search.encode import EncodeOptions, encode_corpus_with
    from textcl.search.ray_engine import encode_with_ray

    model = str(model_path(args.model))
    corpus_dir = data_root(args.data, contains="corpus") / "corpus"
    source = sorted(corpus_dir.glob("wiki_sentences_*.txt"))[0]
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts, held = lines[: args.sentences], lines[-args.queries :]
    work = Path(tempfile.mkdtemp(prefix="bench-encode-parallel-"))
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    options = EncodeOptions(
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        precision="fp32",
        device="cpu",
        show_progress=False,
    )
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    torch.set_num_threads(args.workers)

    def run(engine: str, out: Path) -> Any:
        if engine == "single":
            return encode_corpus_with(model, corpus, out, options)
        if engine == "ray":
            return encode_with_ray(
                model, corpus, out, options, num_workers=args.workers, cpus_per_worker=1
            )
        return encode_on_devices(model, corpus, out, options, ["cpu"] * args.workers)

    times: dict[str, list[float]] = {e: [] for e in engines}
    folders: dict[str, Path] = {}
    try:
        for r in range(args.repeats):
            for engine in engines:
                out = work / f"{engine}-{r}"
                _, wall, _ = timed(lambda engine=engine, out=out: run(engine, out))
                times[engine].append(wall)
                folders[engine] = out
                print(f"{engine:<8} run {r}: {wall:7.1f} s", flush=True)
        base = engines[0]
        ref_files = _shard_bytes(folders[base])
        ref_hits = search(folders[base], held, model=model, top_k=10, device="cpu")
        rows = []
        for engine in engines:
            files = _shard_bytes(folders[engine])
            same_files = files == ref_files
            hits = search(folders[engine], held, model=model, top_k=10, device="cpu")
            same_top10 = sum(
                [h.id for h in a] == [h.id for h in b] for a, b in zip(hits, ref_hits, strict=True)
            )
            wall = median(times[engine])
            rows.append(
                [
                    engine,
                    f"{wall:.1f}",
                    f"{args.sentences / wall:.1f}",
                    f"{wall / median(times[base]):.3f}",
                    "yes" if same_files else "NO",
                    f"{same_top10}/{len(held)}",
                ]
            )
            print(
                f"{engine:<8} median {wall:7.1f} s  ratio {wall / median(times[base]):.3f}  "
                f"same files {same_files}  same top-10 {same_top10}/{len(held)}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes = [
        f"{args.sentences} Wikipedia sentences, shards of {args.shard_size}, all-MiniLM-L6-v2 "
        f"fp32, batch {args.batch_size}; single: one process, {args.workers} torch threads; "
        f"ray: local Ray, {args.workers} actors x 1 CPU; devices: {args.workers} spawned CPU "
        "processes. Wall time of the whole call (model load, Ray start, spawn included), "
        f"median of {args.repeats}.",
    ]
    if args.load:
        notes.append(f"Load: {args.load}")
    write_result(
        "encode_parallel",
        rows,
        args.json,
        headers=[
            "engine",
            "wall s",
            "sentences/s",
            "time ratio",
            "same shard files",
            "same top-10",
        ],
        notes=notes,
        data={"times": times},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
