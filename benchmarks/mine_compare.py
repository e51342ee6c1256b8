"""Hard-negative mining: `textcl mine` vs sentence-transformers' `mine_hard_negatives` on the
SNLI dev pairs (overlap of the chosen negatives, time), then supervised training with mined,
given and no hard negatives (STS-B dev before and after).

Part 1 (comparison). The pairs are the 2954 (premise, entailment hypothesis) pairs of
``nli/snli_dev_triples_sent0_sent1_hardneg.csv`` (``sent0``, ``sent1``); both sides mine
from the same corpus (the pairs' distinct positives: sentence-transformers' default) with
the same model (all-MiniLM-L6-v2, fp32) and settings, one ``--settings`` entry at a time,
each side timed end to end (model already loaded; encoding included). Overlap per pair:
the Jaccard index of the two sets of negatives and whether they are identical; then the
mean over pairs. With ``sampling top`` both sides take the best candidates left after the
same rules, so every difference is a tie or a float rounding at a rule's threshold.

Part 2 ("what it does"). Supervised SimCSE (InfoNCE, in-batch negatives plus each row's
hard negative) from the same model read with ``cls`` pooling (the project's learning-signal
probe, STS-B dev about 79.7 before training), on the same pairs with

* ``mined``: the negative `textcl mine` chose in the first setting;
* ``given``: SNLI's contradiction hypothesis (``hard_neg``);
* ``none``: pairs only;

with the same steps, batch, learning rate, seed and data order; STS-B dev Spearman (x100),
alignment and uniformity of the untrained model and after each run.

    TEXTCL_CPU_BF16=0 python -m benchmarks mine_compare --json out.json
    python -m benchmarks mine_compare --steps 5 --no-peer        # smoke test
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_common_args,
    data_root,
    model_path,
    parser_for,
    set_threads,
    table,
    write_result,
)
from benchmarks.views_ablation import caching_evaluator

TRIPLES = Path("nli") / "snli_dev_triples_sent0_sent1_hardneg.csv"
DEFAULT_SETTINGS = (
    "num_negatives=1,relative_margin=0.05",
    "num_negatives=3,absolute_margin=0.1,max_score=0.8",
)
"""``;``-separated settings: ``key=value`` MineOptions fields (the first one feeds part 2)."""
ST_NAMES = {"sampling": "sampling_strategy"}


def parse_setting(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SystemExit(f"--settings: {item!r} is not key=value")
        if key in ("num_negatives", "range_min", "range_max", "top_k", "seed"):
            out[key] = int(value)
        elif key == "sampling":
            out[key] = value
        else:
            out[key] = float(value)
    return out


def read_triples(path: Path) -> list[tuple[str, str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [(r["sent0"], r["sent1"], r["hard_neg"]) for r in csv.DictReader(fh)]


def write_csv(path: Path, header: list[str], rows: list[tuple[str, ...]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def negatives_by_pair(rows: list[tuple[str, str, str]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for a, p, n in rows:
        out.setdefault((a, p), set()).add(n)
    return out


def overlap(
    ours: dict[tuple[str, str], set[str]],
    theirs: dict[tuple[str, str], set[str]],
    pairs: list[tuple[str, str]],
) -> dict[str, Any]:
    """Mean per-pair Jaccard of the negative sets and the fraction of identical sets (pairs
    where both found none count as identical, Jaccard 1); ``differ``: up to 5 pairs whose
    sets differ, with both sets."""
    jac, same = [], 0
    differ: list[dict[str, Any]] = []
    for pair in dict.fromkeys(pairs):
        a, b = ours.get(pair, set()), theirs.get(pair, set())
        union = a | b
        jac.append(len(a & b) / len(union) if union else 1.0)
        same += a == b
        if a != b and len(differ) < 5:
            differ.append({"pair": list(pair), "textcl": sorted(a), "st": sorted(b)})
    n = max(len(jac), 1)
    return {"jaccard": sum(jac) / n, "identical": same / n, "pairs": len(jac), "differ": differ}


def main(argv: list[str] | None = None) -> int:
    import torch

    from textcl import SentenceEncoder
    from textcl.data.pairs import PairDataset
    from textcl.search.mine import MineOptions, mine_hard_negatives
    from textcl.train import TrainConfig, train

    ap = parser_for("mine_compare", __doc__)
    add_common_args(ap, seed=42)
    ap.add_argument("--settings", default=";".join(DEFAULT_SETTINGS), help="';'-separated")
    ap.add_argument("--pairs", type=int, default=0, help="first N pairs (0: all)")
    ap.add_argument("--batch", type=int, default=64, help="encoding batch of both sides")
    ap.add_argument("--no-peer", action="store_true", help="skip sentence-transformers")
    ap.add_argument("--steps", type=int, default=40, help="training steps (0: no part 2)")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch (rows)")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--variants", default="mined,given,none")
    ap.add_argument("--output-dir", default=None, help="keep the work here (default: temp)")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    model = model_path(args.model)
    root = data_root(args.data, contains=TRIPLES)
    triples = read_triples(root / TRIPLES)
    if args.pairs:
        triples = triples[: args.pairs]
    pairs = [(a, p) for a, p, _ in triples]
    keep = args.output_dir is not None
    work = Path(args.output_dir) if keep else Path(tempfile.mkdtemp(prefix="mine_compare_"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"model {model}; {len(pairs)} pairs; torch threads {torch.get_num_threads()}",
        flush=True,
    )

    encoder = SentenceEncoder.from_pretrained(model)
    dataset = PairDataset(pairs, ("sent0", "sent1"), "snli dev pairs")
    st_model = None
    if not args.no_peer:
        from datasets import Dataset
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.util import mine_hard_negatives as st_mine

        st_model = SentenceTransformer(str(model), device="cpu")
        st_data = Dataset.from_dict(
            {"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]}
        )

    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {"settings": []}
    mined_for_training: list[tuple[str, str, str]] = []
    for i, text in enumerate(s for s in args.settings.split(";") if s.strip()):
        setting = parse_setting(text)
        options = MineOptions(
            precision="fp32", batch_size=args.batch, show_progress=False, **setting
        )
        t0 = time.perf_counter()
        result = mine_hard_negatives(dataset, encoder, options=options)
        ours_s = time.perf_counter() - t0
        if i == 0:
            mined_for_training = result.triples
        row: dict[str, Any] = {
            "setting": text,
            "textcl_triples": len(result.triples),
            "textcl_s": ours_s,
        }
        record: dict[str, Any] = {"setting": setting, "textcl": result.summary}
        if st_model is not None:
            kwargs = {ST_NAMES.get(k, k): v for k, v in setting.items()}
            t0 = time.perf_counter()
            out = st_mine(
                st_data,
                st_model,
                batch_size=args.batch,
                output_format="triplet",
                verbose=False,
                **kwargs,
            )
            st_s = time.perf_counter() - t0
            theirs = [(r["anchor"], r["positive"], r["negative"]) for r in out]
            ov = overlap(negatives_by_pair(result.triples), negatives_by_pair(theirs), pairs)
            row.update(
                {
                    "st_triples": len(theirs),
                    "st_s": st_s,
                    "textcl/st time": ours_s / st_s,
                    "jaccard": ov["jaccard"],
                    "identical": ov["identical"],
                }
            )
            record["st"] = {"triples": len(theirs), "seconds": st_s, "overlap": ov}
        rows.append(row)
        data["settings"].append(record)
        print(row, flush=True)

    def record(rows: list[dict[str, Any]], train_rows: list[dict[str, Any]]) -> None:
        """Write the result record so far (a killed run keeps what it finished)."""
        data["training"] = train_rows
        headers = [
            "setting",
            "textcl_triples",
            "st_triples",
            "jaccard",
            "identical",
            "textcl_s",
            "st_s",
            "textcl/st time",
        ]
        tables = [table([{h: r.get(h) for h in headers} for r in rows], headers, digits=4)]
        if train_rows:
            cols = ["variant", "rows", "stsb_dev_spearman", "alignment", "uniformity", "seconds"]
            tables.append(table(train_rows, cols, digits=4))
        write_result(
            "mine_compare",
            [],
            args.json,
            tables=tables,
            title="Hard-negative mining vs sentence-transformers, and training with the negatives",
            data=data,
        )

    record(rows, [])
    train_rows: list[dict[str, Any]] = []
    if args.steps > 0:
        evaluate = caching_evaluator(str(root))
        files = {
            "mined": (work / "mined.csv", ["sent0", "sent1", "hard_neg"], mined_for_training),
            "given": (work / "given.csv", ["sent0", "sent1", "hard_neg"], triples),
            "none": (work / "pairs.csv", ["sent0", "sent1"], pairs),
        }
        base = SentenceEncoder.from_pretrained(model, pooling="cls")
        before = evaluate(base)
        del base
        train_rows.append({"variant": "(untrained, cls)", "rows": 0, "seconds": 0.0, **before})
        print(train_rows[-1], flush=True)
        for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
            path, header, content = files[name]
            write_csv(path, header, list(content))
            config = TrainConfig(
                model=str(model),
                train_file=str(path),
                output_dir=str(work / f"run_{name}"),
                objective="sup",
                columns=header,
                pooling="cls",
                head="none",
                temperature=0.05,
                lr=args.lr,
                batch_size=args.batch_size,
                max_steps=args.steps,
                max_length=args.max_length,
                eval_steps=0,
                seed=args.seed,
                device="cpu",
                precision="fp32",
                data_dir=str(root),
                overwrite=True,
                report_to="none",
            )
            t0 = time.perf_counter()
            res = train(config, evaluator=evaluate)
            seconds = time.perf_counter() - t0
            train_rows.append(
                {
                    "variant": name,
                    "rows": len(content),
                    "seconds": seconds,
                    **(res.final_metrics or {}),
                }
            )
            print(train_rows[-1], flush=True)
            record(rows, train_rows)
            shutil.rmtree(work / f"run_{name}", ignore_errors=True)
    record(rows, train_rows)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
