"""Fault injection for index folders (issue 14): kill -9 of `textcl encode` at many points
then resume (byte-identical to an uninterrupted run), concurrent writers, a folder holding
another corpus or model, bad input found before any shard, and every file type of an index
folder damaged, truncated, swapped or crafted.

Outcome per damage case: a clear error (CorruptFileError / FileNotFoundError naming the
file) or the exactly-correct result; never wrong scores or the wrong sentence.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import CORPUS
from textcl.errors import CorruptFileError, FolderBusyError, FolderConflictError, InputError
from textcl.search import EmbeddingIndex, build_faiss_index, encode_corpus, verify_index
from textcl.search.faiss_index import faiss_search
from textcl.search.model import model_weights_hash

REPO = Path(__file__).resolve().parents[2]
SKIP = ("encode_log.jsonl", ".textcl.lock")


def index_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of an index folder but the timing log and the lock file (and no temp)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in SKIP
    }


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------ the damage matrix
@pytest.fixture
def built(tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path) -> Path:
    out = tmp_path / "built"
    encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
    return out


QUERIES = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)


def _results(folder: Path, faiss_kind: str | None = None) -> list[Any]:
    """Top-5 (scores, ids, texts) of fixed query vectors: the whole read path."""
    idx = EmbeddingIndex(folder)
    scores, rows = idx.search_vectors(QUERIES, top_k=5, faiss_kind=faiss_kind)
    return [
        (np.round(scores[q], 5).tolist(), idx.records(rows[q].tolist())) for q in range(len(rows))
    ]


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = _manifest(folder)
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


def _flip(path: Path, at: int, width: int = 4) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + width):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _npy_header_len(path: Path) -> int:
    with path.open("rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _huge_values(folder: Path) -> None:
    """Overwrite shard 1's first row with 4e31s in place (same size, valid header)."""
    path = folder / "shard-00001.npy"
    h = _npy_header_len(path)
    data = bytearray(path.read_bytes())
    data[h : h + 32 * 4] = np.full(32, 4e31, dtype=np.float32).tobytes()
    path.write_bytes(bytes(data))


def _reshaped(folder: Path) -> None:
    path = folder / "shard-00000.npy"
    arr = np.load(path)
    np.save(path, arr.reshape(arr.shape[0] * 2, arr.shape[1] // 2))  # same bytes, other shape


def _other_dtype(folder: Path) -> None:
    path = folder / "shard-00000.npy"
    np.save(path, np.load(path).view(np.int32))


def _shuffle_lines(folder: Path) -> None:
    path = folder / "shard-00000.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[1:] + lines[:1]))  # same size and rows, other order


def _swap_texts(folder: Path) -> None:
    a, b = folder / "shard-00000.jsonl", folder / "shard-00001.jsonl"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _offsets_values(folder: Path) -> None:
    path = folder / "shard-00000.offsets.npy"
    arr = np.load(path)
    np.save(path, arr[::-1].copy())  # same size, wrong values


def _offsets_values_old_manifest(folder: Path) -> None:
    """An index whose manifest predates offsets checksums: the values are still checked."""
    _offsets_values(folder)

    def drop(d: dict[str, Any]) -> None:
        for s in d["shards"]:
            s.pop("offsets_sha256")
            s.pop("offsets_bytes")

    _edit_manifest(folder, drop)


def _offsets_dtype(folder: Path) -> None:
    path = folder / "shard-00000.offsets.npy"
    np.save(path, np.load(path).astype(np.float64))  # int64 -> float64: same size


def _symlink_escape(folder: Path) -> None:
    outside = folder.parent / "outside.npy"
    shutil.copy(folder / "shard-00000.npy", outside)
    (folder / "shard-00000.npy").unlink()
    (folder / "shard-00000.npy").symlink_to(outside)


def _shard_field(key: str, value: Any, shard: int = 0) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        _edit_manifest(folder, lambda d: d["shards"][shard].__setitem__(key, value))

    return damage


def _field(key: str, value: Any) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        _edit_manifest(folder, lambda d: d.__setitem__(key, value))

    return damage


def _raw_manifest(text: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / "manifest.json").write_text(text, encoding="utf-8")

    return damage


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    # manifest: damaged
    "manifest truncated": (
        lambda f: _truncate(f / "manifest.json"),
        r"manifest\.json.*not valid JSON",
    ),
    "manifest empty": (_raw_manifest(""), r"manifest\.json.*not valid JSON"),
    "manifest not an object": (
        _raw_manifest("[1, 2]"),
        "index manifest must be a JSON object, got list",
    ),
    "manifest latin-1 bytes": (
        lambda f: (f / "manifest.json").write_bytes(b'{"model": "caf\xe9"}'),
        "not UTF-8",
    ),
    "manifest format 99": (_field("format", 99), "format 99 is not supported"),
    "manifest unknown field": (_field("extra", 1), "unknown field"),
    "manifest count off": (_field("count", 999), "count 999 != sum"),
    "manifest dtype int4": (_field("dtype", "int4"), "dtype must be one of"),
    "manifest dtype int8, no quantization": (_field("dtype", "int8"), "quantization must hold"),
    "manifest dimension bool": (_field("dimension", True), "bad dimension"),
    "manifest dimension 64": (_field("dimension", 64), "manifest lists float32"),
    "manifest shards not a list": (_field("shards", {"a": 1}), "shards must be a list"),
    "manifest probe garbage": (_field("probe", "x"), "probe must be lists"),
    # manifest: crafted file names
    "shard path ../": (_shard_field("embeddings", "../../x/emb.npy"), "outside the index folder"),
    "shard path absolute": (_shard_field("texts", "/etc/passwd"), "outside the index folder"),
    "shard path inner ..": (_shard_field("offsets", "a/../../o.npy"), "outside the index folder"),
    "shard path backslash": (_shard_field("texts", "..\\x.jsonl"), "outside the index folder"),
    "shard path empty": (_shard_field("embeddings", ""), "bad file name"),
    "shard path not a string": (_shard_field("embeddings", 7), "bad file name"),
    "shard symlink escaping": (_symlink_escape, "outside the index folder"),
    "shard rows string": (_shard_field("rows", "8"), "rows must be an integer"),
    "shard rows 0": (_shard_field("rows", 0), "bad rows"),
    "shard index swapped": (_shard_field("index", 2), "has index 2"),
    "shard entry not an object": (
        lambda f: _edit_manifest(f, lambda d: d["shards"].__setitem__(0, "x")),
        "must be an object",
    ),
    "shard sha256 crafted": (_shard_field("sha256", "0" * 64, 1), "sha256 differs"),
    # embeddings .npy
    "npy truncated": (lambda f: _truncate(f / "shard-00000.npy"), r"shard-00000\.npy.*bytes"),
    "npy header zeroed": (
        lambda f: _flip(f / "shard-00000.npy", 0, 8),
        r"shard-00000\.npy: corrupt shard",
    ),
    "npy values 4e31": (_huge_values, r"shard-00001\.npy: shard 1 embeddings file's sha256"),
    "npy bytes flipped": (lambda f: _flip(f / "shard-00002.npy", 300), "sha256 differs"),
    "npy other shape": (_reshaped, r"shard-00000\.npy: shard holds float32\[16, 16\]"),
    "npy other dtype": (_other_dtype, r"shard-00000\.npy: shard holds int32"),
    "npy missing": (lambda f: (f / "shard-00001.npy").unlink(), r"shard-00001\.npy: missing"),
    # texts .jsonl
    "jsonl truncated": (lambda f: _truncate(f / "shard-00000.jsonl"), r"shard-00000\.jsonl.*bytes"),
    "jsonl lines shuffled": (_shuffle_lines, r"shard-00000\.jsonl: shard 0 texts file's sha256"),
    "jsonl swapped between shards": (_swap_texts, r"shard-0000[01]\.jsonl"),
    "jsonl bytes flipped": (lambda f: _flip(f / "shard-00001.jsonl", 20), "sha256 differs"),
    "jsonl missing": (lambda f: (f / "shard-00000.jsonl").unlink(), r"shard-00000\.jsonl: missing"),
    # offsets .npy
    "offsets truncated": (
        lambda f: _truncate(f / "shard-00000.offsets.npy"),
        r"shard-00000\.offsets\.npy.*bytes",
    ),
    "offsets values": (_offsets_values, r"offsets\.npy: shard 0 offsets file's sha256"),
    "offsets values, old manifest": (
        _offsets_values_old_manifest,
        r"offsets\.npy: corrupt offsets",
    ),
    "offsets dtype": (_offsets_dtype, "sha256 differs"),
    "offsets header zeroed": (lambda f: _flip(f / "shard-00001.offsets.npy", 0, 8), "sha256"),
}
"""name -> (damage, the error it must raise: CorruptFileError or FileNotFoundError)."""

BENIGN: dict[str, Callable[[Path], None]] = {
    "encode log garbage": lambda f: (f / "encode_log.jsonl").write_bytes(b"\xff\x00garbage"),
    "lock file garbage": lambda f: (f / ".textcl.lock").write_bytes(b"\xff\xfe"),
    "stray temp file": lambda f: (f / ".shard-00000.npy.tmp-abc").write_bytes(b"half"),
    "unrelated file": lambda f: (f / "notes.txt").write_text("mine"),
}
"""Damage that must not change any result."""


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_index_gives_a_clear_error(built: Path, case: str) -> None:
    good = _results(built)
    damage, message = DAMAGE[case]
    damage(built)
    outcomes = []
    for step in (lambda: _results(built), lambda: verify_index(built)):
        try:
            got = step()
        except (CorruptFileError, FileNotFoundError) as e:
            assert "Traceback" not in str(e)
            outcomes.append(str(e))
        else:
            assert got is not None
            if isinstance(got, list):
                assert got == good  # a result is only allowed when it is the right one
            outcomes.append("ok")
    # search finds the damage (at open or on the damaged file's first use) and names it,
    # never answering from damaged files; verify (every byte) finds it too
    assert re.search(message, outcomes[0]), outcomes
    assert outcomes[1] != "ok", f"{case}: verify passed a damaged index"


@pytest.mark.parametrize("case", sorted(BENIGN))
def test_benign_changes_keep_results(built: Path, case: str) -> None:
    good = _results(built)
    BENIGN[case](built)
    assert _results(built) == good
    verify_index(built)


def test_damage_counts() -> None:
    """The matrix above, counted (reported in the issue's closing table)."""
    kinds = {"manifest": 0, "shard path": 0, "npy": 0, "jsonl": 0, "offsets": 0}
    for name in DAMAGE:
        for k in kinds:
            if name.startswith(k) or (k == "shard path" and name.startswith("shard ")):
                kinds[k] += 1
                break
    assert sum(kinds.values()) == len(DAMAGE) >= 40
    assert len(BENIGN) == 4


def test_lazy_sha256_on_first_use_not_on_open(built: Path) -> None:
    _huge_values(built)
    idx = EmbeddingIndex(built)  # sizes and headers only: opens
    with pytest.raises(CorruptFileError, match=r"shard-00001\.npy"):
        idx.search_vectors(QUERIES, top_k=3)
    with pytest.raises(CorruptFileError, match=r"shard-00001\.npy"):
        EmbeddingIndex(built, verify=True)
    with pytest.raises(CorruptFileError, match=r"shard-00001\.npy"):
        idx.vectors(8, 9)


# ------------------------------------------------------------------------------------ FAISS
@pytest.fixture
def with_faiss(built: Path) -> Path:
    pytest.importorskip("faiss")
    build_faiss_index(built, "flat")
    return built


def _drop_faiss_size(folder: Path) -> None:
    def drop(d: dict[str, Any]) -> None:
        d["faiss"]["flat"].pop("bytes")
        d["faiss"]["flat"].pop("sha256")

    _edit_manifest(folder, drop)


FAISS_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "faiss truncated": (
        lambda f: _truncate(f / "faiss-flat.index"),
        "faiss-flat.index: FAISS index file has",
    ),
    "faiss bytes flipped": (lambda f: _flip(f / "faiss-flat.index", 200), "sha256 differs"),
    "faiss truncated, old manifest": (
        lambda f: (_truncate(f / "faiss-flat.index"), _drop_faiss_size(f)),
        "not a readable FAISS index",
    ),
    "faiss path ../": (
        lambda f: _edit_manifest(f, lambda d: d["faiss"]["flat"].__setitem__("file", "../x.index")),
        "outside the index folder",
    ),
    "faiss missing": (lambda f: (f / "faiss-flat.index").unlink(), "missing"),
}


@pytest.mark.parametrize("case", sorted(FAISS_DAMAGE))
def test_damaged_faiss_index(with_faiss: Path, case: str) -> None:
    from textcl.search import faiss_index

    good = _results(with_faiss, "flat")
    assert good == _results(with_faiss)  # flat == exact
    faiss_index._LOADED.clear()
    damage, message = FAISS_DAMAGE[case]
    damage(with_faiss)
    for step in (lambda: _results(with_faiss, "flat"), lambda: verify_index(with_faiss)):
        with pytest.raises((CorruptFileError, FileNotFoundError)) as err:
            step()
        assert re.search(message, str(err.value)), str(err.value)


def test_faiss_checked_once_per_process(with_faiss: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from textcl.search import faiss_index

    faiss_index._LOADED.clear()
    idx = EmbeddingIndex(with_faiss)
    faiss_search(idx, QUERIES, 3, "flat")
    reads: list[Path] = []
    real = Path.read_bytes

    def spy(self: Path) -> bytes:
        reads.append(self)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    faiss_search(idx, QUERIES, 3, "flat")
    assert reads == []  # cached: no second read or hash


# ------------------------------------------------------------- one owner, one corpus, one model
def test_second_writer_refused_at_once(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time\nfrom textcl.io import FolderLock\n"
            "FolderLock(sys.argv[1], 'index').acquire()\nprint('held', flush=True)\ntime.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with pytest.raises(
            FolderBusyError, match=rf"{out}: this index is in use by pid {holder.pid}"
        ):
            encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
        assert time.perf_counter() - t0 < 10
        assert not (out / "manifest.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
    assert EmbeddingIndex(out).manifest.complete


def test_other_corpus_refused(tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
    before = index_bytes(out)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(CORPUS)) + "\n", encoding="utf-8")
    with pytest.raises(
        FolderConflictError, match=r"source checksum.*use --overwrite or another folder"
    ):
        encode_corpus(tiny_model_dir, other, out, shard_size=8, show_progress=False)
    with pytest.raises(FolderConflictError, match="shard_size"):
        encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=4, show_progress=False)
    assert index_bytes(out) == before  # nothing mixed in
    encode_corpus(tiny_model_dir, other, out, shard_size=8, overwrite=True, show_progress=False)
    assert EmbeddingIndex(out).records([0]) == [("1", CORPUS[-1])]


def _crash_after_shards(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    import textcl.search.encode as enc_mod

    real = enc_mod.write_shard

    def crashing(*args: Any, **kwargs: Any) -> Any:
        if args[3] == n:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(enc_mod, "write_shard", crashing)


def test_changed_model_folder_refused_on_resume_and_when_complete(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "idx"
    h0 = model_weights_hash(model)
    with monkeypatch.context() as m:
        _crash_after_shards(m, 1)
        with pytest.raises(KeyboardInterrupt):
            encode_corpus(model, corpus_txt, out, shard_size=8, show_progress=False)
    assert len(_manifest(out)["shards"]) == 1 and _manifest(out)["model_hash"] == h0
    # the same path now holds other weights (a retrained model saved over it)
    weights = model / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k in state if k.endswith("embeddings.word_embeddings.weight"))
    state[name] = state[name] + 0.01 * torch.ones_like(state[name])
    save_file(state, str(weights))
    assert model_weights_hash(model) != h0
    with pytest.raises(
        FolderConflictError, match=r"model_hash: the model's weights/configs changed"
    ):
        encode_corpus(model, corpus_txt, out, shard_size=8, show_progress=False)
    encode_corpus(model, corpus_txt, out, shard_size=8, overwrite=True, show_progress=False)
    # complete, then a config change: refused too, not "nothing to do"
    cfg = json.loads((model / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-5
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FolderConflictError, match="model_hash"):
        encode_corpus(model, corpus_txt, out, shard_size=8, show_progress=False)


def test_search_refuses_a_changed_model_folder(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    from textcl.search import search

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "idx"
    encode_corpus(model, corpus_txt, out, shard_size=8, show_progress=False)
    assert search(out, CORPUS[3], top_k=1)[0][0].text == CORPUS[3]
    cfg = json.loads((model / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-5  # a change too small for the probe cosine
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FolderConflictError, match=r"the model folder changed since"):
        search(out, CORPUS[3], top_k=1)


def test_model_hash_covers_weights_configs_not_readme(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    h = model_weights_hash(model)
    (model / "README.md").write_text("a card")
    (model / ".hidden.json").write_text("{}")
    (model / "onnx").mkdir()
    (model / "onnx" / "model.onnx").write_bytes(b"x")
    assert model_weights_hash(model) == h
    for name in ("textcl_config.json", "modules.json"):
        (model / name).write_text("{}")
        assert model_weights_hash(model) != h
        h = model_weights_hash(model)
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert model_weights_hash(model) != h


def test_in_memory_encoder_hash(tiny_encoder: Any) -> None:
    import torch

    h = model_weights_hash(tiny_encoder)
    assert h.startswith("state:") and model_weights_hash(tiny_encoder) == h
    with torch.no_grad():
        next(tiny_encoder.model.parameters()).add_(1e-3)
    assert model_weights_hash(tiny_encoder) != h


# ------------------------------------------------------------------------- input and folder
def test_bad_line_found_before_any_shard(tiny_model_dir: Path, tmp_path: Path) -> None:
    lines = [f"sentence number {i}".encode() for i in range(1, 6001)]
    lines[5000] = b"caf\xe9 au lait"  # line 5001
    src = tmp_path / "big.txt"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "idx"
    with pytest.raises(InputError, match=r"big\.txt:5001: not valid UTF-8"):
        encode_corpus(tiny_model_dir, src, out, shard_size=1000, show_progress=False)
    assert sorted(p.name for p in out.iterdir() if p.name != ".textcl.lock") == []
    # fixed: a fresh, complete run (small slice to keep the test fast)
    src.write_bytes(b"\n".join(lines[:30]) + b"\n")
    m = encode_corpus(tiny_model_dir, src, out, shard_size=10, show_progress=False)
    assert m.complete and m.count == 30


def test_bad_jsonl_found_before_any_shard(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [json.dumps({"text": s}) for s in CORPUS]
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join([*rows, '{"text": 3}', *rows]) + "\n", encoding="utf-8")
    out = tmp_path / "idx"
    with pytest.raises(InputError, match=r"c\.jsonl:24: field 'text' is int"):
        encode_corpus(tiny_model_dir, src, out, shard_size=4, show_progress=False)
    assert not (out / "manifest.json").exists() and not list(out.glob("shard-*"))
    src.write_text("\n".join([*rows[:5], "{not json", *rows]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"c\.jsonl:6: not valid JSON"):
        encode_corpus(tiny_model_dir, src, out, shard_size=4, show_progress=False)
    assert not list(out.glob("shard-*"))


def test_output_is_a_file(tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path) -> None:
    f = tmp_path / "taken"
    f.write_text("x")
    with pytest.raises(InputError, match=r"taken: the output exists and is a file"):
        encode_corpus(tiny_model_dir, corpus_txt, f, show_progress=False)
    assert f.read_text() == "x"


def test_stale_temp_cleaned_and_umask_followed(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "idx"
    old = os.umask(0o027)
    try:
        with monkeypatch.context() as m:
            _crash_after_shards(m, 1)
            with pytest.raises(KeyboardInterrupt):
                encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
        (out / ".shard-00001.npy.tmp-x1").write_bytes(b"half")  # what a kill -9 leaves
        (out / ".manifest.json.tmp-x2").write_bytes(b"{")
        encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
    finally:
        os.umask(old)
    assert not list(out.glob(".*.tmp-*"))
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.name != ".textcl.lock"
    }
    assert set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o750


# ----------------------------------------------------------------------- kill -9, subprocesses
KILLER = r"""
import os, signal, sys, time
import textcl.io as tio
import textcl.search.encode as enc
from textcl.encoder import SentenceEncoder

mode, n = sys.argv[1], int(sys.argv[2])
state = {"writes": 0, "encodes": 0}
real_write, real_replace, real_encode = tio.atomic_write_bytes, os.replace, SentenceEncoder.encode

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def write(path, data):
    state["writes"] += 1
    if state["writes"] == n:
        if mode == "before":
            die()
        if mode == "rename":  # the temp file is written and fsynced, not yet renamed
            os.replace = lambda a, b: die()
        if mode == "torn":  # half the bytes reach the temp file
            import tempfile
            fd, _ = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=os.path.dirname(path))
            os.write(fd, data[: len(data) // 2])
            die()
        if mode == "hang":
            print("hanging", flush=True)
            time.sleep(300)
    out = real_write(path, data)
    if state["writes"] == n and mode == "after":
        die()
    return out

def encode(self, *a, **k):
    state["encodes"] += 1
    if mode == "encode" and state["encodes"] == n:
        die()
    return real_encode(self, *a, **k)

tio.atomic_write_bytes = write
enc.atomic_write_bytes = write
SentenceEncoder.encode = encode
from textcl.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _encode_cmd(model: Path, src: Path, out: Path) -> list[str]:
    return [
        "encode", "--model", str(model), "--input", str(src), "--output", str(out),
        "--shard-size", "4", "--batch-size", "3", "--no-progress", "--device", "cpu",
    ]  # fmt: skip


def _run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=300, **kw)


# 23 texts, shard size 4: 6 shards; writes = 6 x (3 files + manifest) + final manifest = 25;
# encode calls = 1 probe + 6 shards.
KILL_POINTS = [
    ("encode", 3),  # while encoding shard 1 (shard 0 done)
    ("rename", 2),  # shard 0's texts in a temp file, not yet renamed
    ("after", 4),  # right after shard 0's manifest: between shards
    ("torn", 7),  # half of shard 1's offsets written
    ("after", 9),  # shard 2's embeddings in place, not yet in the manifest
    ("before", 25),  # before the final "complete" manifest
]
for _seed in (1, 3):  # plus one random point per seed (rename 13, torn 3)
    _rng = np.random.default_rng(_seed)
    KILL_POINTS.append(
        (str(_rng.choice(["before", "rename", "after", "torn"])), int(_rng.integers(1, 26)))
    )


@pytest.mark.slow
def test_kill9_then_resume_is_byte_identical(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    clean = tmp_path / "clean"
    r = _run([sys.executable, "-m", "textcl", *_encode_cmd(tiny_model_dir, corpus_txt, clean)])
    assert r.returncode == 0, r.stderr
    want = index_bytes(clean)
    assert len([n for n in want if n.startswith("shard-")]) == 18
    outcomes = []
    for i, (mode, n) in enumerate(KILL_POINTS):
        out = tmp_path / f"k{i}"
        cmd = _encode_cmd(tiny_model_dir, corpus_txt, out)
        r = _run([sys.executable, "-c", KILLER, mode, str(n), *cmd])
        assert r.returncode == -signal.SIGKILL, (mode, n, r.returncode, r.stderr[-2000:])
        r = _run([sys.executable, "-m", "textcl", *cmd])
        assert r.returncode == 0, (mode, n, r.stderr[-2000:])
        assert index_bytes(out) == want, (mode, n)
        assert not list(out.glob(".*.tmp-*")), (mode, n)
        outcomes.append((mode, n))
    assert len(outcomes) == len(KILL_POINTS) == 8


@pytest.mark.slow
def test_concurrent_encode_processes(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    """A second `textcl encode` into a folder another one is writing fails at once and
    changes nothing; the first is then killed and resumed to the clean result."""
    clean = tmp_path / "clean"
    assert (
        _run(
            [sys.executable, "-m", "textcl", *_encode_cmd(tiny_model_dir, corpus_txt, clean)]
        ).returncode
        == 0
    )
    out = tmp_path / "idx"
    cmd = _encode_cmd(tiny_model_dir, corpus_txt, out)
    first = subprocess.Popen(
        [sys.executable, "-c", KILLER, "hang", "6", *cmd],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "hanging"
        before = index_bytes(out)
        other = tmp_path / "other.txt"
        other.write_text("\n".join(reversed(CORPUS)) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        r = _run([sys.executable, "-m", "textcl", *_encode_cmd(tiny_model_dir, other, out)])
        assert r.returncode != 0 and "in use by pid" in r.stderr, r.stderr[-2000:]
        assert time.perf_counter() - t0 < 60
        assert index_bytes(out) == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    r = _run([sys.executable, "-m", "textcl", *cmd])
    assert r.returncode == 0, r.stderr[-2000:]
    assert index_bytes(out) == index_bytes(clean)


@pytest.mark.slow
def test_cli_index_verify_and_search_verify(built: Path) -> None:
    r = _run([sys.executable, "-m", "textcl", "index", "verify", "--index", str(built)])
    assert r.returncode == 0 and "OK, 23 embeddings in 3 shard(s)" in r.stdout, r.stderr
    _huge_values(built)
    r = _run([sys.executable, "-m", "textcl", "index", "verify", "--index", str(built)])
    assert r.returncode != 0 and "shard-00001.npy" in r.stderr and "sha256" in r.stderr
    r = _run(
        [
            sys.executable,
            "-m",
            "textcl",
            "search",
            "--index",
            str(built),
            "--query",
            "a cat",
            "--verify",
        ]
    )
    assert r.returncode != 0 and "shard-00001.npy" in r.stderr
    assert "4e+31" not in r.stdout and "e+31" not in r.stdout
