"""The one place for file infrastructure: atomic writes, NaN-safe JSON, folder locks.

Every file textcl writes goes through :func:`atomic_write_bytes` (or a wrapper of it) and
every folder through :func:`atomic_dir`: a temp sibling named ``.NAME.tmp-XXXX`` is written,
fsynced and renamed over the target, so a reader (or a kill -9) sees the old or the new
version, never half of one. Permissions follow the process umask (``mkstemp`` alone would
leave 0600/0700). Temp siblings orphaned by a kill are removed by :func:`remove_stale_tmp`,
which the owner of a folder calls once it holds the folder's :class:`FolderLock`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

from textcl.errors import CorruptFileError, FolderBusyError

PathLike = str | os.PathLike[str]
"""A filesystem path as users hand it to us."""

TMP_MARK = ".tmp-"
"""Temp siblings are named ``.{target name}.tmp-{random}`` (see :func:`remove_stale_tmp`)."""

LOCK_NAME = ".textcl.lock"


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}{TMP_MARK}"


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def naming_path(path: PathLike) -> Iterator[None]:
    """Re-raise an ``OSError`` without a file name (a write or flush on a full disk) as
    the same error naming ``path``, so the CLI's line says where it happened."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), os.fspath(path)) from e


def append_text(path: PathLike, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path``; an ``OSError`` names the path."""
    with naming_path(path), open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename);
    an ``OSError`` (disk full, read-only filesystem) names ``path``."""
    return atomic_write_stream(path, lambda fh: fh.write(data))


def atomic_write_stream(path: PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """:func:`atomic_write_bytes` for a writer that streams into the open temp file
    (``write(fh)``): a large file is never held in memory whole."""
    target = Path(path)
    with naming_path(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            _follow_umask(Path(tmp), directory=False)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def is_number(v: object) -> bool:
    """A finite int or float that is not a bool (a JSON metric value worth showing)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (NaN/inf become ``null``), newline-terminated when
    indented."""
    text = json.dumps(json_safe(obj), indent=indent, allow_nan=False)
    return text + "\n" if indent is not None else text


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically."""
    return atomic_write_text(path, dumps_json(obj))


def read_json(path: PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; a damaged one raises :class:`CorruptFileError` naming the path,
    line and column (a missing one ``FileNotFoundError``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{p}: {what} is not UTF-8 text ({e.reason})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(
            f"{p}: {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from e


def read_json_object(path: PathLike, what: str = "JSON file") -> dict[str, Any]:
    """:func:`read_json` for files that must hold one JSON object (configs, manifests,
    markers); anything else raises :class:`CorruptFileError` naming the path and what it
    found, before a caller's ``.get`` could fail deep inside."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise CorruptFileError(
            f"{Path(path)}: {what} must be a JSON object, got {type(data).__name__}"
        )
    return data


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces (memory bounded)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def path_overlap(output: PathLike, other: PathLike) -> str | None:
    """How an ``output`` path relates to an input ``other`` (both resolved, ``~`` expanded):
    ``"is"`` (the same), ``"inside"`` (``output`` sits inside ``other``), ``"holds"``
    (``other`` sits inside ``output``), or None (apart). An output must stay apart from what
    it is made from: writing there would overwrite or mix with it."""
    out, given = Path(output).expanduser().resolve(), Path(other).expanduser().resolve()
    if out == given:
        return "is"
    if given in out.parents:
        return "inside"
    if out in given.parents:
        return "holds"
    return None


def files_digest(folder: PathLike, files: Iterable[Path]) -> str:
    """Hex sha256 over ``files`` of ``folder``: each one's path relative to ``folder`` and its
    own sha256, in sorted order (a fingerprint of a model folder's content)."""
    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(f"{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Build a folder atomically: write into the yielded temp folder; on success it
    replaces ``path`` (an older folder there is removed), on error it is removed.

    ``with atomic_dir(run / "best") as tmp: model.save_pretrained(tmp)``
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(target))
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    try:
        _follow_umask(tmp, directory=True)
        yield tmp
        if target.exists():
            # Two renames: the old folder is never half-deleted under its real name.
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)


def remove_stale_tmp(folder: PathLike, recursive: bool = True) -> list[Path]:
    """Remove temp siblings (``.*.tmp-*``) left by killed writers under ``folder``.

    Call it only while holding the folder's :class:`FolderLock`: then no live writer
    of ours can own them. Returns what was removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found = root.rglob(f".*{TMP_MARK}*") if recursive else root.glob(f".*{TMP_MARK}*")
    removed: list[Path] = []
    for p in sorted(found, key=lambda q: len(q.parts)):
        if any(parent in removed for parent in p.parents):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


class FolderLock:
    """An exclusive, process-wide lock on a folder (``FOLDER/.textcl.lock``, ``flock``).

    The kernel releases a ``flock`` when its process dies (kill -9 included), so a lock
    never goes stale; the file's content (pid, host, command, time) only names the holder
    in the error a second writer gets at once. Re-entrant within one process.

    ``with FolderLock(run_dir, what="training run"): ...``
    """

    _held: ClassVar[dict[str, int]] = {}
    _files: ClassVar[dict[str, IO[str]]] = {}

    def __init__(self, folder: PathLike, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_NAME

    def _key(self) -> str:
        return str(self.path.resolve())

    def acquire(self) -> FolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        key = self._key()
        if key in FolderLock._held:
            FolderLock._held[key] += 1
            return self
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise FolderBusyError(
                f"{self.folder}: this {self.what} is in use by {holder}; wait for it to "
                "finish or use another folder"
            ) from None
        except BaseException:
            fh.close()
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        fh.flush()
        FolderLock._held[key] = 1
        FolderLock._files[key] = fh
        return self

    def release(self) -> None:
        key = self._key()
        if key not in FolderLock._held:
            return
        FolderLock._held[key] -= 1
        if FolderLock._held[key] == 0:
            del FolderLock._held[key]
            fh = FolderLock._files.pop(key)
            fh.close()  # closing the descriptor drops the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
