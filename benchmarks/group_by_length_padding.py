"""Padding of training batches: random batches vs ``group_by_length`` (length-grouped).

Plans one epoch of textcl's trainer over a corpus both ways (same seed; the grouped order
buckets by character length, as the trainer does) and reports padded tokens per real token
with the MiniLM tokenizer at several ``max_length`` (the forward cost of a transformer layer is
roughly linear in padded tokens at these lengths). Deterministic, no timing::

    python benchmarks/group_by_length_padding.py [--batch-size 64]

With ``--train-steps N`` it also trains all-MiniLM-L6-v2 (``cls`` pooling, unsupervised
SimCSE, ``--train-max-length``) for N steps both ways, alternating, ``--repeats`` times, and
prints the steady-state seconds per step read from each run's ``metrics.jsonl`` (first to
last logged step, so loading and the final save are left out) and the final STS-B dev::

    python benchmarks/group_by_length_padding.py --train-steps 40 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from tests.helpers import minilm_path
    from textcl.data.text import plan_epoch
    from textcl.train.batches import length_grouped_order

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = Path(os.environ.get("TEXTCL_DATA", "/work/shared/data"))
    p.add_argument("--corpus", default=str(data / "corpus" / "wiki_sentences_11914.txt"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train-steps", type=int, default=0, help="also train both ways (0: no)")
    p.add_argument("--train-max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    from transformers import AutoTokenizer

    texts = [t.strip() for t in Path(args.corpus).read_text().splitlines() if t.strip()]
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
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
    for max_length in (32, 64, 128, 256):
        lengths = np.minimum(full, max_length)
        cells = []
        for name, plan in plans.items():
            padded = sum(len(b) * int(lengths[b].max()) for b in plan)
            real = sum(int(lengths[b].sum()) for b in plan)
            cells.append(f"{name} {padded / real:.3f}")
        print(f"  max_length {max_length:>3}: " + ", ".join(cells))
    if args.train_steps > 0:
        timed_training(args, data)
    return 0


def timed_training(args: argparse.Namespace, data: Path) -> None:
    """Train both ways; steady-state s/step (from metrics.jsonl) and final STS-B dev."""
    from benchmarks.train_throughput import seconds_per_step
    from tests.helpers import minilm_path
    from textcl.train import TrainConfig, train

    per_step: dict[bool, list[float]] = {False: [], True: []}
    dev: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="textcl-gbl-") as tmp:
        for r in range(args.repeats):
            for grouped in (False, True) if r % 2 == 0 else (True, False):
                out = Path(tmp) / f"{grouped}-{r}"
                result = train(
                    TrainConfig(
                        model=str(minilm_path()),
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
    for grouped in (False, True):
        print(
            f"  group_by_length={grouped}: {statistics.median(per_step[grouped]):.3f} s/step "
            f"(median), STS-B dev {statistics.mean(dev[grouped]):.2f} (mean)"
        )
    speed = statistics.median(per_step[False]) / statistics.median(per_step[True])
    print(f"  speed grouped / random: {speed:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
