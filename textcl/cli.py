"""The ``textcl`` command line: one sub-command per job.

Each sub-command lives in its own module under ``textcl.commands`` and exposes
``register(subparsers) -> None`` (adds its parser and sets ``func``). Modules are imported
only when the CLI starts, never at ``import textcl``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from textcl import __version__

COMMAND_MODULES: tuple[str, ...] = (
    "textcl.commands.train",
    "textcl.commands.eval",
    "textcl.commands.encode",
    "textcl.commands.search",
    "textcl.commands.index",
    "textcl.commands.report",
    "textcl.commands.push",
)
"""Sub-command modules, in the order ``textcl --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textcl",
        description="Contrastive sentence embeddings: train, evaluate, encode and search.",
    )
    parser.add_argument("--version", action="version", version=f"textcl {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        # Bad input: a one-line error naming the problem, no traceback (-v shows it).
        if args.verbose:
            raise
        print(f"textcl {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
