"""Padding of training batches: random batches vs ``group_by_length`` (length-grouped).

Plans one epoch of textcl's trainer over a corpus both ways (same seed; the grouped order
buckets by character length, as the trainer does) and reports padded tokens per real token
with the MiniLM tokenizer at several ``max_length`` (the forward cost of a transformer layer is
roughly linear in padded tokens at these lengths). Deterministic, no timing::

    python benchmarks/group_by_length_padding.py [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import sys
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
