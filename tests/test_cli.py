"""The CLI's error boundary: one line ``textcl CMD: error: ...`` and a documented exit code
for every failure a user can cause; a bug keeps its traceback; ``-v`` anywhere."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TINY_SENTENCES
from textcl import errors
from textcl.cli import EXIT_INTERRUPTED, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(err: str, command: str) -> str:
    """The single stderr line of a clean failure (no traceback, nothing else)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"textcl {command}: "), err
    return lines[0]


def failing_command(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make ``textcl report`` raise ``exc`` (registration reads the module's ``run``)."""
    from textcl.commands import report

    def run(args: object) -> int:
        raise exc

    monkeypatch.setattr(report, "run", run)


OS_PATH = "/data/out/run"


@pytest.mark.parametrize(
    ("exc", "code", "needles"),
    [
        (errors.InputError("config field 'lr': must be > 0"), 2, ["'lr'"]),
        (errors.CorruptFileError("/r/x.npy: truncated"), 3, ["/r/x.npy"]),
        (errors.FolderBusyError("/r: used by pid 7"), 4, ["/r", "pid 7"]),
        (errors.FolderConflictError("/r holds another run"), 4, ["/r"]),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), OS_PATH), 5, [OS_PATH]),
        (OSError(errno.EROFS, os.strerror(errno.EROFS), OS_PATH), 5, [OS_PATH, "read-only"]),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), OS_PATH), 5, [OS_PATH, "disk"]),
        (FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), OS_PATH), 5, [OS_PATH]),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", OS_PATH), 5, [OS_PATH, "file"]),
        (OSError("/x/y.bin: cannot map the file"), 5, ["/x/y.bin"]),
        (FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), OS_PATH), 2, [OS_PATH]),
        (FileNotFoundError("config file not found: c.yaml"), 2, ["c.yaml"]),
        (ValueError("x.txt:5: not UTF-8"), 2, ["x.txt:5"]),
        (TypeError("bad type"), 2, ["bad type"]),
    ],
)
def test_user_errors_are_one_line_with_their_exit_code(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exc: BaseException,
    code: int,
    needles: list[str],
) -> None:
    failing_command(monkeypatch, exc)
    assert main(["report", "somewhere"]) == code
    line = one_error_line(capsys.readouterr().err, "report")
    assert line.startswith("textcl report: error: ")
    for needle in needles:
        assert needle.lower() in line.lower()


def test_os_error_names_path_reason_and_hint() -> None:
    from textcl.cli import describe_os_error

    e = OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/run")
    assert describe_os_error(e) == (
        "/mnt/ro/run: Read-only file system "
        "(the filesystem is read-only: choose a writable location)"
    )
    e2 = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a", None, "/b")
    assert describe_os_error(e2) == f"/a -> /b: {os.strerror(errno.EXDEV)}"


def test_ctrl_c_is_130_and_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    failing_command(monkeypatch, KeyboardInterrupt())
    assert main(["report", "x"]) == EXIT_INTERRUPTED == 130
    assert one_error_line(capsys.readouterr().err, "report") == "textcl report: interrupted"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    failing_command(monkeypatch, ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["report", "x"])
    failing_command(monkeypatch, RuntimeError("another bug"))
    with pytest.raises(RuntimeError, match="another bug"):
        main(["report", "x", "-v"])


def test_a_bug_in_a_process_prints_traceback_and_exits_1(tmp_path: Path) -> None:
    # A real process: the interpreter's traceback and exit 1 (not a clean "error:" line).
    code = (
        "import sys; from textcl import cli; from textcl.commands import report\n"
        "def run(args): raise ZeroDivisionError('a bug')\n"
        "report.run = run\n"
        "sys.exit(cli.main(['report', 'x']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError: a bug" in proc.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_traceback_and_keeps_the_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    failing_command(monkeypatch, errors.CorruptFileError("/r/x.npy: truncated"))
    argv = ["-v", "report", "x"] if where == "before" else ["report", "x", "-v"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "CorruptFileError" in err
    assert err.rstrip().splitlines()[-1] == "textcl report: error: /r/x.npy: truncated"


def test_verbose_counts_merge_before_and_after_the_subcommand() -> None:
    parser = build_parser()
    for argv, total in [
        (["train", "--model", "m"], 0),
        (["train", "--model", "m", "-v"], 1),
        (["-v", "train", "-vv"], 3),
        (["encode", "-vv", "--model", "m", "--input", "i", "--output", "o"], 2),
        (["index", "build", "--index", "x", "--verbose"], 1),
        (["search", "--index", "i", "--query", "q", "-v"], 1),
    ]:
        args = parser.parse_args(argv)
        assert args.verbose + getattr(args, "verbose_after", 0) == total, argv


def test_broken_pipe_is_quiet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    failing_command(monkeypatch, BrokenPipeError(errno.EPIPE, "Broken pipe"))
    saved = sys.stdout
    try:
        assert main(["report", "x"]) == 0
    finally:
        sys.stdout = saved
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------- real failures
@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TINY_SENTENCES) + "\n")
    return path


def train_argv(model: Path, corpus: Path, out: Path) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--train-file",
        str(corpus),
        "--output-dir",
        str(out),
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--eval-steps",
        "-1",
    ]


def encode_argv(model: Path, corpus: Path, out: Path) -> list[str]:
    argv = ["encode", "--model", str(model), "--input", str(corpus), "--output", str(out)]
    return [*argv, "--no-progress"]


@pytest.mark.parametrize("command", ["train", "encode"])
@pytest.mark.parametrize("case", ["output_is_a_file", "parent_is_a_file"])
def test_output_path_blocked_by_a_file(
    tiny_model_dir: Path,
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
    command: str,
    case: str,
) -> None:
    # Real failures also as root (chmod would not stop root): a file is where a folder goes.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = blocker if case == "output_is_a_file" else blocker / "sub" / "out"
    argv = (train_argv if command == "train" else encode_argv)(tiny_model_dir, corpus, out)
    code = main(argv)
    line = one_error_line(capsys.readouterr().err, command)
    # An OSError (5), or a check of textcl's own that says so first (usage: 2).
    assert code in (errors.EXIT_OS, errors.EXIT_USAGE), line
    assert str(blocker) in line
    assert blocker.read_text() == "not a folder\n"  # nothing overwritten


@pytest.mark.parametrize("command", ["train", "encode"])
def test_read_only_filesystem(
    tiny_model_dir: Path,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
    command: str,
) -> None:
    # No read-only mount is at hand (and root writes through chmod 0555): the filesystem
    # call that creates the output folder fails the way a read-only mount makes it fail.
    out = tmp_path / "ro" / "out"
    real_mkdir = os.mkdir

    def mkdir(path: object, *args: object, **kwargs: object) -> None:
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", mkdir)
    argv = (train_argv if command == "train" else encode_argv)(tiny_model_dir, corpus, out)
    assert main(argv) == errors.EXIT_OS
    line = one_error_line(capsys.readouterr().err, command)
    assert str(tmp_path / "ro") in line and "read-only" in line.lower()


def _unprivileged() -> list[str] | None:
    """A command prefix that runs as an unprivileged user (permission bits then apply)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder any user may enter (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="textcl-cli-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_as_plain_user(
    prefix: list[str], argv: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "textcl", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_unreadable_inputs_and_unwritable_outputs_as_a_plain_user(
    open_dir: Path, tiny_model_dir: Path
) -> None:
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    secret = open_dir / "run.yaml"
    secret.write_text("model: m\ntrain_file: f\noutput_dir: o\n")
    secret.chmod(0o000)
    queries = open_dir / "queries.txt"
    queries.write_text("a query\n")
    queries.chmod(0o000)
    model = open_dir / "model"
    shutil.copytree(tiny_model_dir, model)
    for path in [model, *model.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    corpus = open_dir / "corpus.txt"
    corpus.write_text("\n".join(TINY_SENTENCES) + "\n")
    corpus.chmod(0o644)
    locked = open_dir / "locked"  # a folder the user may read but not write
    locked.mkdir()
    locked.chmod(0o555)
    cases = [
        (["train", "--config", str(secret)], "train", secret),
        (["search", "--index", str(open_dir), "--queries", str(queries)], "search", queries),
        (train_argv(model, corpus, locked / "run"), "train", locked / "run"),
        (encode_argv(model, corpus, locked / "index"), "encode", locked / "index"),
    ]
    for argv, command, path in cases:
        proc = run_as_plain_user(prefix, argv, open_dir)
        line = one_error_line(proc.stderr, command)
        assert proc.returncode == errors.EXIT_OS, proc.stderr
        assert str(path) in line and "permission denied" in line.lower(), line
    assert list(locked.iterdir()) == []


# ---------------------------------------------------------------------- newcomer path
@pytest.mark.parametrize("target", ["test", "demo"])
def test_make_targets_install_what_they_need(tmp_path: Path, target: str) -> None:
    # README's two commands work on a fresh clone: each first builds the venv and installs
    # (the stamp), and installs again only when pyproject.toml changes (dry runs: make -n).
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"

    def dry(*extra: str) -> str:
        proc = subprocess.run(
            [make, "-n", "-C", str(ROOT), f"VENV={venv}", "DATA=/nonexistent", *extra, target],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    fresh = dry()
    assert "-m venv" in fresh and "pip install" in fresh and f"touch {venv}/.installed" in fresh
    work = "python -m pytest" if target == "test" else "make demo: data not found"
    assert fresh.index("pip install") < fresh.index(work)
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".installed").touch()  # newer than pyproject.toml: installed
    installed = dry()
    assert "pip install" not in installed and "-m venv" not in installed and work in installed
    changed = dry("-W", "pyproject.toml")  # pyproject.toml edited since the install
    assert "pip install" in changed and "-m venv" not in changed


def _st_search(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = ROOT / "examples" / "st_search.py"
    return subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, env=env, timeout=300
    )


def test_demo_search_script_skips_a_folder_that_is_not_sentence_transformers(
    tiny_model_dir: Path,
) -> None:
    proc = _st_search(str(tiny_model_dir), str(ROOT / "examples" / "search_corpus.txt"), "q")
    assert proc.returncode == 0, proc.stderr
    assert "not a sentence-transformers folder" in proc.stdout


@pytest.mark.slow
def test_demo_search_script_on_a_sentence_transformers_folder(minilm_dir: Path) -> None:
    # What `make demo` runs once saved folders are sentence-transformers folders.
    proc = _st_search(
        str(minilm_dir), str(ROOT / "examples" / "search_corpus.txt"), "Someone is playing music."
    )
    assert proc.returncode == 0, proc.stderr
    top = proc.stdout.splitlines()[1]
    assert "guitar" in top, proc.stdout


def test_unknown_flag_names_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "x", "--bogus", "1"]) == errors.EXIT_USAGE
    line = one_error_line(capsys.readouterr().err, "report")
    assert line == (
        "textcl report: error: unrecognized arguments: --bogus 1 (see textcl report --help)"
    )
