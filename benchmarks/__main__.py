"""``python -m benchmarks``: list the benchmarks; ``python -m benchmarks NAME ...`` runs one.

A benchmark is a module of this package that defines ``main(argv)``; its one-line
description is the first line of its docstring, read without importing it (listing is fast
and has no side effects). ``results`` regenerates RESULTS.md (:mod:`benchmarks.render`);
``gpu_check.sh`` is a shell script, run with ``bash``.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

NOT_BENCHMARKS = frozenset({"__init__", "__main__", "common", "render"})
"""Modules of the package that are infrastructure, not benchmarks."""

SCRIPTS = {
    "gpu_check.sh": (
        "the CUDA tests, then gpu_train with SDPA and eager attention (needs a GPU)",
        "bash benchmarks/gpu_check.sh [BERT_BASE_DIR]",
    )
}
"""Shell scripts listed beside the benchmarks: (description, how to run)."""


def _summary(path: Path) -> tuple[str, bool]:
    """First docstring paragraph of a module (one line) and whether it defines ``main``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    doc = (ast.get_docstring(tree) or "").strip()
    has_main = any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`"), has_main


def _modules(with_main: bool) -> dict[str, str]:
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem in NOT_BENCHMARKS:
            continue
        line, has_main = _summary(path)
        if has_main == with_main:
            found[path.stem] = line
    return found


def benchmarks() -> dict[str, str]:
    """``{name: one-line description}`` of every benchmark module, sorted by name."""
    return _modules(with_main=True)


def listing() -> str:
    names = benchmarks()
    width = max(len(n) for n in [*names, *SCRIPTS, "results"])
    lines = ["usage: python -m benchmarks NAME [--help | ARGS...]", "", "benchmarks:"]
    lines += [f"  {name:<{width}}  {line}" for name, line in names.items()]
    helpers = _modules(with_main=False)
    if helpers:
        lines += ["", "helper modules (no entry point):"]
        lines += [f"  {name:<{width}}  {line}" for name, line in helpers.items()]
    lines += ["", "scripts:"]
    lines += [f"  {name:<{width}}  {line}: {how}" for name, (line, how) in SCRIPTS.items()]
    lines += [
        "",
        "results:",
        f"  {'results':<{width}}  regenerate benchmarks/RESULTS.md from benchmarks/results/*.json",
    ]
    return "\n".join(lines)


def offline_env() -> None:
    """Default the Hugging Face stack to offline with quiet tokenizers. Set before anything
    imports it: ``benchmarks.common`` imports textcl, which imports transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "list"):
        print(listing())
        return 0
    name, rest = args[0], args[1:]
    offline_env()
    if name in ("results", "render"):
        from benchmarks import render

        return render.main(rest)
    if name.endswith(".py"):
        name = name[:-3]
    if name in SCRIPTS:
        print(f"{name} is a shell script: {SCRIPTS[name][1]}", file=sys.stderr)
        return 2
    if (
        name in NOT_BENCHMARKS
        or not (HERE / f"{name}.py").is_file()
        or not _summary(HERE / f"{name}.py")[1]
    ):
        names = benchmarks()
        print(
            f"python -m benchmarks: unknown benchmark {name!r}; choose one of: "
            + ", ".join([*names, "results"]),
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
