"""Recall@k and query latency of FAISS IVF / HNSW against textcl's exact search.

Corpus vectors come from a textcl index folder (``--index DIR``: real embeddings written by
``textcl encode``) or, by default, a documented synthetic set: ``--n`` (100,000) unit
vectors of dimension ``--dim`` (384, like all-MiniLM-L6-v2) drawn from a mixture of
``--clusters`` (1,000) Gaussian clusters (centre ~ N(0, I), spread ``--spread`` = 0.8 per
dimension relative to the centre scale), L2-normalised; queries are fresh draws from the
same mixture. With ``--index``, ``--queries`` rows are held out of the corpus (chosen at
random) and used as queries.

Ground truth is :func:`textcl.search.exact_search`; recall@k is the mean fraction of the
exact top-k that the approximate index returns. Latency: the whole query batch in one call
(ms per query) and single queries one at a time (median ms). Indexes are built with
:func:`textcl.search.faiss_index.create_faiss_index`, the same constructor
``textcl index build`` uses.

Run::

    nice .venv/bin/python -m benchmarks faiss_recall                 # synthetic 100k x 384
    nice .venv/bin/python -m benchmarks faiss_recall --index my-index  # real embeddings
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import add_common_args, parser_for, write_result


def synthetic(n: int, n_q: int, dim: int, clusters: int, spread: float, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        c = rng.integers(0, clusters, size=m)
        x = centres[c] + spread * rng.standard_normal((m, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(n_q)


def from_index(folder: str, n_q: int, seed: int) -> Any:
    from textcl.search import EmbeddingIndex

    idx = EmbeddingIndex(folder)
    x = idx.vectors()
    rng = np.random.default_rng(seed)
    held = np.zeros(len(x), dtype=bool)
    held[rng.choice(len(x), size=n_q, replace=False)] = True
    return np.ascontiguousarray(x[~held]), np.ascontiguousarray(x[held])


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))


def timed_search(fn: Any, queries: np.ndarray, k: int, singles: int) -> tuple[Any, float, float]:
    """(result of the batch call, batch ms/query, median single-query ms)."""
    t0 = time.perf_counter()
    result = fn(queries, k)
    batch_ms = (time.perf_counter() - t0) * 1000 / len(queries)
    one = []
    for i in range(min(singles, len(queries))):
        t0 = time.perf_counter()
        fn(queries[i : i + 1], k)
        one.append((time.perf_counter() - t0) * 1000)
    return result, batch_ms, statistics.median(one)


def main(argv: list[str] | None = None) -> int:
    p = parser_for("faiss_recall", __doc__)
    p.add_argument("--index", default=None, help="textcl index folder (real embeddings)")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.8)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--singles", type=int, default=100, help="queries timed one at a time")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nlist", type=int, default=None, help="IVF cells (default ~4 sqrt(N))")
    p.add_argument("--m", type=int, default=32, help="HNSW links per node")
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--nprobe", default="1,4,16,64")
    p.add_argument("--ef-search", default="16,32,64,128,256")
    p.add_argument("--kinds", default="flat,ivf,hnsw", help="FAISS kinds to measure")
    add_common_args(p, model=False, data=False, threads=False, seed=0)
    args = p.parse_args(argv)

    import faiss

    from textcl.search import exact_search
    from textcl.search.faiss_index import create_faiss_index

    if args.index:
        x, q = from_index(args.index, args.queries, args.seed)
        what = f"{args.index}: {len(x)} real embeddings (dim {x.shape[1]}), {len(q)} held out"
    else:
        x, q = synthetic(args.n, args.queries, args.dim, args.clusters, args.spread, args.seed)
        what = (
            f"synthetic: {len(x)} unit vectors, dim {args.dim}, {args.clusters} Gaussian "
            f"clusters (spread {args.spread}), {len(q)} queries from the same mixture"
        )
    k = args.k
    print(what)
    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, "
        f"{os.cpu_count()} cores; recall@{k} against exact search"
    )

    def exact(qs: np.ndarray, kk: int) -> Any:
        return exact_search(qs, x, top_k=kk)

    (_, exact_i), batch_ms, one_ms = timed_search(exact, q, k, args.singles)
    print(f"{'method':<28} {'recall@' + str(k):>9} {'batch ms/q':>11} {'single ms':>10} build s")
    print(f"{'exact (textcl, numpy)':<28} {1.0:9.4f} {batch_ms:11.3f} {one_ms:10.3f}")
    rows = [["exact (textcl, numpy)", "1.0000", f"{batch_ms:.3f}", f"{one_ms:.3f}", "-"]]

    kinds = args.kinds.split(",")
    for kind, sweep, attr in (
        ("flat", [0], None),
        ("ivf", [int(v) for v in args.nprobe.split(",")], "nprobe"),
        ("hnsw", [int(v) for v in args.ef_search.split(",")], "efSearch"),
    ):
        if kind not in kinds:
            continue
        t0 = time.perf_counter()
        fi, params = create_faiss_index(
            kind,
            x.shape[1],
            len(x),
            nlist=args.nlist,
            m=args.m,
            ef_construction=args.ef_construction,
        )
        if kind == "ivf":
            rng = np.random.default_rng(args.seed)
            size = min(len(x), 256 * params["nlist"])
            fi.cp.seed = args.seed
            fi.train(x[np.sort(rng.choice(len(x), size=size, replace=False))])
        fi.add(x)
        build = time.perf_counter() - t0
        desc = ", ".join(f"{a}={b}" for a, b in params.items())
        for value in sweep:
            if attr == "nprobe":
                fi.nprobe = value
            elif attr == "efSearch":
                fi.hnsw.efSearch = max(value, k)
            label = f"{kind} ({desc})" if attr is None else f"{kind} {attr}={value}"

            def run(qs: np.ndarray, kk: int, fi: Any = fi) -> Any:
                return fi.search(qs, kk)

            (_, got_i), batch_ms, one_ms = timed_search(run, q, k, args.singles)
            print(
                f"{label:<28} {recall(got_i, exact_i):9.4f} {batch_ms:11.3f} {one_ms:10.3f} "
                f"{build:7.1f}",
                flush=True,
            )
            rows.append(
                [
                    label,
                    f"{recall(got_i, exact_i):.4f}",
                    f"{batch_ms:.3f}",
                    f"{one_ms:.3f}",
                    f"{build:.1f}",
                ]
            )
        if kind != "flat":
            print(f"  ({kind}: {desc})")
    write_result(
        "faiss_recall",
        rows,
        args.json,
        headers=["method", f"recall@{k}", "ms/query (batch)", "ms (single query)", "build s"],
        notes=[what],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
