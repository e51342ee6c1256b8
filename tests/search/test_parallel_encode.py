"""Shard-parallel encoding (textcl.search.parallel / distributed / ray_engine): the index is
the one a single process writes (byte for byte), resumes at shard level, and fails clearly."""

from __future__ import annotations

import builtins
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import textcl.search.encode as enc_mod
from tests.helpers import CORPUS
from textcl.errors import InputError
from textcl.search import EmbeddingIndex, encode_corpus, search
from textcl.search.distributed import encode_distributed, encode_on_devices
from textcl.search.encode import EncodeOptions
from textcl.search.manifest import MANIFEST_NAME, Manifest
from textcl.search.parallel import ShardScanner, done_path
from textcl.search.ray_engine import _init_ray, check_address, encode_with_ray, import_ray

ROOT = Path(__file__).resolve().parents[2]
SHARD = 4
OPTS = EncodeOptions(shard_size=SHARD, batch_size=3, precision="fp32", show_progress=False)


def _files(folder: Path) -> dict[str, bytes]:
    """Every shard file's bytes, and the manifest minus nothing (it has no timings)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.name.startswith("shard-") or p.name == MANIFEST_NAME
    }


def _manifest_cmp(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / MANIFEST_NAME).read_text())
    return data


@pytest.fixture
def reference(tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, one_thread: None) -> Path:
    """The one-process index of the corpus (trailing blank lines added: the last shard's
    skipped count must come out the same)."""
    with corpus_txt.open("a", encoding="utf-8") as fh:
        fh.write("\n  \n")
    out = tmp_path / "one"
    encode_corpus(
        tiny_model_dir,
        corpus_txt,
        out,
        shard_size=SHARD,
        batch_size=3,
        precision="fp32",
        show_progress=False,
    )
    return out


def _same_index(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], name
    assert not list(b.glob("*.done.json"))


def test_scanner_cuts_shards_like_one_process() -> None:
    records = [("1", "a"), ("2", ""), ("3", "b"), ("4", None), ("5", "c"), ("6", "d"), ("7", " ")]
    scanner = ShardScanner(2, lambda k: True)
    blocks = list(scanner.blocks(iter(records)))
    # A shard starts right after the last text of the one before (blank rows included).
    assert [(b.index, b.start, b.ids, b.skipped) for b in blocks] == [
        (0, 0, ["1", "3"], 1),
        (1, 3, ["5", "6"], 1),
    ]
    assert (scanner.rows, scanner.shards) == (7, 2)
    odd = ShardScanner(2, lambda k: k == 1)
    assert [b.index for b in odd.blocks(iter(records))] == [1]


def test_two_ranks_in_turn_equal_one_process(
    tiny_model_dir: Path,
    corpus_txt: Path,
    tmp_path: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rank 1's shards written first (as by a rank of a killed run: records, no manifest),
    then a one-rank run over the folder adopts them and writes only the others."""
    out = tmp_path / "par"
    written: list[int] = []
    real = enc_mod.write_shard

    def counting(*args: Any, **kwargs: Any) -> Any:
        written.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr("textcl.search.parallel.write_shard", counting)
    # A world of 2 in which rank 0 is killed right after rank 1 finished: simulate with a
    # first run that encodes only odd shards, by marking the even ones done in its plan.
    import textcl.search.parallel as par

    real_plan = par.start_plan

    def odd_only(*args: Any, **kwargs: Any) -> Any:
        plan, collector = real_plan(*args, **kwargs)
        plan.done = frozenset(range(0, 8, 2))
        return plan, collector

    monkeypatch.setattr("textcl.search.distributed.start_plan", odd_only)
    with pytest.raises(RuntimeError, match=r"shard\(s\) \[0, 2, 4\] were not written"):
        encode_distributed(tiny_model_dir, corpus_txt, out, OPTS, rank=0, world=1)
    assert written == [1, 3, 5]
    assert not (out / MANIFEST_NAME).exists() or not Manifest.load(out).shards
    assert done_path(out, 3).is_file()
    # A corrupted record's shard is encoded again, not trusted.
    (out / "shard-00005.jsonl").write_bytes(b"tampered\n")
    monkeypatch.setattr("textcl.search.distributed.start_plan", real_plan)
    written.clear()
    manifest = encode_distributed(tiny_model_dir, corpus_txt, out, OPTS, rank=0, world=1)
    assert manifest is not None and manifest.complete
    assert written == [0, 2, 4, 5]
    _same_index(reference, out)


KILL_AFTER_THIRD_SHARD = """
import os, signal, sys
import textcl.search.parallel as par
from textcl.search.distributed import encode_distributed
from textcl.search.encode import EncodeOptions
real, done = par.write_done, []
def write_done(*args, **kwargs):
    real(*args, **kwargs)
    done.append(1)
    if len(done) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
par.write_done = write_done
opts = EncodeOptions(shard_size=4, batch_size=3, precision="fp32", show_progress=False)
encode_distributed(sys.argv[1], sys.argv[2], sys.argv[3], opts, rank=0, world=1)
"""


@pytest.mark.slow
def test_resume_after_kill_9_of_the_driver(
    tiny_model_dir: Path,
    corpus_txt: Path,
    tmp_path: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_THIRD_SHARD, str(tiny_model_dir), str(corpus_txt),
         str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == -9, run.stderr[-2000:]
    assert not Manifest.load(out).complete
    written: list[int] = []
    real = enc_mod.write_shard

    def counting(*args: Any, **kwargs: Any) -> Any:
        written.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr("textcl.search.parallel.write_shard", counting)
    encode_distributed(tiny_model_dir, corpus_txt, out, OPTS, rank=0, world=1)
    assert written == [3, 4, 5]  # shards 0-2 were done before the kill
    _same_index(reference, out)


def test_trailing_blanks_after_a_full_last_shard(
    tiny_model_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    """8 texts in shards of 4, then blank lines: the last shard's skipped count takes them,
    as with one process."""
    corpus = tmp_path / "eight.txt"
    corpus.write_text("\n".join(CORPUS[:4]) + "\n\n" + "\n".join(CORPUS[4:8]) + "\n\n \n")
    encode_corpus(
        tiny_model_dir, corpus, tmp_path / "one", shard_size=SHARD, batch_size=3,
        precision="fp32", show_progress=False,
    )  # fmt: skip
    encode_distributed(tiny_model_dir, corpus, tmp_path / "par", OPTS, rank=0, world=1)
    assert Manifest.load(tmp_path / "par").shards[-1].skipped == 3  # 1 inside, 2 after
    _same_index(tmp_path / "one", tmp_path / "par")


@pytest.mark.slow
def test_devices_two_processes_equal_one_process(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, reference: Path
) -> None:
    out = tmp_path / "two"
    manifest = encode_on_devices(tiny_model_dir, corpus_txt, out, OPTS, ["cpu", "cpu"])
    assert manifest.complete and manifest.count == len(CORPUS)
    assert _manifest_cmp(out) == _manifest_cmp(reference)
    _same_index(reference, out)
    # The folder searches as any other, with the same hits.
    hits = search(out, ["A man plays a guitar."], top_k=5, model=tiny_model_dir)
    ref = search(reference, ["A man plays a guitar."], top_k=5, model=tiny_model_dir)
    assert [h.id for h in hits[0]] == [h.id for h in ref[0]]
    # A finished index is a no-op for a second parallel run, and then for one process.
    before = _files(out)
    encode_on_devices(tiny_model_dir, corpus_txt, out, OPTS, ["cpu", "cpu"])
    assert _files(out) == before


@pytest.mark.slow
def test_failing_rank_stops_the_run_with_its_error(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fail"
    out.mkdir()
    (out / "shard-00001.npy").mkdir()  # rank 1 cannot write its first shard
    t0 = time.monotonic()
    with pytest.raises(OSError, match=r"--devices cpu,cpu: encode rank 1 of 2: ") as info:
        encode_on_devices(tiny_model_dir, corpus_txt, out, OPTS, ["cpu", "cpu"], timeout=60)
    assert "shard-00001.npy" in str(info.value)
    assert time.monotonic() - t0 < 60
    assert not Manifest.load(out).complete if (out / MANIFEST_NAME).exists() else True
    # Bad input fails on rank 0 before any work, and every rank stops.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl"):
        encode_on_devices(tiny_model_dir, bad, tmp_path / "o2", OPTS, ["cpu", "cpu"], timeout=60)
    assert not (tmp_path / "o2" / MANIFEST_NAME).exists()


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, reference: Path
) -> None:
    out = tmp_path / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--standalone", "-m", "textcl", "encode", "--model", str(tiny_model_dir),
        "--input", str(corpus_txt), "--output", str(out), "--shard-size", str(SHARD),
        "--batch-size", "3", "--precision", "fp32", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    _same_index(reference, out)


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    for mod in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(InputError, match=r"textcl\[ray\]"):
        import_ray()


def test_ray_address_that_does_not_answer(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    with pytest.raises(InputError, match="no Ray cluster answers"):
        encode_with_ray(
            tiny_model_dir, corpus_txt, tmp_path / "o", OPTS, address="127.0.0.1:9",
            connect_timeout=3,
        )  # fmt: skip
    # A port that accepts but never answers (ray.init would retry for minutes).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    try:
        with pytest.raises(InputError, match="no Ray cluster answers"):
            check_address(f"ray://127.0.0.1:{server.getsockname()[1]}", timeout=1)
    finally:
        server.close()
    assert time.monotonic() - t0 < 15
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="host:port"):
        check_address("nonsense", timeout=1)


@pytest.mark.slow
def test_ray_local_two_workers_equal_one_process(
    tiny_model_dir: Path,
    corpus_txt: Path,
    tmp_path: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "ray"
    # Resume: shard 2 already written by a killed run (its completion record kept).
    import textcl.search.parallel as par

    real_plan = par.start_plan

    def only_two(*args: Any, **kwargs: Any) -> Any:
        plan, collector = real_plan(*args, **kwargs)
        plan.done = frozenset(range(8)) - {2}
        return plan, collector

    monkeypatch.setattr("textcl.search.distributed.start_plan", only_two)
    with pytest.raises(RuntimeError, match="not written"):
        encode_distributed(tiny_model_dir, corpus_txt, out, OPTS, rank=0, world=1)
    ray = import_ray()
    assert _init_ray(ray, None, 2, 1, 0, 10)  # one local Ray for both runs below
    try:
        # A worker's error comes back as the same error, naming the shard.
        bad = tmp_path / "bad"
        (bad / "shard-00001.npy").mkdir(parents=True)
        with pytest.raises(IsADirectoryError, match="ray worker, shard 1"):
            encode_with_ray(tiny_model_dir, corpus_txt, bad, OPTS, num_workers=2)
        manifest = encode_with_ray(tiny_model_dir, corpus_txt, out, OPTS, num_workers=2)
    finally:
        ray.shutdown()
    assert manifest.complete
    assert _manifest_cmp(out) == _manifest_cmp(reference)
    _same_index(reference, out)
    logged = [json.loads(line)["shard"] for line in (out / "encode_log.jsonl").open()]
    assert sorted(logged) == [0, 1, 2, 3, 4, 5]  # shard 2 once: not encoded again
    assert len(EmbeddingIndex(out)) == len(CORPUS)
