"""textcl's error types: every failure a user can cause is a :class:`TextclError`.

The CLI turns these (and ``OSError``) into one line naming the path and what to do, with
the exit code of the class; anything else is a bug and keeps its traceback.

Exit codes (documented in the README):

* 2: bad input or usage (a flag, a config field, a data file's content);
* 3: a file or folder is damaged, crafted or does not match its manifest/checkpoint;
* 4: the folder is busy (another textcl process owns it) or belongs to another run;
* 5: an operating-system error (permissions, read-only filesystem, disk full) or a network
  error (the hub cannot be reached).
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_CORRUPT = 3
EXIT_CONFLICT = 4
EXIT_OS = 5


class TextclError(Exception):
    """Base of the errors a user can cause; ``exit_code`` is what the CLI returns."""

    exit_code: int = EXIT_USAGE


class InputError(TextclError, ValueError):
    """Bad input: a flag, a config field or a data file's content (exit 2)."""


class CorruptFileError(TextclError, ValueError):
    """A file is damaged, truncated, crafted or does not match its manifest (exit 3)."""

    exit_code = EXIT_CORRUPT


class FolderBusyError(TextclError, RuntimeError):
    """Another process holds the folder's lock (exit 4)."""

    exit_code = EXIT_CONFLICT


class FolderConflictError(TextclError, ValueError):
    """The folder holds another run or index, or a resume does not match it (exit 4)."""

    exit_code = EXIT_CONFLICT


class NetworkError(TextclError, OSError):
    """A remote service (the Hugging Face hub) could not be reached or refused a request
    (exit 5, like an operating-system error)."""

    exit_code = EXIT_OS
