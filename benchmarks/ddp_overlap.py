"""Two-process training (``torchrun``, gloo, CPU): this checkout vs an older textcl.

textcl synchronises gradients through ``DistributedDataParallel`` (bucketed all-reduces that
start during the backward pass); before the redesign (issue 15) it all-reduced every
gradient after the backward (``textcl.distributed.sync_gradients``). This script runs the same
``textcl train`` recipe with ``torchrun --standalone --nproc_per_node 2`` (one torch thread
per process, so the two ranks share the cores without oversubscription) from two source
trees, alternating, ``--repeats`` times:

* ``new``: this checkout;
* ``old``: ``--old-src`` (e.g. ``git worktree add /tmp/textcl-old 3dc5063`` for the last
  commit with ``sync_gradients``), put first on ``PYTHONPATH``.

For each run it reads the trainer's own ``metrics.jsonl`` (``logging_steps`` 5) and takes the
steady-state seconds per step between the first and the last logged step (model loading,
the first window and the final save left out), plus the whole process's wall time. Prints
the medians and the ratio old / new (> 1: the new one is faster).

Run::

    git worktree add /tmp/textcl-old 3dc5063
    nice .venv/bin/python -m benchmarks ddp_overlap --old-src /tmp/textcl-old --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    CORPUS,
    REPO,
    add_common_args,
    data_root,
    median,
    model_path,
    parser_for,
    seconds_per_step,
    write_result,
)


def command(args: argparse.Namespace, train_file: Path, out: Path) -> list[str]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
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
        "--batch-size",
        str(args.batch_size),
        "--max-steps",
        str(args.steps),
        "--max-length",
        "32",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--seed",
        "42",
        "--eval-steps",
        "-1",
        "--logging-steps",
        "5",
    ]


def main(argv: list[str] | None = None) -> int:
    p = parser_for("ddp_overlap", __doc__)
    p.add_argument("--old-src", required=True, help="source tree of the older textcl")
    add_common_args(p, threads=False)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (both ranks)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    args.model = str(model_path(args.model))
    train_file = (data_root(args.data, contains=CORPUS) / CORPUS).resolve()
    sources = {"old": Path(args.old_src).resolve(), "new": REPO}
    for name, src in sources.items():
        found = subprocess.run(
            [sys.executable, "-c", "import textcl; print(textcl.__file__)"],
            env={**os.environ, "PYTHONPATH": str(src)},
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not found.startswith(str(src)):
            raise SystemExit(f"{name}: PYTHONPATH={src} imports textcl from {found or '?'}")
    per_step: dict[str, list[float]] = {k: [] for k in sources}
    whole: dict[str, list[float]] = {k: [] for k in sources}
    print(
        f"torchrun 2 x gloo, 1 thread each, {os.cpu_count()} CPUs; batch {args.batch_size}, "
        f"{args.steps} steps; old = {sources['old']}; load average {os.getloadavg()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="textcl-ddp-") as tmp:
        for r in range(args.repeats):
            for name in list(sources) if r % 2 == 0 else list(sources)[::-1]:
                out = Path(tmp) / f"{name}-{r}"
                env = {
                    **os.environ,
                    "PYTHONPATH": str(sources[name]),
                    "OMP_NUM_THREADS": "1",
                    "HF_HUB_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                }
                log = Path(tmp) / f"{name}-{r}.log"
                t0 = time.perf_counter()
                with log.open("w") as f:
                    rc = subprocess.run(
                        command(args, train_file, out),
                        env=env,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        cwd=tmp,  # not the repository: `-m` puts the cwd first on sys.path
                    ).returncode
                wall = time.perf_counter() - t0
                if rc != 0:
                    raise SystemExit(f"{name} exited {rc}:\n{log.read_text()[-2000:]}")
                sps = seconds_per_step(out / "metrics.jsonl")
                per_step[name].append(sps)
                whole[name].append(wall)
                print(
                    f"repeat {r + 1} {name}: {sps:.3f} s/step steady, {wall:.1f} s whole",
                    flush=True,
                )
    print(f"load average after the runs: {os.getloadavg()}")
    print("| source | s/step (median) | whole process s (median) |")
    print("|---|---:|---:|")
    rows = []
    for name in sources:
        rows.append([name, f"{median(per_step[name]):.3f}", f"{median(whole[name]):.1f}"])
        print("| " + " | ".join(rows[-1]) + " |")
    ratio = median(per_step["old"]) / median(per_step["new"])
    note = f"steady-state speed new / old: {ratio:.3f}x"
    print(note)
    write_result(
        "ddp_overlap",
        rows,
        args.json,
        headers=["source", "s/step (median)", "whole process s (median)"],
        notes=[note],
        data={"s_per_step": per_step, "whole_s": whole, "old_src": str(sources["old"])},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
