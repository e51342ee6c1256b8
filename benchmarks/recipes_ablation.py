"""Recipes ablation (issue 17): SimCSE vs + momentum queue, ESimCSE, PromptBERT and
+ false-negative control, on the CPU learning-signal probe.

From the offline all-MiniLM-L6-v2 with ``cls`` pooling (STS-B dev about 79.7 before
training), every recipe trains ``--steps`` steps of batch ``--batch-size`` on the first
``--sentences`` lines of the shared Wikipedia sentences, once per seed, with the same
learning rate, temperature and data order. For each recipe the script prints the mean +/-
sample std over seeds of STS-B dev Spearman (x100), alignment and uniformity (Wang & Isola
2020; lower is better for both), then the 7-task STS average (STS12-16, STS-B, SICK-R test;
:func:`textcl.evaluation.evaluate_sts`) of the recipe's best run (by STS-B dev).

Recipes (the papers' settings where they apply to this budget):

* ``simcse``: dropout / dropout (Gao et al. 2021).
* ``queue``: SimCSE + a momentum queue of 160 keys (2.5x batch 64), momentum 0.995.
* ``esimcse``: word repetition (dup rate 0.32) on the positive + the queue (Wu et al. 2022).
* ``promptbert``: ``prompt`` pooling, PromptBERT's two BERT templates as the two views,
  template denoising in training (Jiang et al. 2022, its ``unsup-bert`` recipe).
  Each PromptBERT run is also scored with denoising at inference (``promptbert+denoise``
  rows: the same trained weights, as PromptBERT's supervised recipe evaluates), so that
  variant costs no extra training.
* ``fn``: SimCSE + false-negative control (``fn_margin``, GISTEmbed-style).

With ``--json`` the rows are rewritten after every run, so a killed ablation keeps what it
finished.

    HF_HUB_OFFLINE=1 python -m benchmarks recipes_ablation               # 3 seeds, 100 steps
    python -m benchmarks recipes_ablation --steps 5 --seeds 42           # smoke test
    python -m benchmarks recipes_ablation --recipes promptbert --seeds 42
    python -m benchmarks recipes_ablation --recipes simcse --precision bf16  # bf16 training
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_common_args,
    markdown_table,
    model_path,
    parser_for,
    write_result,
)
from benchmarks.views_ablation import (
    corpus_root,
    parse_seeds,
    prepare_workspace,
)

RECIPES: dict[str, dict[str, Any]] = {
    "simcse": {},
    "queue": {"queue_size": 160, "momentum": 0.995},
    "esimcse": {"view_b": "repetition:0.32", "queue_size": 160, "momentum": 0.995},
    "promptbert": {"pooling": "prompt", "prompt_denoise": "train"},
    "fn": {"fn_margin": 0.0},
}
"""Each recipe's TrainConfig fields on top of the shared ones (SimCSE: dropout/dropout)."""
DENOISED = "promptbert+denoise"
"""Rows of PromptBERT runs scored with template denoising at inference (no extra training)."""
STS_TASKS = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")


def recipe_fields(name: str, args: argparse.Namespace) -> dict[str, Any]:
    extra = dict(RECIPES[name])
    if "fn_margin" in extra:
        extra["fn_margin"] = args.fn_margin
    if "queue_size" in extra:
        extra["queue_size"], extra["momentum"] = args.queue_size, args.momentum
    return extra


def write_json(path: str | None, rows: list[dict[str, Any]], best: dict[str, Any]) -> None:
    """The result record of the rows so far (the summary table; ``data``: the rows and the
    best runs), atomically (a killed ablation keeps its rows)."""
    if not path:
        return
    best_out = {
        k: {kk: str(vv) if kk == "dir" else vv for kk, vv in v.items()} for k, v in best.items()
    }
    write_result(
        "recipes_ablation",
        [],
        path,
        tables=[markdown_table(summary_table(rows, best))],
        data={"rows": rows, "best": best_out},
    )


def sts_average(model: Any, data_dir: str, batch_size: int = 128) -> float:
    """7-task STS test average (x100) of an encoder or a saved model folder."""
    from textcl import SentenceEncoder
    from textcl.evaluation import evaluate_sts

    enc = SentenceEncoder.load(model) if isinstance(model, Path) else model
    result = evaluate_sts(
        enc, tasks=STS_TASKS, split="test", data_dir=data_dir, batch_size=batch_size
    )
    return float(result["average"])


def summary_table(rows: list[dict[str, Any]], best: dict[str, dict[str, Any]]) -> str:
    import statistics

    lines = [
        "| recipe | seeds | STS-B dev Spearman | alignment | uniformity | best run: 7-task STS avg | s/run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["recipe"], []).append(r)
    for name, group in groups.items():

        def stat(key: str, fmt: str, group: list[dict[str, Any]] = group) -> str:
            values = [float(g[key]) for g in group if isinstance(g.get(key), (int, float))]
            if not values:
                return "-"
            if len(values) == 1:
                return format(values[0], fmt)
            return f"{statistics.mean(values):{fmt}} +/- {statistics.stdev(values):{fmt}}"

        avg = best.get(name, {}).get("sts_avg")
        seed = best.get(name, {}).get("seed")
        avg_text = (
            "-" if avg is None else f"{avg:.2f}" + ("" if seed is None else f" (seed {seed})")
        )
        lines.append(
            f"| {name} | {len(group) if 'seed' in group[0] else '-'} | "
            f"{stat('stsb_dev_spearman', '.2f')} | {stat('alignment', '.3f')} | "
            f"{stat('uniformity', '.3f')} | {avg_text} | {stat('seconds', '.0f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from textcl import SentenceEncoder
    from textcl.train import TrainConfig, train

    ap = parser_for("recipes_ablation", __doc__)
    add_common_args(ap)
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipes")
    ap.add_argument("--sentences", type=int, default=11914, help="first N corpus sentences")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument(
        "--prompt-max-length",
        type=int,
        default=48,
        help="max length of PromptBERT runs (the template takes ~12 tokens of it)",
    )
    ap.add_argument("--pooling", default="cls", help="pooling of the non-prompt recipes")
    ap.add_argument("--head", default="none", choices=("none", "train", "always"))
    ap.add_argument("--queue-size", type=int, default=160)
    ap.add_argument("--momentum", type=float, default=0.995)
    ap.add_argument("--fn-margin", type=float, default=0.0)
    ap.add_argument("--seeds", default="42,43,44", help="comma-separated seeds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="training precision (auto: bf16 only where the hardware has it natively)",
    )
    ap.add_argument("--output-dir", default=None, help="keep the best runs here (default: temp)")
    ap.add_argument("--no-sts-avg", action="store_true", help="skip the 7-task STS averages")
    ap.add_argument("--no-baseline", action="store_true", help="skip the untrained model")
    args = ap.parse_args(argv)

    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in names if r not in RECIPES]
    if unknown:
        sys.exit(f"--recipes: unknown {unknown}; expected some of {', '.join(RECIPES)}")
    model = model_path(args.model)
    root = corpus_root(args.data)
    seeds = parse_seeds(args.seeds)

    evaluate, work, keep, train_file, n = prepare_workspace(args, root, "recipes_ablation_")
    print(
        f"model {model}; {n} sentences; {args.steps} steps x batch {args.batch_size}, "
        f"lr {args.lr}, temperature {args.temperature}, max length {args.max_length} "
        f"(prompt {args.prompt_max_length}), pooling {args.pooling}, head {args.head}, "
        f"precision {args.precision}, seeds {seeds}, recipes {names}",
        flush=True,
    )

    rows: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    if not args.no_baseline:
        base = SentenceEncoder.from_pretrained(model, pooling=args.pooling)
        row: dict[str, Any] = {"recipe": "(untrained)", **evaluate(base)}
        if not args.no_sts_avg:
            best["(untrained)"] = {"sts_avg": sts_average(base, str(root))}
        rows.append(row)
        del base
        print(f"untrained: {row}", flush=True)

    for name in names:
        extra = recipe_fields(name, args)
        for seed in seeds:
            run_dir = work / f"{name}__seed{seed}"
            prompt = extra.get("pooling") == "prompt"
            config = TrainConfig(
                **{
                    "model": str(model),
                    "train_file": str(train_file),
                    "output_dir": str(run_dir),
                    "objective": "unsup",
                    "pooling": args.pooling,
                    "head": args.head,
                    "temperature": args.temperature,
                    "lr": args.lr,
                    "batch_size": args.batch_size,
                    "max_steps": args.steps,
                    "max_length": args.prompt_max_length if prompt else args.max_length,
                    "eval_steps": 0,  # evaluate once, at the end
                    "seed": seed,
                    "device": args.device,
                    "precision": args.precision,
                    "data_dir": str(root),
                    "overwrite": True,
                    "report_to": "none",
                    **extra,
                }
            )
            t0 = time.perf_counter()
            result = train(config, evaluator=evaluate)
            seconds = time.perf_counter() - t0
            metrics = dict(result.final_metrics or {})
            rows.append({"recipe": name, "seed": seed, "seconds": seconds, **metrics})
            print(f"{name} seed {seed}: {seconds:.0f} s: {metrics}", flush=True)
            if prompt:
                # The same weights, denoised at inference too (PromptBERT's supervised recipe).
                always = SentenceEncoder.load(run_dir / "final", prompt_denoise=True)
                dn = {"recipe": DENOISED, "seed": seed, "seconds": seconds, **evaluate(always)}
                rows.append(dn)
                del always
                print(f"{DENOISED} seed {seed}: {dn}", flush=True)
            score = metrics.get("stsb_dev_spearman")
            old = best.get(name)
            if score is not None and (old is None or score > old["stsb_dev_spearman"]):
                if old is not None:
                    shutil.rmtree(old["dir"], ignore_errors=True)
                best[name] = {"stsb_dev_spearman": score, "seed": seed, "dir": run_dir}
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
            write_json(args.json, rows, best)

    if not args.no_sts_avg:
        for name, info in list(best.items()):
            if "dir" in info:
                final = Path(info["dir"]) / "final"
                info["sts_avg"] = sts_average(final, str(root))
                print(
                    f"{name}: best run (seed {info['seed']}) 7-task STS avg {info['sts_avg']:.2f}"
                )
                if name == "promptbert":
                    denoised = SentenceEncoder.load(final, prompt_denoise=True)
                    best[DENOISED] = {
                        "seed": info["seed"],
                        "sts_avg": sts_average(denoised, str(root)),
                    }
                    print(f"{DENOISED}: same run, 7-task STS avg {best[DENOISED]['sts_avg']:.2f}")

    print()
    print(summary_table(rows, best))
    write_json(args.json, rows, best)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
