"""Padding of training batches: random batches vs ``group_by_length`` (length-grouped).

Plans one epoch of textcl's trainer over a corpus both ways (same seed; the grouped order
buckets by character length, as the trainer does) and reports padded tokens per real token
with the MiniLM tokenizer at several ``max_length`` (the forward cost of a transformer layer is
roughly linear in padded tokens at these lengths). Deterministic, no timing::

    python -m benchmarks group_by_length_padding [--batch-size 64]

With ``--train-steps N`` it also trains all-MiniLM-L6-v2 (``cls`` pooling, unsupervised
SimCSE, ``--train-max-length``) for N steps both ways, alternating, ``--repeats`` times, and
prints the steady-state seconds per step read from each run's ``metrics.jsonl`` (first to
last logged step, so loading and the final save are left out) and the final STS-B dev::

    python -m benchmarks group_by_length_padding --train-steps 40 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    CORPUS,
    add_common_args,
    data_root,
    model_path,
    parser_for,
    seconds_per_step,
    table,
    write_result,
)


def main(argv: list[str] | None = None) -> int:
    from textcl.data.text import plan_epoch
    from textcl.train.batches import length_grouped_order

    p = parser_for("group_by_length_padding", __doc__)
    add_common_args(p, threads=False, seed=42)
    p.add_argument("--corpus", default=None, help=f"sentences, one a line (default: DATA/{CORPUS})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=0, help="also train both ways (0: no)")
    p.add_argument("--train-max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    data = data_root(args.data, contains="" if args.corpus else CORPUS)
    args.corpus = args.corpus or str(data / CORPUS)
    args.model = str(model_path(args.model))
    texts = [t.strip() for t in Path(args.corpus).read_text().splitlines() if t.strip()]
    tok = AutoTokenizer.from_pretrained(args.model)
    full = np.array([len(x) for x in tok(texts, truncation=False)["input_ids"]])
    chars = np.array([len(t) for t in texts])
    hashes = np.arange(len(texts), dtype=np.uint64)
    plans = {
        "random": plan_epoch(hashes, args.batch_size, args.seed, 0),
        "group_by_length": plan_epoch(
            hashes,
            args.batch_size,
            args.seed,
            0,
            order=length_grouped_order(chars, args.batch_size, args.seed, 0),
        ),
    }
    print(f"{len(texts)} sentences, batch {args.batch_size}; padded / real tokens:")
    rows = []
    for max_length in (32, 64, 128, 256):
        lengths = np.minimum(full, max_length)
        cells = []
        for name, plan in plans.items():
            padded = sum(len(b) * int(lengths[b].max()) for b in plan)
            real = sum(int(lengths[b].sum()) for b in plan)
            cells.append(f"{name} {padded / real:.3f}")
        print(f"  max_length {max_length:>3}: " + ", ".join(cells))
        rows.append([max_length, *(c.rsplit(" ", 1)[1] for c in cells)])
    tables = []
    if args.train_steps > 0:
        tables.append(timed_training(args, data))
    write_result(
        "group_by_length_padding",
        rows,
        args.json,
        headers=["max_length", *plans],
        tables=tables,
        notes=[f"{len(texts)} sentences, batch {args.batch_size}; padded / real tokens"],
    )
    return 0


def timed_training(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Train both ways; steady-state s/step (from metrics.jsonl) and final STS-B dev (the
    result table)."""
    from textcl.train import TrainConfig, train

    per_step: dict[bool, list[float]] = {False: [], True: []}
    dev: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="textcl-gbl-") as tmp:
        for r in range(args.repeats):
            for grouped in (False, True) if r % 2 == 0 else (True, False):
                out = Path(tmp) / f"{grouped}-{r}"
                result = train(
                    TrainConfig(
                        model=args.model,
                        train_file=args.corpus,
                        output_dir=str(out),
                        pooling="cls",
                        batch_size=args.batch_size,
                        max_steps=args.train_steps,
                        max_length=args.train_max_length,
                        group_by_length=grouped,
                        precision="fp32",
                        device="cpu",
                        seed=args.seed,
                        eval_steps=0,
                        logging_steps=5,
                        data_dir=str(data),
                        report_to="none",
                    )
                )
                sps = seconds_per_step(out / "metrics.jsonl")
                per_step[grouped].append(sps)
                dev[grouped].append(float((result.final_metrics or {})["stsb_dev_spearman"]))
                print(
                    f"repeat {r + 1} group_by_length={grouped}: {sps:.3f} s/step, "
                    f"STS-B dev {dev[grouped][-1]:.2f}",
                    flush=True,
                )
    print(f"max_length {args.train_max_length}, batch {args.batch_size}, {args.train_steps} steps:")
    rows = []
    for grouped in (False, True):
        print(
            f"  group_by_length={grouped}: {statistics.median(per_step[grouped]):.3f} s/step "
            f"(median), STS-B dev {statistics.mean(dev[grouped]):.2f} (mean)"
        )
        rows.append(
            [
                "group_by_length" if grouped else "random",
                f"{statistics.median(per_step[grouped]):.3f}",
                f"{statistics.mean(dev[grouped]):.2f}",
            ]
        )
    speed = statistics.median(per_step[False]) / statistics.median(per_step[True])
    print(f"  speed grouped / random: {speed:.3f}x")
    return table(
        rows,
        ["batches", "s/step (median)", f"STS-B dev after {args.train_steps} steps (mean)"],
        notes=[
            f"max_length {args.train_max_length}, batch {args.batch_size}; "
            f"speed grouped / random: {speed:.3f}x"
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())
