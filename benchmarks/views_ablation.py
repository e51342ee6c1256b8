"""View ablation: which pair of views to train with, on the same sentences, seed and budget.

From the offline all-MiniLM-L6-v2, trains one short unsupervised run per view pair
(``view_a/view_b`` as ``textcl train --view-a/--view-b`` spell them) on the first
``--sentences`` lines of the wiki corpus, every run with the same seed, steps, batch size,
learning rate and data order, then prints STS-B dev Spearman (x100), alignment and
uniformity (Wang & Isola 2020, SimCSE's protocol on STS-B dev; lower is better for both)
for each pair in one table, next to the untrained model.

A guide for choosing a recipe, not a test: a 60-step run from a model that is already a
trained sentence encoder mostly measures how much each augmentation disturbs it.

    HF_HUB_OFFLINE=1 python -m benchmarks views_ablation
    python -m benchmarks views_ablation --steps 200 --pairs dropout/dropout,shuffle/feature_cutoff
    python -m benchmarks views_ablation --seeds 42,43,44   # mean +/- std over seeds

With several ``--seeds`` every pair is trained once per seed (the seed sets the data order,
the dropout masks and the views' random draws), and a second table gives the mean and the
sample standard deviation over seeds, so that differences between pairs can be read against
the run-to-run spread.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_common_args,
    data_root,
    markdown_table,
    model_path,
    parser_for,
    write_result,
)

DEFAULT_PAIRS = (
    "dropout/dropout",  # unsupervised SimCSE
    "shuffle/feature_cutoff",  # ConSERT's best unsupervised pair
    "mask/dropout",
    "token_cutoff/dropout",
    "span_cutoff/dropout",
    "repetition/dropout",  # ESimCSE's positive view
)
CORPUS_FILE = "corpus/wiki_sentences_11914.txt"


def corpus_root(arg: str | None) -> Path:
    """The data root holding the wiki corpus (and sts/); exits with a message without one."""
    try:
        return data_root(arg, contains=CORPUS_FILE)
    except FileNotFoundError:
        sys.exit(f"no corpus: pass --data (a folder with {CORPUS_FILE} and sts/)")


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        a, sep, b = item.strip().partition("/")
        if not sep or not a or not b:
            raise SystemExit(f"--pairs: {item!r} is not VIEW_A/VIEW_B")
        pairs.append((a, b))
    return pairs


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: {text!r} is not a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds: {text!r} needs distinct integers")
    return seeds


def first_sentences(corpus: Path, n: int, out: Path) -> int:
    lines = []
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                lines.append(line.strip())
                if len(lines) == n:
                    break
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def prepare_workspace(
    args: argparse.Namespace, root: Path, prefix: str
) -> tuple[Any, Path, bool, Path, int]:
    """Threads, the machine line, the caching STS-B dev evaluator and the work folder with
    the first ``args.sentences`` corpus sentences: ``(evaluate, work, keep, train_file, n)``
    (shared with recipes_ablation.py)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPU(s), torch threads "
        f"{torch.get_num_threads()}, cuda={torch.cuda.is_available()}; torch {torch.__version__}"
    )
    evaluate = caching_evaluator(str(root))
    keep = args.output_dir is not None
    work = Path(args.output_dir) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    train_file = work / "train_sentences.txt"
    n = first_sentences(root / CORPUS_FILE, args.sentences, train_file)
    return evaluate, work, keep, train_file, n


def main(argv: list[str] | None = None) -> int:
    from textcl import SentenceEncoder
    from textcl.train import TrainConfig, train

    ap = parser_for("views_ablation", __doc__)
    add_common_args(ap, seed=42)
    ap.add_argument("--pairs", default=",".join(DEFAULT_PAIRS), help="VIEW_A/VIEW_B,...")
    ap.add_argument("--sentences", type=int, default=2000, help="first N corpus sentences")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--pooling", default="mean", help="MiniLM is a mean-pooled model")
    ap.add_argument("--head", default="none", choices=("none", "train", "always"))
    ap.add_argument(
        "--seeds", default=None, help="comma-separated seeds (overrides --seed): mean +/- std"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--output-dir", default=None, help="keep the runs here (default: temp)")
    ap.add_argument(
        "--no-baseline", action="store_true", help="skip evaluating the untrained model"
    )
    args = ap.parse_args(argv)

    model = model_path(args.model)
    root = corpus_root(args.data)
    pairs = parse_pairs(args.pairs)
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]

    evaluate, work, keep, train_file, n = prepare_workspace(args, root, "views_ablation_")
    print(
        f"model {model}; {n} sentences; {args.steps} steps x batch {args.batch_size}, "
        f"lr {args.lr}, temperature {args.temperature}, max length {args.max_length}, "
        f"pooling {args.pooling}, head {args.head}, seeds {seeds}, device {args.device}"
    )

    rows: list[dict[str, Any]] = []
    if not args.no_baseline:
        start = time.perf_counter()
        base = SentenceEncoder.from_pretrained(model, pooling=args.pooling)
        rows.append({"view_a": "(untrained)", "view_b": "", "seconds": 0.0, **evaluate(base)})
        del base
        print(f"untrained model evaluated in {time.perf_counter() - start:.0f} s", flush=True)

    for seed in seeds:
        for view_a, view_b in pairs:
            name = f"{view_a}__{view_b}".replace(":", "_").replace("+", "-")
            run_dir = work / (name if len(seeds) == 1 else f"{name}__seed{seed}")
            config = TrainConfig(
                model=str(model),
                train_file=str(train_file),
                output_dir=str(run_dir),
                objective="unsup",
                view_a=view_a,
                view_b=view_b,
                pooling=args.pooling,
                head=args.head,
                temperature=args.temperature,
                lr=args.lr,
                batch_size=args.batch_size,
                max_steps=args.steps,
                max_length=args.max_length,
                eval_steps=0,  # evaluate once, at the end
                seed=seed,
                device=args.device,
                data_dir=str(root),
                overwrite=True,  # a re-run with --output-dir redoes each run
            )
            t0 = time.perf_counter()
            result = train(config, evaluator=evaluate)
            seconds = time.perf_counter() - t0
            metrics = result.final_metrics or {}
            rows.append(
                {"view_a": view_a, "view_b": view_b, "seed": seed, "seconds": seconds, **metrics}
            )
            print(f"{view_a}/{view_b} seed {seed}: done in {seconds:.0f} s: {metrics}", flush=True)

    print()
    print(format_table(rows))
    tables = [markdown_table(format_table(rows))]
    if len(seeds) > 1:
        print()
        print(format_summary(rows))
        tables.insert(0, markdown_table(format_summary(rows)))
    write_result("views_ablation", [], args.json, tables=tables, data=rows)
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


def caching_evaluator(data_dir: str, batch_size: int = 128) -> Any:
    """The trainer's STS-B dev evaluator (Spearman, alignment, uniformity) with each dev
    sentence embedded once per evaluation instead of once per metric (same numbers)."""
    import numpy as np

    from textcl.evaluation import evaluate_sts
    from textcl.evaluation.alignment import alignment_uniformity
    from textcl.train.trainer import BEST_METRIC

    def evaluate(encoder: Any) -> dict[str, float]:
        cache: dict[str, np.ndarray] = {}

        def embed(texts: list[str]) -> np.ndarray:
            todo = [t for t in dict.fromkeys(texts) if t not in cache]
            if todo:
                emb = encoder.encode(todo, batch_size=batch_size, normalize=False)
                cache.update(zip(todo, emb, strict=True))
            return np.stack([cache[t] for t in texts])

        result = evaluate_sts(
            embed, tasks=("stsb",), split="dev", data_dir=data_dir, batch_size=batch_size
        )
        metrics = {BEST_METRIC: float(result["tasks"]["stsb"]["spearman"])}
        metrics.update(alignment_uniformity(embed, data_dir=data_dir, batch_size=batch_size))
        return metrics

    return evaluate


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per view pair."""
    spearman_key = next((k for r in rows for k in r if k.endswith("spearman")), "stsb_dev_spearman")
    with_seed = any("seed" in r for r in rows)
    lines = [
        "| view_a | view_b |"
        + (" seed |" if with_seed else "")
        + " STS-B dev Spearman | alignment | uniformity | run s |",
        "|---|---|" + ("---:|" if with_seed else "") + "---:|---:|---:|---:|",
    ]
    for r in rows:

        def cell(key: str, fmt: str, row: dict[str, Any] = r) -> str:
            value = row.get(key)
            return format(value, fmt) if isinstance(value, (int, float)) else "-"

        seed = f" {r.get('seed', '')} |" if with_seed else ""
        lines.append(
            f"| {r['view_a']} | {r['view_b']} |{seed} {cell(spearman_key, '.2f')} | "
            f"{cell('alignment', '.3f')} | {cell('uniformity', '.3f')} | "
            f"{cell('seconds', '.0f')} |"
        )
    return "\n".join(lines)


def format_summary(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean and sample standard deviation over seeds, one row per pair."""
    import statistics

    spearman_key = next((k for r in rows for k in r if k.endswith("spearman")), "stsb_dev_spearman")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if "seed" in r:
            groups.setdefault((r["view_a"], r["view_b"]), []).append(r)
    lines = [
        "| view_a | view_b | seeds | STS-B dev Spearman | alignment | uniformity |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (view_a, view_b), group in groups.items():

        def stat(key: str, fmt: str, group: list[dict[str, Any]] = group) -> str:
            values = [float(g[key]) for g in group if isinstance(g.get(key), (int, float))]
            if not values:
                return "-"
            if len(values) == 1:
                return format(values[0], fmt)
            mean, std = statistics.mean(values), statistics.stdev(values)
            return f"{mean:{fmt}} +/- {std:{fmt}}"

        lines.append(
            f"| {view_a} | {view_b} | {len(group)} | {stat(spearman_key, '.2f')} | "
            f"{stat('alignment', '.3f')} | {stat('uniformity', '.3f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
