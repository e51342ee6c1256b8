"""The ``textcl`` command line: one sub-command per job.

Each sub-command lives in its own module under ``textcl.commands`` and exposes
``register(subparsers) -> None`` (adds its parser and sets ``func``). Modules are imported
only when the CLI starts, never at ``import textcl``.

One error boundary (:func:`main`) turns every failure a user can cause into one line
``textcl COMMAND: error: ...`` and a documented exit code (see :mod:`textcl.errors`):

====  ===========================================================================
0     success
1     a bug in textcl (the traceback is shown; please report it)
2     bad input or usage: flags, config fields, data content, a missing file
3     a damaged file (truncated, corrupted, does not match its manifest)
4     the folder is busy (another textcl process) or belongs to another run/index
5     an operating-system error: permission denied, read-only filesystem, disk full,
      a path that is a file where a folder is needed (the line names path and cause);
      the hub cannot be reached (``push``)
130   interrupted (Ctrl-C)
====  ===========================================================================

``-v`` (info logging) / ``-vv`` (debug) may come before or after the sub-command; with
``-v`` every error also shows its traceback (the exit code stays the same).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from textcl.errors import EXIT_OS, EXIT_USAGE, TextclError
from textcl.version import __version__

COMMAND_MODULES: tuple[str, ...] = (
    "textcl.commands.train",
    "textcl.commands.eval",
    "textcl.commands.encode",
    "textcl.commands.search",
    "textcl.commands.mine",
    "textcl.commands.export",
    "textcl.commands.index",
    "textcl.commands.serve",
    "textcl.commands.report",
    "textcl.commands.push",
)
"""Sub-command modules, in the order ``textcl --help`` lists them."""

EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""

_OS_HINTS: dict[int, str] = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the filesystem is read-only: choose a writable location",
    errno.ENOSPC: "the disk is full: free some space or choose another location",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another location",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder where a file is expected: choose a file",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError``: the path(s), the system's reason and what to do."""
    reason = e.strerror or str(e) or type(e).__name__
    paths = [os.fsdecode(p) for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(paths)
    hint = _OS_HINTS.get(e.errno or -1, "")
    if not paths and not e.strerror:
        line = str(e) or type(e).__name__  # a message of its own (may name the path)
    else:
        line = f"{where}: {reason}" if where else reason
    return f"{line} ({hint})" if hint else line


class _CommandParser(argparse.ArgumentParser):
    """The parser of every sub-command (nested ones too: ``add_subparsers`` reuses the
    class): it accepts ``-v``/``-vv`` after the sub-command, counted apart and added to the
    top-level count by :func:`main`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "-v",
            "--verbose",
            dest="verbose_after",
            action="count",
            default=argparse.SUPPRESS,
            help="more logging (-vv: debug); with -v errors show their traceback",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textcl",
        description="Contrastive sentence embeddings: train, evaluate, encode and search.",
        epilog="Exit codes: 0 ok; 1 bug (traceback); 2 bad input/usage; 3 damaged file; "
        "4 folder busy or owned by another run; 5 operating-system error (permissions, "
        "read-only filesystem, disk full) or network error; 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"textcl {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging (-vv: debug); with -v errors show their traceback; "
        "may also follow the sub-command",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _fail(command: str, message: str, code: int, verbose: int) -> int:
    if verbose:
        traceback.print_exc()
    # One line, even when a library's message spans several.
    message = re.sub(r"\s*\n\s*", " ", message.strip())
    print(f"textcl {command}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        parser.print_help()
        return EXIT_USAGE
    if extras:  # named after the sub-command that did not take them (argparse: "textcl: ")
        print(
            f"textcl {args.command}: error: unrecognized arguments: {' '.join(extras)} "
            f"(see textcl {args.command} --help)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    args.verbose = verbose
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = args.command
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print(f"textcl {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TextclError as e:
        return _fail(command, str(e), e.exit_code, verbose)
    except BrokenPipeError:
        # The reader of our output went away (e.g. `textcl search ... | head`): stop quietly.
        # Python's recipe: point stdout at devnull so the flush at exit does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FileNotFoundError as e:
        return _fail(command, describe_os_error(e), EXIT_USAGE, verbose)
    except OSError as e:
        return _fail(command, describe_os_error(e), EXIT_OS, verbose)
    except (ValueError, TypeError) as e:
        return _fail(command, str(e), EXIT_USAGE, verbose)
    # Anything else is a bug: Python prints its traceback and exits 1.
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
