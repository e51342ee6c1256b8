"""Peak CPU memory of one SimCSE training step with and without the gradient cache.

Each configuration runs in a fresh subprocess (so peaks do not mix); the subprocess reports
its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after loading the
model and tokenising (``base``) and after one training step (``peak``: two dropout views of the
batch, InfoNCE, backward, AdamW step). ``step = peak - base`` is what the step itself added.

    python -m benchmarks gradcache_memory                       # MiniLM, batch 1024, chunk 64
    python -m benchmarks gradcache_memory --batch 256 --chunk 32 --model /path/to/model

Sentences: the first ``--batch`` lines of ``$TEXTCL_DATA/corpus/wiki_sentences_*.txt`` (or of
``--corpus``); synthetic sentences if neither exists.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import (
    add_common_args,
    benchmark_command,
    data_root,
    model_path,
    parser_for,
    repo_env,
    write_result,
)


def _mib_maxrss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sentences(n: int, corpus: str | None) -> tuple[list[str], str]:
    candidates = [Path(corpus)] if corpus else []
    with contextlib.suppress(FileNotFoundError):
        candidates += sorted((data_root() / "corpus").glob("wiki_sentences_*.txt"))
    for path in candidates:
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            lines = [ln for ln in lines if ln]
            if len(lines) >= n:
                return lines[:n], str(path)
    words = [
        "the",
        "a",
        "cat",
        "dog",
        "runs",
        "quickly",
        "over",
        "lazy",
        "field",
        "river",
        "sings",
        "under",
        "bright",
        "old",
        "new",
    ]
    out = [
        " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8 + i % 20)) for i in range(n)
    ]
    return out, "synthetic"


def worker(args: argparse.Namespace) -> None:
    import torch

    from textcl import SentenceEncoder
    from textcl.gradcache import grad_cache_backward
    from textcl.losses import InfoNCE

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = SentenceEncoder.from_pretrained(args.model, pooling="mean")
    encoder.train()
    texts, source = _sentences(args.batch, args.corpus)
    batch = encoder.tokenize(texts, max_length=args.max_length)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5)
    criterion = InfoNCE(temperature=0.05)
    base = _mib_maxrss()
    start = time.perf_counter()
    inputs = [batch, batch]  # SimCSE: two dropout views of the same sentences

    def loss_fn(z: Sequence[torch.Tensor]) -> torch.Tensor:
        return criterion(z[0], z[1])

    if args.chunk:
        loss = grad_cache_backward(encoder, inputs, loss_fn, chunk_size=args.chunk)
    else:
        plain = loss_fn([encoder(b) for b in inputs])
        plain.backward()
        loss = plain.detach()
    optimizer.step()
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "chunk": args.chunk,
                "batch": args.batch,
                "tokens": int(batch["attention_mask"].sum()) * 2,
                "padded_length": int(batch["input_ids"].shape[1]),
                "base_mib": base,
                "peak_mib": _mib_maxrss(),
                "seconds": seconds,
                "loss": float(loss),
                "threads": torch.get_num_threads(),
                "sentences": source,
            }
        )
    )


def run_config(args: argparse.Namespace, chunk: int) -> dict[str, float]:
    cmd = benchmark_command(
        "gradcache_memory",
        "--worker",
        "--model",
        str(args.model),
        "--batch",
        str(args.batch),
        "--chunk",
        str(chunk),
        "--max-length",
        str(args.max_length),
        "--threads",
        str(args.threads),
    )
    if args.corpus:
        cmd += ["--corpus", args.corpus]
    env = repo_env(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = parser_for("gradcache_memory", __doc__)
    add_common_args(parser, data=False)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=64, help="grad cache chunk (0 = none)")
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--corpus", default=None, help="a text file, one sentence a line")
    parser.add_argument(
        "--skip-plain",
        action="store_true",
        help="only the grad cache run (when the plain step would not fit in memory)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model = str(model_path(args.model))
    if args.worker:
        worker(args)
        return 0
    if args.chunk < 1:
        raise SystemExit("--chunk must be >= 1 for the comparison")
    print(f"model {args.model}; batch {args.batch}, max_length {args.max_length}, 2 views")
    rows = [] if args.skip_plain else [("plain", run_config(args, 0))]
    rows.append((f"grad cache {args.chunk}", run_config(args, args.chunk)))
    print(
        f"{'config':<16}{'base MiB':>10}{'peak MiB':>10}{'step MiB':>10}{'seconds':>9}{'loss':>9}"
    )
    for name, r in rows:
        print(
            f"{name:<16}{r['base_mib']:>10.0f}{r['peak_mib']:>10.0f}"
            f"{r['peak_mib'] - r['base_mib']:>10.0f}{r['seconds']:>9.1f}{r['loss']:>9.4f}"
        )
    notes = []
    if len(rows) == 2:
        (_, p), (_, g) = rows
        notes.append(_ratios(p, g))
        print(notes[0])
    write_result(
        "gradcache_memory",
        [
            [
                r["batch"],
                "plain" if name == "plain" else f"gradient cache, chunk {args.chunk}",
                f"{r['base_mib']:.0f}",
                f"{r['peak_mib']:.0f}",
                f"{r['peak_mib'] - r['base_mib']:.0f}",
                f"{r['seconds']:.1f}",
            ]
            for name, r in rows
        ],
        args.json,
        headers=["batch", "configuration", "base MiB", "peak MiB", "step MiB", "seconds"],
        notes=notes,
        data={name: r for name, r in rows},
    )
    return 0


def _ratios(p: dict[str, float], g: dict[str, float]) -> str:
    """The plain / gradient-cache comparison line."""
    return (
        f"peak ratio plain / grad cache: {p['peak_mib'] / g['peak_mib']:.2f}x; "
        f"step memory ratio: {(p['peak_mib'] - p['base_mib']) / max(g['peak_mib'] - g['base_mib'], 1):.2f}x; "
        f"time ratio grad cache / plain: {g['seconds'] / p['seconds']:.2f}x "
        f"({p['tokens']} tokens, padded length {p['padded_length']}, threads {p['threads']}, "
        f"sentences: {p['sentences']})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
