"""textcl.io: atomic writes (umask permissions), atomic folders, NaN-safe JSON, read_json
errors, sha256, the folder lock (across processes, released on SIGKILL) and stale temp
cleanup."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from textcl.errors import CorruptFileError, FolderBusyError
from textcl.io import (
    LOCK_NAME,
    FolderLock,
    atomic_dir,
    atomic_write_bytes,
    atomic_write_text,
    dumps_json,
    json_safe,
    read_json,
    remove_stale_tmp,
    sha256_file,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask after a test sets it."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)],
)
def test_permissions_follow_umask(
    tmp_path: Path, umask: None, mask: int, file_mode: int, dir_mode: int
) -> None:
    os.umask(mask)
    f = atomic_write_bytes(tmp_path / "a" / "f.bin", b"x")
    assert _mode(f) == file_mode  # mkstemp alone would give 0600
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner.txt").write_text("hi")
    assert _mode(tmp_path / "d") == dir_mode  # mkdtemp alone would give 0700
    # the writer's own files were never 0600 by accident: a write under 0o022 is 0644
    assert _mode(write_json(tmp_path / "j.json", {"a": 1})) == file_mode


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "twö")
    assert p.read_text(encoding="utf-8") == "twö"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.txt"]


def test_atomic_write_failure_keeps_old_and_cleans_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")

    def boom(*a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.txt"]


def test_atomic_dir_replace_and_failure_cleanup(tmp_path: Path) -> None:
    target = tmp_path / "best"
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path and not target.exists()
        (tmp / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    with pytest.raises(RuntimeError, match="fail"), atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("half")
        raise RuntimeError("fail")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # old folder intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temp left
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError), atomic_dir(tmp_path / "file"):
        pass


def test_json_nan_becomes_null(tmp_path: Path) -> None:
    obj = {"a": math.nan, "b": [1.0, math.inf, -math.inf], "c": (2, {"d": math.nan}), "e": "x"}
    assert json_safe(obj) == {"a": None, "b": [1.0, None, None], "c": [2, {"d": None}], "e": "x"}
    text = dumps_json(obj)
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    assert json.loads(text)["b"] == [1.0, None, None]
    assert not dumps_json([1], indent=None).endswith("\n")
    p = write_json(tmp_path / "r.json", obj)
    assert read_json(p) == json.loads(text)


def test_read_json_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(CorruptFileError, match=r"bad\.json: config is not valid JSON \(line 4"):
        read_json(bad, "config")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "caf\xe9"}')
    with pytest.raises(CorruptFileError, match=r"latin\.json: JSON file is not UTF-8"):
        read_json(latin)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")
    assert CorruptFileError("x").exit_code == 3


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 17)
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert sha256_file(p, chunk=1000) == hashlib.sha256(data).hexdigest()
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_remove_stale_tmp(tmp_path: Path) -> None:
    (tmp_path / ".manifest.json.tmp-abc").write_text("half")
    (tmp_path / ".best.tmp-xyz").mkdir()
    (tmp_path / ".best.tmp-xyz" / "w.bin").write_text("half")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".shard-00000.npy.tmp-q").write_text("half")
    keep = ["keep.txt", ".hidden", "notes.tmp-but-not-hidden"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    top = remove_stale_tmp(tmp_path, recursive=False)
    assert sorted(p.name for p in top) == [".best.tmp-xyz", ".manifest.json.tmp-abc"]
    assert (tmp_path / "sub" / ".shard-00000.npy.tmp-q").exists()
    assert [p.name for p in remove_stale_tmp(tmp_path)] == [".shard-00000.npy.tmp-q"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "sub"])
    assert remove_stale_tmp(tmp_path / "absent") == []


def test_lock_reentrant_and_second_holder_in_process(tmp_path: Path) -> None:
    with FolderLock(tmp_path, "index") as lock:
        with FolderLock(tmp_path, "index"):  # same process: re-entrant
            pass
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
        assert lock.path == tmp_path / LOCK_NAME
    # released: another acquire works
    FolderLock(tmp_path).acquire().release()


_HOLDER = """
import sys, time
from textcl.io import FolderLock
FolderLock(sys.argv[1], "index").acquire()
print("held", flush=True)
time.sleep(120)
"""


def _child_holding(folder: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_refused_for_second_process_and_released_after_sigkill(tmp_path: Path) -> None:
    proc = _child_holding(tmp_path)
    try:
        t0 = time.perf_counter()
        with pytest.raises(FolderBusyError, match=rf"this index is in use by pid {proc.pid} on"):
            FolderLock(tmp_path, "index").acquire()
        assert time.perf_counter() - t0 < 5  # at once, no waiting
        assert FolderBusyError("x").exit_code == 4
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # the kernel dropped the dead holder's flock: no stale lock
    with FolderLock(tmp_path, "index"):
        assert f"pid {os.getpid()} " in (tmp_path / LOCK_NAME).read_text()
