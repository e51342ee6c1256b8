"""Misuse of ``textcl encode / search / index / eval / push`` (issue 25), in the style of the
index fault suite: one test (or case) per misuse, run through ``textcl.cli.main`` in-process,
with the exit code, a message fragment naming the file/field/flag, no traceback, and the
sha256 of the old index / model folder before and after (nothing lost).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import huggingface_hub as hub
import pytest
import requests

import textcl.search.encode as encode_mod
from tests.helpers import CORPUS
from textcl.cli import main
from textcl.io import LOCK_NAME
from textcl.search import encode_corpus
from textcl.search.encode import _set_aside
from textcl.search.manifest import SET_ASIDE_NAME

HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="needs faiss")


def tree_hash(folder: Path) -> str:
    """sha256 over every file (relative path and bytes) under ``folder``, but the lock
    file (rewritten by each lock holder)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != LOCK_NAME:
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``textcl ARGV`` in-process: exit code and the one ``textcl CMD: ...`` stderr line
    (no traceback; progress bars of model loading aside)."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("textcl ")]
    if rc != 0:
        assert len(lines) == 1, err
        assert lines[0].startswith(f"textcl {argv[0]}: error: "), err
        assert "\n" not in err.split("error: ", 1)[1].rstrip("\n"), err  # one line
    return rc, "\n".join(lines)


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A model folder of the test's own (the session one must stay untouched)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture
def index(tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path) -> Path:
    """A complete 3-shard index of ``corpus_txt``."""
    out = tmp_path / "index"
    encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
    return out


def encode_argv(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "encode",
        "--model",
        str(model),
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--shard-size",
        "8",
        "--no-progress",
        *extra,
    ]


# ----------------------------------------------- 1. --overwrite never loses the old index
def _bad_utf8(tmp_path: Path, model: Path) -> tuple[list[str], str]:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\xff\xfe broken\n")
    return ["--input", str(bad)], "bad.txt"


def _bad_model(tmp_path: Path, model: Path) -> tuple[list[str], str]:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": "x"}')
    return ["--model", str(broken)], "broken-model"


def _no_cuda(tmp_path: Path, model: Path) -> tuple[list[str], str]:
    return ["--device", "cuda"], "--device"


OVERWRITE_FAILURES = {"bad utf-8 input": _bad_utf8, "bad model": _bad_model, "cuda": _no_cuda}


@pytest.mark.parametrize("case", sorted(OVERWRITE_FAILURES))
def test_overwrite_keeps_old_index_when_the_new_run_cannot_start(
    case: str,
    index: Path,
    tiny_model_dir: Path,
    corpus_txt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case == "cuda" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = tree_hash(index)
    change, fragment = OVERWRITE_FAILURES[case](tmp_path, tiny_model_dir)
    argv = encode_argv(tiny_model_dir, corpus_txt, index, "--overwrite")
    flag, value = change
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += change
    rc, err = run_cli(argv, capsys)
    assert rc != 0 and fragment in err
    assert tree_hash(index) == before
    assert not (index / SET_ASIDE_NAME).exists()


def test_overwrite_restores_old_index_when_first_shard_fails(
    index: Path,
    tiny_model_dir: Path,
    corpus_txt: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Disk full while writing the first new shard: exit 5 naming the shard file, the old
    index back in place, byte for byte."""
    before = tree_hash(index)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rc, err = run_cli(encode_argv(tiny_model_dir, corpus_txt, index, "--overwrite"), capsys)
    assert rc == 5 and "shard-00000.npy" in err and "disk is full" in err
    monkeypatch.undo()
    assert tree_hash(index) == before
    assert not (index / SET_ASIDE_NAME).exists()


def test_overwrite_replaces_after_first_shard(
    index: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(CORPUS)) + "\n", encoding="utf-8")
    rc, _ = run_cli(encode_argv(tiny_model_dir, other, index, "--overwrite"), capsys)
    assert rc == 0
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["complete"] and manifest["source"]["path"] == str(other.resolve())
    assert not (index / SET_ASIDE_NAME).exists()


def test_killed_overwrite_before_first_shard_restores_old_index(
    index: Path, tiny_model_dir: Path, corpus_txt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 after the old index was set aside, before the new one's first manifest: the
    next run restores the old index (here: complete, nothing to do)."""
    before = tree_hash(index)
    _set_aside(index)
    (index / "shard-00000.npy").write_bytes(b"half a new shard")  # the killed run's file
    rc, err = run_cli(_search(index), capsys)  # meanwhile, search says what to do
    assert rc == 2 and ".replaced" in err and "rerun `textcl encode`" in err
    rc, _ = run_cli(encode_argv(tiny_model_dir, corpus_txt, index), capsys)
    assert rc == 0
    assert tree_hash(index) == before
    assert not (index / SET_ASIDE_NAME).exists()


def test_killed_overwrite_after_first_shard_keeps_new_index(
    index: Path, tiny_model_dir: Path, corpus_txt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 after the new run's first shard was listed: the new index wins (resumed),
    the set-aside copy is deleted."""
    aside = index / SET_ASIDE_NAME
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")  # the old index, now superseded
    rc, _ = run_cli(encode_argv(tiny_model_dir, corpus_txt, index), capsys)
    assert rc == 0
    assert not aside.exists()
    assert json.loads((index / "manifest.json").read_text())["complete"]


# ---------------------------------------------- 2. the output apart from model and input
@pytest.mark.parametrize("where", ["model folder", "inside model", "holds input"])
def test_encode_output_apart_from_model_and_input(
    where: str,
    model_copy: Path,
    corpus_txt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = tree_hash(model_copy)
    corpus_before = corpus_txt.read_bytes()
    out = {
        "model folder": model_copy,
        "inside model": model_copy / "index",
        "holds input": corpus_txt.parent,
    }[where]
    rc, err = run_cli(encode_argv(model_copy, corpus_txt, out), capsys)
    assert rc == 2 and "--output" in err
    assert ("input" if where == "holds input" else "model folder") in err
    assert tree_hash(model_copy) == before
    assert corpus_txt.read_bytes() == corpus_before
    assert not (model_copy / "manifest.json").exists()


@needs_faiss
def test_index_build_refuses_a_model_folder(
    model_copy: Path, corpus_txt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An index folder that sits inside its model folder (moved there after encoding)."""
    out = tmp_path / "idx"
    encode_corpus(model_copy, corpus_txt, out, shard_size=8, show_progress=False)
    moved = Path(shutil.move(str(out), str(model_copy / "idx")))
    before = tree_hash(model_copy)
    rc, err = run_cli(["index", "build", "--index", str(moved), "--kind", "flat"], capsys)
    assert rc == 2 and "--index" in err and "model folder" in err
    assert tree_hash(model_copy) == before


# ------------------------------------------------ 3. an input rewritten during encoding
def _rewrite_during_encode(monkeypatch: pytest.MonkeyPatch, corpus: Path, how: str) -> None:
    """``truncated``: the file cut short after the first shard is written (a small file is
    read ahead whole, so the later shards come from the old content: the stat check finds
    it); ``same size and mtime``: the content changed between the scan and the encoding
    pass, size and modification time put back (only the re-hash finds it)."""
    if how == "truncated":
        real = encode_mod.write_shard
        calls = []

        def write_shard(*args: Any, **kwargs: Any) -> Any:
            info = real(*args, **kwargs)
            calls.append(1)
            if len(calls) == 1:
                corpus.write_text("\n".join(CORPUS[:9]) + "\n", encoding="utf-8")
            return info

        monkeypatch.setattr(encode_mod, "write_shard", write_shard)
        return
    real_load = encode_mod.load_encoder

    def load_encoder(*args: Any, **kwargs: Any) -> Any:
        st = corpus.stat()
        corpus.write_bytes(corpus.read_bytes().replace(b"guitar", b"GUITAR"))
        os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(encode_mod, "load_encoder", load_encoder)


@pytest.mark.parametrize("how", ["truncated", "same size and mtime"])
def test_input_rewritten_during_encode_is_never_complete(
    how: str,
    tiny_model_dir: Path,
    corpus_txt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    original = corpus_txt.read_bytes()
    assert b"guitar" in original
    out = tmp_path / "idx"
    _rewrite_during_encode(monkeypatch, corpus_txt, how)
    rc, err = run_cli(encode_argv(tiny_model_dir, corpus_txt, out), capsys)
    assert rc == 2 and str(corpus_txt.resolve()) in err and "changed" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"]
    monkeypatch.undo()
    corpus_txt.write_bytes(original)
    if how == "truncated":  # shards written from the scanned content: they resume
        assert len(manifest["shards"]) == 1
        rc, _ = run_cli(encode_argv(tiny_model_dir, corpus_txt, out), capsys)
    else:  # shards from other content than scanned: never resumed over the original
        assert len(manifest["shards"]) == 3
        rc, err = run_cli(encode_argv(tiny_model_dir, corpus_txt, out), capsys)
        assert rc == 4 and "source checksum" in err
        argv = encode_argv(tiny_model_dir, corpus_txt, out, "--overwrite")
        rc, _ = run_cli(argv, capsys)
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == len(CORPUS)


# ------------------------------------------------------------ 4. FAISS search parameters
def _search(index: Path, *extra: str) -> list[str]:
    return ["search", "--index", str(index), "--query", CORPUS[0], *extra]


def test_search_params_on_exact_search(index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--nprobe", "--ef-search"):
        rc, err = run_cli(_search(index, flag, "8"), capsys)
        assert rc == 2 and flag in err and "exact search" in err


@needs_faiss
@pytest.mark.parametrize(
    ("kind", "extra", "fragment"),
    [
        ("hnsw", ["--ef-search", "-5"], "--ef-search"),
        ("hnsw", ["--ef-search", "0"], "--ef-search"),
        ("hnsw", ["--nprobe", "4"], "--faiss ivf"),
        ("ivf", ["--nprobe", "-1"], "--nprobe"),
        ("ivf", ["--nprobe", "0"], "--nprobe"),
        ("ivf", ["--ef-search", "64"], "--faiss hnsw"),
        ("flat", ["--nprobe", "4"], "'flat'"),
    ],
)
def test_bad_faiss_search_params(
    kind: str,
    extra: list[str],
    fragment: str,
    index: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nlist = ["--nlist", "2"] if kind == "ivf" else []
    assert main(["index", "build", "--index", str(index), "--kind", kind, *nlist]) == 0
    capsys.readouterr()
    before = tree_hash(index)
    rc, err = run_cli(_search(index, "--faiss", kind, *extra), capsys)
    assert rc == 2 and fragment in err and extra[0] in err
    assert tree_hash(index) == before


# ------------------------------------------------ 5. a manifest.json linking outside
def test_manifest_symlink_leading_out(index: Path, tmp_path: Path, capsys: Any) -> None:
    outside = tmp_path / "elsewhere.json"
    shutil.move(str(index / "manifest.json"), str(outside))
    (index / "manifest.json").symlink_to(outside)
    for argv in (_search(index), ["index", "verify", "--index", str(index)]):
        rc, err = run_cli(argv, capsys)
        assert rc == 3 and "manifest.json" in err and "outside the index folder" in err


# ------------------------------------------------------- 6. a device this machine lacks
@pytest.mark.parametrize("device", ["cuda", "cuda:7", "gpu0"])
@pytest.mark.parametrize("command", ["encode", "search", "eval"])
def test_missing_device_is_one_line(
    command: str,
    device: str,
    index: Path,
    tiny_model_dir: Path,
    corpus_txt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if device.startswith("cuda") and __import__("torch").cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    argv = {
        "encode": encode_argv(tiny_model_dir, corpus_txt, tmp_path / "new"),
        "search": _search(index),
        "eval": ["eval", "--model", str(tiny_model_dir), "--tasks", "stsb"],
    }[command] + ["--device", device]
    before = tree_hash(index)
    rc, err = run_cli(argv, capsys)
    assert rc == 2 and f"--device {device!r}" in err
    assert tree_hash(index) == before
    assert not (tmp_path / "new").exists()


# ------------------------------------------------ 7. operating-system errors: exit 5, path
def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)


def test_disk_full_in_encode_names_the_file(
    tiny_model_dir: Path,
    corpus_txt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _disk_full(monkeypatch)
    out = tmp_path / "idx"
    rc, err = run_cli(encode_argv(tiny_model_dir, corpus_txt, out), capsys)
    assert rc == 5 and str(out / "shard-00000.npy") in err


@needs_faiss
def test_disk_full_in_index_build_names_the_file(
    index: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_hash(index)
    _disk_full(monkeypatch)
    rc, err = run_cli(["index", "build", "--index", str(index), "--kind", "flat"], capsys)
    assert rc == 5 and "faiss-flat.index" in err
    monkeypatch.undo()
    assert tree_hash(index) == before


def test_encode_log_write_error_names_the_file(
    tiny_model_dir: Path,
    corpus_txt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A write error without a file name (what a full disk gives on flush) names the log."""
    real_open = open

    def failing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, mode, *args, **kwargs)
        if str(file).endswith("encode_log.jsonl"):
            fh.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return fh

    monkeypatch.setattr("builtins.open", failing_open)
    out = tmp_path / "idx"
    rc, err = run_cli(encode_argv(tiny_model_dir, corpus_txt, out), capsys)
    assert rc == 5 and "encode_log.jsonl" in err


# ------------------------------------------------------- 8. push without a network
@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> mock.MagicMock:
    api = mock.create_autospec(hub.HfApi, instance=True)
    api.create_repo.side_effect = requests.ConnectionError(
        "HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded"
    )
    api.upload_folder.return_value = SimpleNamespace(commit_url="never")
    monkeypatch.setattr(hub, "HfApi", mock.create_autospec(hub.HfApi, return_value=api))
    monkeypatch.setattr(hub, "get_token", lambda: "hf_test_token")
    return api


def test_push_without_network(
    offline_hub: mock.MagicMock,
    model_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    rc, err = run_cli(["push", str(model_copy), "--repo-id", "me/tiny"], capsys)
    assert rc == 5
    assert "https://huggingface.co" in err and "could not create the repository me/tiny" in err
    assert "ConnectionError" in err
    offline_hub.upload_folder.assert_not_called()


def test_push_upload_failure_names_the_step(
    offline_hub: mock.MagicMock, model_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offline_hub.create_repo.side_effect = None
    offline_hub.upload_folder.side_effect = requests.HTTPError(
        "503 Server Error: Service Unavailable"
    )
    rc, err = run_cli(["push", str(model_copy), "--repo-id", "me/tiny"], capsys)
    assert rc == 5 and f"could not upload {model_copy}" in err and "503" in err


# ----------------------------------------- beyond the list: eval -o over its own inputs
@pytest.mark.parametrize("where", ["model config", "inside data", "a folder"])
def test_eval_output_apart_from_model_and_data(
    where: str, model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``eval -o MODEL/config.json`` replaced the model's config after a full evaluation;
    now refused before any work, like a file of the STS data folder or a folder."""
    data = tmp_path / "sts"
    data.mkdir()
    (data / "results.json").write_text("a data file")  # replaced by -o: refused
    out = {
        "model config": model_copy / "config.json",
        "inside data": data / "results.json",
        "a folder": tmp_path,
    }[where]
    before = tree_hash(model_copy)
    argv = ["eval", "--model", str(model_copy), "--tasks", "stsb", "--data", str(data)]
    rc, err = run_cli([*argv, "-o", str(out)], capsys)
    assert rc == 2 and "-o/--output" in err and str(out) in err
    assert tree_hash(model_copy) == before
    assert (data / "results.json").read_text() == "a data file"


# ------------------------------------- beyond the list: index build options that do not apply
@needs_faiss
@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--kind", "hnsw", "--ef-construction", "0"], "ef_construction (--ef-construction)"),
        (["--kind", "ivf", "--seed", "-1"], "seed (--seed)"),
        (["--kind", "hnsw", "--nlist", "2"], "--nlist applies only to --kind ivf"),
        (["--kind", "flat", "--m", "8"], "--m applies only to --kind hnsw"),
        (["--kind", "ivf", "--ef-construction", "64"], "--ef-construction applies only"),
    ],
)
def test_index_build_options(
    extra: list[str], fragment: str, index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ef_construction 0 was built silently, --seed -1 failed without naming the field,
    --nlist on hnsw and --m on flat were ignored."""
    before = tree_hash(index)
    rc, err = run_cli(["index", "build", "--index", str(index), *extra], capsys)
    assert rc == 2 and fragment in err
    assert tree_hash(index) == before
