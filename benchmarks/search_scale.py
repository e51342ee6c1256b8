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
  10,000 rows, float32 rescoring shards; run as a subprocess), exact int8 candidates,
  multiplier 4: once with every batch through the chunked numpy product ("before") and once
  with the default (FAISS scalar quantizer built from the stored codes for batches of up to
  16 queries, "after");
* ``textcl binary + rescore``: ``--dtype ubinary`` with int8 rescoring shards (and, up to
  ``--float-rescore-max``, float32 ones: what int8 rescoring itself loses); exact Hamming in
  numpy with the default candidate pool, ``binary-flat`` (``faiss.IndexBinaryFlat``) over
  ``--multipliers`` x ``--pools`` (pool 0: Hamming candidates rescored directly; a pool P:
  the Hamming top P re-ranked by the float query against their sign vectors first) and
  ``binary-hnsw`` up to ``--hnsw-max``;
* ``ST ubinary faiss`` / ``ST uint8 faiss``: ``quantize_embeddings`` (uint8 calibrated on
  the same first 10,000 rows) + ``semantic_search_faiss(corpus_index=..., exact=True,
  rescore_multiplier=4)`` (ST keeps uint8 in a float ``IndexFlatIP``: 4 bytes a dimension);
  ``ST int8 usearch`` when usearch is installed (skipped otherwise).

Peak RSS of a binary search over each size: a fresh process (``python -c``) imports
textcl, opens the ``ubinary`` index (int8 rescoring rows), runs the queries at batch 1 and
at batch 64 exactly (numpy Hamming; batch 1 over ``--rss-exact-singles`` queries) or through
binary-flat, with the default candidate pool and multiplier, then reports its peak resident
set (``VmHWM``; see :func:`peak_rss` for why not ``ru_maxrss``), the peak right after
opening, and its anonymous / file-backed resident memory at the end.

Memory of the benchmark process itself: the float shards are drawn 100,000 rows at a time,
quantized indexes are written by a ``textcl index quantize`` subprocess, and above
``--mmap-exact-max`` the exact ground truth and the peer's index build read the float
shards by ``os.pread`` (:class:`FloatRows`) instead of mapping them, so a 5M run does not
hold 7.7 GB of mapped pages.

Run::

    nice .venv/bin/python -m benchmarks search_scale --sizes 1000000 --hnsw-max 100000 \\
        --multipliers 4,10,25 --pools 0,1000,2000,5000 --cache /work/bench-cache \\
        --json benchmarks/results/390_search_scale_1m.json
    nice .venv/bin/python -m benchmarks search_scale --sizes 5000000 --singles 8 \\
        --skip ivfpq --multipliers 4,10 --pools 0,2000 --cache /work/bench-cache \\
        --json benchmarks/results/391_search_scale_5m.json
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
from textcl.search import EmbeddingIndex, binary_index, build_faiss_index, exact_search
from textcl.search.binary_index import DEFAULT_CANDIDATE_POOL, default_pool
from textcl.search.encode import npy_bytes, shard_names, texts_jsonl
from textcl.search.faiss_index import FAISS_KINDS, has_faiss
from textcl.search.manifest import Manifest, ShardInfo
from textcl.search.quantize import calibration_ranges
from textcl.search.rescore import RowFile

K = 10
SHARD = 500_000
DRAW = 100_000
HOLD_OUT = 50
SQ8_DEFAULT = binary_index.SQ8_MAX_BATCH


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
    their mean and covariance (renormalised); written shard by shard (drawn 100,000 rows at
    a time), reused when the manifest says the same."""
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
        emb = np.empty((hi - lo, real.shape[1]), dtype=np.float32)
        own = max(0, min(hi, len(real)) - lo)
        emb[:own] = real[lo : lo + own]
        for a in range(own, hi - lo, DRAW):
            b = min(hi - lo, a + DRAW)
            z = rng.standard_normal((b - a, real.shape[1]))
            x = (mu + z @ chol.T).astype(np.float32)
            emb[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
        ids = [str(r) for r in range(lo, hi)]
        lines, offsets = texts_jsonl(ids, [f"row {r}" for r in ids])
        names = shard_names(i)
        blobs = (npy_bytes(emb), lines, npy_bytes(offsets))
        del emb
        for name, blob in zip(names, blobs, strict=True):
            (folder / name).write_bytes(blob)
        sha = [hashlib.sha256(b).hexdigest() for b in blobs]
        shards.append(
            ShardInfo(i, lo, hi - lo, *names, sha[0], sha[1], 0, sha[2], *map(len, blobs))
        )
        del blobs
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


class FloatRows:
    """The float32 shards of an index folder read with ``os.pread``
    (:class:`~textcl.search.rescore.RowFile`): exact search and the peer's index build read
    them chunk by chunk, so this process does not keep gigabytes of mapped pages."""

    def __init__(self, folder: Path) -> None:
        m = Manifest.load(folder)
        self.shards = [RowFile(folder / s.embeddings) for s in m.shards]
        self.starts = np.cumsum([0] + [s.rows for s in m.shards])

    def vectors(self, lo: int, hi: int) -> np.ndarray:
        parts = []
        for s, rows in enumerate(self.shards):
            a, b = max(lo, int(self.starts[s])), min(hi, int(self.starts[s + 1]))
            if a < b:
                parts.append(rows[a - int(self.starts[s]) : b - int(self.starts[s])])
        return np.concatenate(parts)


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
    fn(q[:1])  # a first single query pays one-off loads (e.g. the int8 scalar quantizer)
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


def disk_bytes(folder: Path, kind: str | None = None) -> float:
    m = Manifest.load(folder)
    total = sum(s.bytes + max(s.rescore_bytes, 0) for s in m.shards)
    return (total + (int(m.faiss[kind]["bytes"]) if kind else 0)) / m.count


PEAK_RSS = """
import json, sys, numpy as np
from textcl.search import EmbeddingIndex
def status(key):
    return 1024 * int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1])
q = np.load(sys.argv[2])[: int(sys.argv[5])]
idx = EmbeddingIndex(sys.argv[1])
batch = int(sys.argv[4])
opened = status("VmHWM:")
for lo in range(0, len(q), batch):
    idx.search_vectors(q[lo:lo + batch], 10, faiss_kind=sys.argv[3] or None)
print(json.dumps({"vmhwm": status("VmHWM:"), "after_open": opened, "rss_anon": status("RssAnon:"),
                  "rss_file": status("RssFile:")}))
"""


def peak_rss(folder: Path, queries: Path, kind: str, batch: int, count: int) -> dict[str, int]:
    """Peak resident memory (bytes) of a fresh process that opens ``folder`` and searches
    ``count`` queries ``batch`` at a time: ``VmHWM`` of ``/proc/self/status`` (Linux carries
    a forking parent's high-water mark into ``ru_maxrss`` across ``exec``, so ``ru_maxrss``
    of a child of this big process reads the parent's peak; ``VmHWM`` belongs to the new
    memory image), with the peak right after opening and the anonymous / file-backed
    resident memory at the end."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", PEAK_RSS, str(folder), str(queries), kind, str(batch), str(count)]
    out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def quantize_cli(base: Path, folder: Path, dtype: str, rescore: str, calibration: int) -> float:
    """``textcl index quantize`` in a subprocess (its memory stays out of this process);
    returns its wall seconds (0 when the folder is already complete)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "textcl.cli", "index", "quantize", "--index", str(base)]
    cmd += ["--output", str(folder), "--dtype", dtype, "--rescore-dtype", rescore]
    cmd += ["--calibration-size", str(calibration)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def run_size(n: int, args: Any, real: np.ndarray, q: np.ndarray) -> list[dict[str, Any]]:
    cache = Path(args.cache)
    dim = real.shape[1]
    t0 = time.perf_counter()
    base = write_float_index(cache / f"scale-{n}" / "float", n, real, args.seed)
    print(f"[{n}] float index ready in {time.perf_counter() - t0:.0f} s", flush=True)
    floats = FloatRows(base)
    rows: list[dict[str, Any]] = []
    skip = set(args.skip.split(",")) if args.skip else set()

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

    def search_fn(idx: EmbeddingIndex, **kw: Any) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: idx.search_vectors(x, K, **kw)[1]

    if n <= args.mmap_exact_max:  # the library's exact search (memory-mapped shards)
        mapped = EmbeddingIndex(base)
        exact = timings(search_fn(mapped), q, args.singles)
        name = "textcl exact fp32"
        del mapped
    else:  # the same exact_search over the shards read by pread (no mapped pages kept)
        exact = timings(lambda x: exact_search(x, floats.shards, top_k=K)[1], q, args.singles)
        name = "textcl exact fp32 (shards read by pread)"
    truth = exact["found"]
    record(name, None, 4 * dim, disk_bytes(base), exact)

    fidx = EmbeddingIndex(base)
    for kind, label, params in (
        ("hnsw", "textcl hnsw (m16, efC40, efS128)", {"m": 16, "ef_construction": 40}),
        ("ivfpq", "textcl ivfpq (defaults)", {}),
    ):
        if kind in skip or (kind == "hnsw" and n > args.hnsw_max) or kind not in FAISS_KINDS:
            continue
        if kind not in fidx.manifest.faiss:  # else: built by an earlier run, as recorded
            build_faiss_index(base, kind, **params)
        fidx = EmbeddingIndex(base)
        e = fidx.manifest.faiss[kind]
        res = timings(search_fn(fidx, faiss_kind=kind), q, args.singles)
        record(label, e["build_seconds"], e["bytes"] / n, disk_bytes(base, kind), res)
    del fidx

    if "int8" not in skip:
        folder = cache / f"scale-{n}" / "int8"
        build = quantize_cli(base, folder, "int8", "float32", args.calibration_size)
        idx = EmbeddingIndex(folder)
        disk = disk_bytes(folder)
        label = "textcl int8 + rescore (float32 rows), exact"
        # before: every batch through the chunked numpy product (SQ8 off)
        binary_index.SQ8_MAX_BATCH = 0
        res = timings(search_fn(idx), q, args.singles_slow)
        record(f"{label}, numpy (before)", build, dim, disk, res)
        binary_index.SQ8_MAX_BATCH = SQ8_DEFAULT
        if has_faiss():
            res = timings(search_fn(idx), q, args.singles)
            record(f"{label}, FAISS SQ8 at batch <= {SQ8_DEFAULT} (after)", build, dim, disk, res)
        del idx

    binaries: dict[str, Path] = {}
    for rescore in args.binary_rescore:
        if "ubinary" in skip or (rescore == "float32" and n > args.float_rescore_max):
            continue
        folder = cache / f"scale-{n}" / ("ubinary" if rescore == "int8" else f"ubinary-{rescore}")
        build = quantize_cli(base, folder, "ubinary", rescore, args.calibration_size)
        binaries[rescore] = folder
        idx = EmbeddingIndex(folder)
        label = f"textcl binary + rescore ({rescore} rows)"
        if "binary-exact" not in skip:
            res = timings(search_fn(idx), q, args.singles)
            record(
                f"{label}, exact, default pool {default_pool(n)}",
                build,
                dim / 8,
                disk_bytes(folder),
                res,
            )
        for kind in ("binary-flat", "binary-hnsw"):
            if kind in skip or (kind == "binary-hnsw" and n > args.hnsw_max):
                continue
            if kind not in idx.manifest.faiss:
                build_faiss_index(folder, kind, m=16, ef_construction=40)
            idx = EmbeddingIndex(folder)
            e = idx.manifest.faiss[kind]
            kbuild = float(e["build_seconds"])
            pools = args.pools if kind == "binary-flat" else [0]
            for mult in args.multipliers:
                for pool in pools:
                    res = timings(
                        search_fn(
                            idx, faiss_kind=kind, rescore_multiplier=mult, candidate_pool=pool
                        ),
                        q,
                        args.singles,
                    )
                    record(
                        f"{label}, {kind}, multiplier {mult}, pool {pool or 'off'}",
                        build + kbuild,
                        e["bytes"] / n,
                        disk_bytes(folder, kind),
                        res,
                    )
        del idx

    if "st" not in skip:
        st_side(floats, q, truth, n, args, record)
    if "int8" in binaries and "rss" not in skip:
        qfile = cache / "queries.npy"
        np.save(qfile, q)
        for kind in ("", "binary-flat"):
            if kind and kind in skip:
                continue
            for batch in (1, 64):
                count = len(q) if kind or batch > 1 else min(len(q), args.rss_exact_singles)
                rss = peak_rss(binaries["int8"], qfile, kind, batch, count)
                rows.append(
                    {
                        "n": n,
                        "config": f"peak RSS, binary {kind or 'exact'} search, {count} queries "
                        f"at batch {batch}",
                        "peak_rss_bytes": rss["vmhwm"],
                        "detail": rss,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def st_side(
    floats: FloatRows,
    q: np.ndarray,
    truth: np.ndarray,
    n: int,
    args: Any,
    record: Callable[..., None],
) -> list[dict[str, Any]]:
    """sentence-transformers' quantize_embeddings + semantic_search_faiss in the same run."""
    import faiss  # lazy: optional dependency
    from sentence_transformers.quantization import quantize_embeddings, semantic_search_faiss

    dim = floats.shards[0].shape[1]
    calib = floats.vectors(0, args.calibration_size)
    ranges = calibration_ranges(calib)
    for precision in ("ubinary", "uint8"):
        if precision == "uint8" and n > args.st_uint8_max:
            print(f"[{n}] ST uint8 skipped: a float IndexFlatIP of {n} vectors (--st-uint8-max)")
            continue
        t0 = time.perf_counter()
        index = faiss.IndexBinaryFlat(dim) if precision == "ubinary" else faiss.IndexFlatIP(dim)
        for lo in range(0, n, 100_000):
            x = floats.vectors(lo, min(n, lo + 100_000))
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
    p.add_argument(
        "--singles-slow",
        type=int,
        default=8,
        help="single-query timings of the int8 numpy path (about 1 s a query at 1M)",
    )
    p.add_argument(
        "--pools",
        type=lambda v: [int(x) for x in v.split(",") if x.strip()],
        default=[0, DEFAULT_CANDIDATE_POOL],
        help="candidate pools of the binary-flat search (0: the sign stage off)",
    )
    p.add_argument(
        "--binary-rescore",
        type=lambda v: [x for x in v.split(",") if x.strip()],
        default=["int8", "float32"],
        help="rescoring dtypes of the binary index (float32: what int8 rescoring loses)",
    )
    p.add_argument(
        "--float-rescore-max",
        type=int,
        default=1_000_000,
        help="largest corpus for the binary index with float32 rescoring rows (4 D bytes a "
        "vector on disk)",
    )
    p.add_argument(
        "--mmap-exact-max",
        type=int,
        default=1_000_000,
        help="largest corpus whose exact fp32 search (the ground truth) runs memory-mapped "
        "(the library's path); larger ones read the shards by pread so this process does "
        "not hold the mapped float32 pages",
    )
    p.add_argument(
        "--rss-exact-singles",
        type=int,
        default=64,
        help="queries of the batch-1 peak-RSS run of the exact (numpy Hamming) search",
    )
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
        help="comma list: hnsw,ivfpq,int8,ubinary,binary-exact,binary-flat,binary-hnsw,st,rss",
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
