"""STS suite on all-MiniLM-L6-v2: textcl's harness vs sentence-transformers' encode, one run.

Runs ``textcl.evaluation.evaluate_sts`` on the seven tasks (test split, cosine Spearman,
``all`` aggregation) with textcl's :class:`~textcl.SentenceEncoder`, then the same harness
(same pairs, same de-duplication) with ``SentenceTransformer.encode`` of the same model folder
as the encoder, and prints per-task Spearman for both, the published MTEB numbers, the wall
times (median over ``--repeats``) and their ratio.

    HF_HUB_OFFLINE=1 python -m benchmarks sts_eval            # all 7 tasks
    python -m benchmarks sts_eval --tasks sts12,sts13 --no-peer
    python -m benchmarks sts_eval --sickr-all                  # SICK-R as MTEB: 9,927 pairs
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Any

from benchmarks.common import (
    Timings,
    add_common_args,
    model_path,
    parser_for,
    st_peer,
    sts_data_dir,
    write_result,
)

# MTEB (v1 leaderboard) cosine Spearman ×100 of sentence-transformers/all-MiniLM-L6-v2.
# SICK-R there is the 9,927 pairs of the three SICK files (--sickr-all), not SentEval's test.
PUBLISHED = {"sts12": 72.37, "sts13": 80.60, "stsb": 82.03}


def main(argv: list[str] | None = None) -> int:
    from textcl import SentenceEncoder
    from textcl.evaluation import evaluate_sts, format_sts_table

    ap = parser_for("sts_eval", __doc__)
    add_common_args(ap, threads=False, data_help="STS folder (default: TEXTCL_DATA / shared)")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each side (median)")
    ap.add_argument("--no-peer", action="store_true", help="skip sentence-transformers")
    ap.add_argument(
        "--sickr-all", action="store_true", help="also SICK-R on all 9,927 pairs (MTEB's)"
    )
    args = ap.parse_args(argv)

    model = model_path(args.model)
    data = args.data or sts_data_dir()
    import torch

    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPU(s), torch threads "
        f"{torch.get_num_threads()}, cuda={torch.cuda.is_available()}; "
        f"torch {torch.__version__}; data {data}"
    )
    encoder = SentenceEncoder.from_pretrained(model)
    peer: Any = None
    if not args.no_peer:
        try:
            peer = st_peer(model, device=str(encoder.device))
        except ImportError:
            print("sentence-transformers is not installed: peer skipped")

    def run_textcl() -> dict[str, Any]:
        return evaluate_sts(encoder, args.tasks, args.split, data, args.batch_size)

    def run_peer() -> dict[str, Any]:
        def st_encode(texts: list[str]) -> Any:
            return peer.encode(texts, batch_size=args.batch_size, show_progress_bar=False)

        return evaluate_sts(
            st_encode, args.tasks, args.split, data, args.batch_size, model_name="ST encode"
        )

    timings = Timings()
    res: dict[str, Any] = {}
    for _ in range(max(1, args.repeats)):
        res["textcl"] = timings.run("textcl", run_textcl)
        if peer is not None:
            res["sentence-transformers"] = timings.run("sentence-transformers", run_peer)
    times, cpu = timings.wall, timings.cpu

    ours = res["textcl"]
    print()
    print(format_sts_table(ours))
    print()
    header = (
        f"{'task':<8} {'textcl':>8} {'ST encode':>10} {'diff':>7} {'published':>10} {'pairs':>6}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for task, r in ours["tasks"].items():
        st = res.get("sentence-transformers", {}).get("tasks", {}).get(task)
        st_sp = f"{st['spearman']:.2f}" if st else "-"
        diff = f"{r['spearman'] - st['spearman']:+.3f}" if st else "-"
        pub = PUBLISHED.get(task) if not (task == "stsb" and r["split"] != "test") else None
        pub_s = f"{pub:.2f}" if pub is not None else "-"
        print(
            f"{task:<8} {r['spearman']:>8.2f} {st_sp:>10} {diff:>7} {pub_s:>10} {r['n_pairs']:>6}"
        )
        rows.append([task, f"{r['spearman']:.2f}", st_sp, diff, pub_s, r["n_pairs"]])
    print()
    med = {k: statistics.median(v) for k, v in times.items() if v}
    notes = []
    for k, v in med.items():
        notes.append(
            f"wall time {k}: median {v:.1f} s over {len(times[k])} run(s) "
            f"(process CPU time median {statistics.median(cpu[k]):.1f} s; load average "
            f"{os.getloadavg()[0]:.1f} at the end: other processes share the cores)"
        )
        print(notes[-1])
    if len(med) == 2:
        notes.append(
            f"ratio textcl / sentence-transformers: {med['textcl'] / med['sentence-transformers']:.2f}"
        )
        print(notes[-1])
    notes.append(f"unique sentences encoded: {ours['n_sentences']}")
    print(notes[-1])

    if args.sickr_all:
        t0 = time.perf_counter()
        sick = evaluate_sts(encoder, ["sickr"], "all", data, args.batch_size)["tasks"]["sickr"]
        notes.append(
            f"SICK-R all (MTEB's 9,927 pairs): Spearman {sick['spearman']:.2f} "
            f"Pearson {sick['pearson']:.2f} ({time.perf_counter() - t0:.1f} s)"
        )
        print("\n" + notes[-1])
    write_result(
        "sts_eval",
        rows,
        args.json,
        headers=["task", "textcl", "ST encode", "diff", "published", "pairs"],
        notes=notes,
        data={"textcl": ours, "wall_s": times, "cpu_s": cpu},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
