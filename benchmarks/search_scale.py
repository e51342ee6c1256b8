"""Search at corpus scale (1M / 5M x 384): exact fp32, HNSW, IVF-PQ, int8 and binary with rescoring, against sentence-transformers' quantize_embeddings + semantic_search_faiss.

Corpus. The real part: all-MiniLM-L6-v2 embeddings (``textcl encode``, fp32, normalised)
of every distinct sentence of the local text in the shared data folder (the 11,914
Wikipedia sentences, then the SNLI dev/test and STS-B sentences: 52,611 in all; the local
Wikipedia file has 11,914 lines, not 100k). Every 50th of them (row % 50 == 7) is held out
as a query (~1,050; ``--queries`` of them used) and never put in the corpus. Encoded once
into ``--cache`` (outside the repository; reused on reruns: ``textcl encode`` of a finished
index is a no-op).

Beyond the real rows, vectors are drawn from a Gaussian with the real corpus embeddings'
mean and covariance (``mu + L z``, ``L`` the Cholesky factor, ``z ~ N(0, I)``, seed
``--seed``), then L2-normalised like the real ones. Why: quantization error depends on the
per-dimension location and spread (int8 ranges) and on the signs and correlations of the
dimensions (binary); a matched Gaussian keeps the mean (MiniLM embeddings are far from
centred), the per-dimension variances and the correlations, so the distractors land where
real embeddings land and the real queries' neighbours compete with them. What it lacks is
the cluster structure of text beyond the covariance (a conservative choice for recall: the
drawn vectors fill the space between topics). The real rows come first, the drawn ones
after; the float index folder of each size is written once into ``--cache``.

Configurations (recall@10 against exact fp32 over the same corpus; queries/s at batch 1
(median over ``--singles`` single queries) and at batch 64 (median over the batches of the
query set); build seconds; RAM bytes per vector = what a search holds in memory: the
vectors it scans (memory-mapped shards touched whole) or the FAISS index; disk bytes per
vector = embedding shards + rescoring shards + FAISS file, texts excluded):

* ``textcl exact fp32``: exact search over the float32 shards (the ground truth);
* ``textcl hnsw``: ``textcl index build --kind hnsw --m 16 --ef-construction 40`` (as
  sentence-transformers' non-exact faiss index), up to ``--hnsw-max`` vectors (an HNSW
  build of millions of vectors takes hours on 2 shared cores; the same cap applies to
  ``binary-hnsw``);
* ``textcl ivfpq`` when :data:`textcl.search.faiss_index.FAISS_KINDS` has it;
* ``textcl int8 + rescore``: ``textcl index quantize --dtype int8`` (ranges from the first
  10,000 rows, float32 rescoring shards), exact int8 candidates, multiplier 4;
* ``textcl binary + rescore``: ``--dtype ubinary`` with int8 rescoring shards; exact
  Hamming in numpy, ``binary-flat`` (``faiss.IndexBinaryFlat``) and ``binary-hnsw``;
* ``ST ubinary faiss`` / ``ST uint8 faiss``: ``quantize_embeddings`` (uint8 calibrated on
  the same first 10,000 rows) + ``semantic_search_faiss(corpus_index=..., exact=True,
  rescore_multiplier=4)`` (ST keeps uint8 in a float ``IndexFlatIP``: 4 bytes a dimension);
  ``ST int8 usearch`` when usearch is installed (skipped otherwise).

Peak RSS of a binary search over each size: a fresh process (``python -c``) imports
textcl, opens the ``ubinary`` index, runs the queries (batches of 64) exactly (numpy
Hamming) or through binary-flat, then reports its peak resident set (``VmHWM``; see
:func:`peak_rss` for why not ``ru_maxrss``).

Run::

    nice .venv/bin/python -m benchmarks search_scale --sizes 1000000,5000000 \\
        --cache /work/bench-cache --json benchmarks/results/380_search_scale.json
    nice .venv/bin/python -m benchmarks search_scale --sizes 20000 --queries 64   # smoke
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, add_common_args, data_root, model_path, parser_for, write_result
from textcl.search import EmbeddingIndex, build_faiss_index
from textcl.search.convert import quantize_index
from textcl.search.encode import npy_bytes, shard_names, texts_jsonl
from textcl.search.faiss_index import FAISS_KINDS
from textcl.search.manifest import Manifest, ShardInfo
from textcl.search.quantize import calibration_ranges

K = 10
SHARD = 500_000
HOLD_OUT = 50


def real_sentences(data: Path) -> list[str]:
    """Distinct sentences of the local text, in a fixed order (see the module doc)."""
    seen: set[str] = set()
    out: list[str] = []

    def add(s: str) -> None:
        s = " ".join(s.split())
        if s and s not in seen:
            seen.add(s)
            out.append(s)

    for line in (data / "corpus" / "wiki_sentences_11914.txt").read_text("utf-8").splitlines():
        add(line)
    for name in ("snli_1.0_dev.csv", "snli_1.0_test.csv"):
        with open(data / "nli" / name, encoding="utf-8", newline="") as fh:
            for r in csv.DictReader(fh):
                add(r["sentence1"])
                add(r["sentence2"])
    for name in ("sts-train.csv", "sts-dev.csv", "sts-test.csv"):
        for line in (data / "sts" / "STSBenchmark" / name).read_text("utf-8").splitlines():
            p = line.split("\t")
            if len(p) >= 7:
                add(p[5])
                add(p[6])
    return out


def real_embeddings(data: Path, cache: Path, model: Path) -> np.ndarray:
    """MiniLM embeddings of :func:`real_sentences` via ``textcl encode`` (cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    text = cache / "real_sentences.txt"
    body = "\n".join(real_sentences(data)) + "\n"
    if not text.is_file() or text.read_text("utf-8") != body:
        text.write_text(body, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTCL_CPU_BF16": "0"}
    cmd = [sys.executable, "-m", "textcl.cli", "encode", "--model", str(model), "--input"]
    cmd += [str(text), "--output", str(cache / "real-index"), "--precision", "fp32"]
    subprocess.run([*cmd, "--no-progress"], check=True, env=env)
    return EmbeddingIndex(cache / "real-index").vectors()


def write_float_index(folder: Path, n: int, real: np.ndarray, seed: int) -> Path:
    """A float32 index folder of ``n`` rows: the real rows, then Gaussian draws matched to
    their mean and covariance (renormalised); written shard by shard, reused when the
    manifest says the same."""
    tag = {"kind": "search_scale", "n": n, "seed": seed, "real": len(real)}
    if (folder / "manifest.json").is_file():
        m = Manifest.load(folder)
        if m.complete and m.source == tag:
            return folder
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    mu = real.mean(axis=0, dtype=np.float64)
    chol = np.linalg.cholesky(np.cov(real, rowvar=False) + 1e-9 * np.eye(real.shape[1]))
    rng = np.random.default_rng(seed)
    shards = []
    for i, lo in enumerate(range(0, n, SHARD)):
        hi = min(n, lo + SHARD)
        part = [real[lo:hi]] if lo < len(real) else []
        drawn = hi - max(lo, min(hi, len(real)))
        if drawn:
            z = rng.standard_normal((drawn, real.shape[1]))
            x = (mu + z @ chol.T).astype(np.float32)
            part.append(x / np.linalg.norm(x, axis=1, keepdims=True))
        emb = np.ascontiguousarray(np.concatenate(part), dtype=np.float32)
        ids = [str(r) for r in range(lo, hi)]
        lines, offsets = texts_jsonl(ids, [f"row {r}" for r in ids])
        names = shard_names(i)
        blobs = (npy_bytes(emb), lines, npy_bytes(offsets))
        for name, blob in zip(names, blobs, strict=True):
            (folder / name).write_bytes(blob)
        sha = [hashlib.sha256(b).hexdigest() for b in blobs]
        shards.append(
            ShardInfo(i, lo, hi - lo, *names, sha[0], sha[1], 0, sha[2], *map(len, blobs))
        )
    Manifest(
        model="search_scale",
        encoder={"normalize": True},
        dimension=real.shape[1],
        dtype="float32",
        shard_size=SHARD,
        source=tag,
        probe=[],
        count=n,
        shards=shards,
        complete=True,
    ).save(folder)
    return folder


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))


def timings(fn: Callable[[np.ndarray], np.ndarray], q: np.ndarray, singles: int) -> dict[str, Any]:
    """Rows found for ``q`` (batches of 64) and the queries/s at batch 1 and 64 (medians)."""
    found, batch_s = [], []
    for lo in range(0, len(q), 64):
        t0 = time.perf_counter()
        found.append(fn(q[lo : lo + 64]))
        if len(q[lo : lo + 64]) == 64:
            batch_s.append(time.perf_counter() - t0)
    one = []
    for i in range(min(singles, len(q))):
        t0 = time.perf_counter()
        fn(q[i : i + 1])
        one.append(time.perf_counter() - t0)
    return {
        "found": np.concatenate(found),
        "qps_1": 1 / statistics.median(one),
        "qps_64": 64 / statistics.median(batch_s) if batch_s else None,
    }


def disk_bytes(folder: Path, kind: str | None = None) -> int:
    m = Manifest.load(folder)
    total = sum(s.bytes + max(s.rescore_bytes, 0) for s in m.shards)
    return (total + (int(m.faiss[kind]["bytes"]) if kind else 0)) / m.count


PEAK_RSS = """
import json, resource, sys, numpy as np
from textcl.search import EmbeddingIndex
q = np.load(sys.argv[2])
idx = EmbeddingIndex(sys.argv[1])
for lo in range(0, len(q), 64):
    idx.search_vectors(q[lo:lo + 64], 10, faiss_kind=sys.argv[3] or None)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"vmhwm_kib": int(hwm),
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_rss(folder: Path, queries: Path, kind: str) -> int:
    """Peak resident memory (bytes) of a fresh process that opens ``folder`` and searches:
    ``VmHWM`` of ``/proc/self/status`` (Linux carries a forking parent's high-water mark
    into ``ru_maxrss`` across ``exec``, so ``ru_maxrss`` of a child of this big process
    reads the parent's peak; ``VmHWM`` belongs to the new memory image)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(folder), str(queries), kind],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    return int(json.loads(out.strip().splitlines()[-1])["vmhwm_kib"]) * 1024


def run_size(n: int, args: Any, real: np.ndarray, q: np.ndarray) -> list[dict[str, Any]]:
    cache = Path(args.cache)
    dim = real.shape[1]
    t0 = time.perf_counter()
    base = write_float_index(cache / f"scale-{n}" / "float", n, real, args.seed)
    print(f"[{n}] float index ready in {time.perf_counter() - t0:.0f} s", flush=True)
    fidx = EmbeddingIndex(base)
    rows: list[dict[str, Any]] = []

    def record(name: str, build: float | None, ram: float, disk: float, res: dict) -> None:
        row = {
            "n": n,
            "config": name,
            "recall@10": recall(res["found"], truth),
            "qps_batch1": res["qps_1"],
            "qps_batch64": res["qps_64"],
            "ram_bytes_per_vector": ram,
            "disk_bytes_per_vector": disk,
            "build_s": build,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    exact = timings(lambda x: fidx.search_vectors(x, K)[1], q, args.singles)
    truth = exact["found"]
    record("textcl exact fp32", None, 4 * dim, disk_bytes(base), exact)
    skip = set(args.skip.split(",")) if args.skip else set()

    if "hnsw" not in skip and n <= args.hnsw_max:
        t0 = time.perf_counter()
        if "hnsw" not in fidx.manifest.faiss:
            build_faiss_index(base, "hnsw", m=16, ef_construction=40)
        build = time.perf_counter() - t0
        fidx = EmbeddingIndex(base)
        e = fidx.manifest.faiss["hnsw"]
        res = timings(lambda x: fidx.search_vectors(x, K, faiss_kind="hnsw")[1], q, args.singles)
        record(
            "textcl hnsw (m16, efC40, efS128)",
            build or e["build_seconds"],
            e["bytes"] / n,
            disk_bytes(base, "hnsw"),
            res,
        )
    if "ivfpq" in FAISS_KINDS and "ivfpq" not in skip:
        t0 = time.perf_counter()
        if "ivfpq" not in fidx.manifest.faiss:
            build_faiss_index(base, "ivfpq")
        build = time.perf_counter() - t0
        fidx = EmbeddingIndex(base)
        e = fidx.manifest.faiss["ivfpq"]
        res = timings(lambda x: fidx.search_vectors(x, K, faiss_kind="ivfpq")[1], q, args.singles)
        record(
            "textcl ivfpq (defaults)",
            build or e["build_seconds"],
            e["bytes"] / n,
            disk_bytes(base, "ivfpq"),
            res,
        )

    quantized: dict[str, Path] = {}
    for dtype in ("int8", "ubinary"):
        if dtype in skip:
            continue
        folder = cache / f"scale-{n}" / dtype
        t0 = time.perf_counter()
        quantize_index(base, folder, dtype, calibration_size=args.calibration_size)
        build = time.perf_counter() - t0
        quantized[dtype] = folder
        idx = EmbeddingIndex(folder)
        width = dim if dtype == "int8" else dim // 8
        label = (
            "int8 + rescore (float32 rows)" if dtype == "int8" else "binary + rescore (int8 rows)"
        )
        res = timings(lambda x, i=idx: i.search_vectors(x, K)[1], q, args.singles)
        record(f"textcl {label}, exact", build, width, disk_bytes(folder), res)
        if dtype != "ubinary":
            continue
        for kind in ("binary-flat", "binary-hnsw"):
            if kind in skip or (kind == "binary-hnsw" and n > args.hnsw_max):
                continue
            t0 = time.perf_counter()
            if kind not in idx.manifest.faiss:
                build_faiss_index(folder, kind, m=16, ef_construction=40)
            kbuild = time.perf_counter() - t0
            idx = EmbeddingIndex(folder)
            e = idx.manifest.faiss[kind]
            res = timings(
                lambda x, i=idx, kd=kind: i.search_vectors(x, K, faiss_kind=kd)[1],
                q,
                args.singles,
            )
            record(
                f"textcl {label}, {kind}",
                build + kbuild,
                e["bytes"] / n,
                disk_bytes(folder, kind),
                res,
            )
            for mult in args.multipliers:
                if kind != "binary-flat" or mult == 4:
                    continue
                res = timings(
                    lambda x, i=idx, kd=kind, r=mult: i.search_vectors(
                        x, K, faiss_kind=kd, rescore_multiplier=r
                    )[1],
                    q,
                    args.singles,
                )
                record(
                    f"textcl {label}, {kind}, multiplier {mult}",
                    build + kbuild,
                    e["bytes"] / n,
                    disk_bytes(folder, kind),
                    res,
                )

    if "st" not in skip:
        rows += st_side(fidx, q, truth, n, args, record)
    if "ubinary" in quantized and "rss" not in skip:
        qfile = cache / "queries.npy"
        np.save(qfile, q)
        for kind in ("", "binary-flat"):
            if kind and kind in skip:
                continue
            rss = peak_rss(quantized["ubinary"], qfile, kind)
            rows.append(
                {
                    "n": n,
                    "config": f"peak RSS, binary {kind or 'exact'} search",
                    "peak_rss_bytes": rss,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def st_side(
    fidx: EmbeddingIndex,
    q: np.ndarray,
    truth: np.ndarray,
    n: int,
    args: Any,
    record: Callable[..., None],
) -> list[dict[str, Any]]:
    """sentence-transformers' quantize_embeddings + semantic_search_faiss in the same run."""
    import faiss  # lazy: optional dependency
    from sentence_transformers.quantization import quantize_embeddings, semantic_search_faiss

    dim = fidx.dimension
    calib = fidx.vectors(0, args.calibration_size)
    ranges = calibration_ranges(calib)
    for precision in ("ubinary", "uint8"):
        if precision == "uint8" and n > args.st_uint8_max:
            print(f"[{n}] ST uint8 skipped: a float IndexFlatIP of {n} vectors (--st-uint8-max)")
            continue
        t0 = time.perf_counter()
        index = faiss.IndexBinaryFlat(dim) if precision == "ubinary" else faiss.IndexFlatIP(dim)
        for lo in range(0, n, 100_000):
            x = fidx.vectors(lo, lo + 100_000)
            index.add(quantize_embeddings(x, precision=precision, ranges=ranges))
        build = time.perf_counter() - t0

        ram = dim / 8 if precision == "ubinary" else 4 * dim
        mults = [4, *(m for m in args.multipliers if m != 4)] if precision == "ubinary" else [4]
        for mult in mults:

            def st_search(
                x: np.ndarray, p: str = precision, ix: Any = index, r: int = mult
            ) -> np.ndarray:
                hits, _ = semantic_search_faiss(
                    x,
                    corpus_index=ix,
                    corpus_precision=p,
                    top_k=K,
                    ranges=ranges,
                    calibration_embeddings=calib,
                    rescore=True,
                    rescore_multiplier=r,
                    exact=True,
                )
                return np.array([[h["corpus_id"] for h in row] for row in hits])

            res = timings(st_search, q, args.singles)
            suffix = "" if mult == 4 else f", multiplier {mult}"
            record(f"ST {precision} faiss flat + rescore{suffix}", build, ram, ram, res)
    try:
        import usearch  # noqa: F401  # lazy: optional peer
    except ImportError:
        print("ST int8 usearch: skipped (usearch is not installed)")
    return []


def main(argv: list[str] | None = None) -> int:
    p = parser_for("search_scale", __doc__)
    add_common_args(p, threads=False, seed=0)
    p.add_argument("--sizes", default="1000000,5000000", help="corpus sizes (comma separated)")
    p.add_argument("--queries", type=int, default=256, help="held-out real queries")
    p.add_argument("--singles", type=int, default=32, help="single-query timings (median)")
    p.add_argument("--cache", default="/work/bench-cache", help="cache folder (outside the repo)")
    p.add_argument("--calibration-size", type=int, default=10_000)
    p.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads for textcl and sentence-transformers alike (default 1: on "
        "a loaded 2-core box OpenMP's spinning threads make a 1-query FAISS search 100x "
        "slower; 0: FAISS's default)",
    )
    p.add_argument(
        "--real-index",
        default=None,
        help="use the vectors of this index folder as the real rows (default: encode the "
        "local text with --model into --cache)",
    )
    p.add_argument(
        "--hnsw-max",
        type=int,
        default=1_000_000,
        help="largest corpus for the HNSW builds (float hnsw and binary-hnsw)",
    )
    p.add_argument("--st-uint8-max", type=int, default=1_000_000)
    p.add_argument(
        "--multipliers",
        type=lambda v: [int(x) for x in v.split(",") if x.strip()],
        default=[4],
        help="rescore multipliers of the binary-flat search, textcl and ST alike (comma "
        "separated; default 4)",
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma list: hnsw,ivfpq,int8,ubinary,binary-flat,binary-hnsw,st,rss",
    )
    args = p.parse_args(argv)
    if args.faiss_threads > 0:
        import faiss  # lazy: optional dependency

        faiss.omp_set_num_threads(args.faiss_threads)
    data = data_root(args.data, contains="corpus")
    cache = Path(args.cache)
    if args.real_index:
        real_all = EmbeddingIndex(args.real_index).vectors()
    else:
        real_all = real_embeddings(data, cache, model_path(args.model))
    held = np.arange(len(real_all)) % HOLD_OUT == 7
    q = np.ascontiguousarray(real_all[held][: args.queries])
    real = np.ascontiguousarray(real_all[~held])
    print(f"{len(real)} real corpus vectors, {len(q)} held-out queries", flush=True)
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    headers = [
        "n",
        "config",
        "recall@10",
        "qps_batch1",
        "qps_batch64",
        "ram_bytes_per_vector",
        "disk_bytes_per_vector",
        "build_s",
        "peak_rss_bytes",
    ]
    sizes = [int(s) for s in args.sizes.split(",")]
    for i, n in enumerate(sizes):
        rows += run_size(n, args, real, q)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        notes = [
            f"loadavg at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, now "
            f"{os.getloadavg()[0]:.1f} (2 cores shared with other jobs: loaded box)",
            f"{len(real)} real MiniLM corpus vectors + Gaussian draws matched to their mean "
            f"and covariance; {len(q)} held-out real sentences as queries; recall@10 vs "
            "exact fp32",
            f"benchmark process ru_maxrss {maxrss / 2**20:.2f} GiB; FAISS OpenMP threads "
            f"{args.faiss_threads or 'default'} (both libraries)",
        ]
        if i + 1 < len(sizes):
            notes.append(f"partial record: sizes {sizes[: i + 1]} of {sizes} done")
        # written after every size, so a run cut short keeps what it measured
        write_result("search_scale", rows, args.json, headers=headers, notes=notes, data=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
