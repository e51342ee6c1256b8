"""FAISS indexes (skipped without faiss) and the encode / search / index commands."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import CORPUS
from textcl.commands import encode as encode_cmd
from textcl.commands import index as index_cmd
from textcl.commands import search as search_cmd
from textcl.search import EmbeddingIndex, build_faiss_index, encode_corpus, exact_search, search


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textcl")
    sub = parser.add_subparsers(dest="command")
    for mod in (encode_cmd, search_cmd, index_cmd):
        mod.register(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def built(tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path) -> Path:
    out = tmp_path / "built"
    encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=6, show_progress=False)
    return out


def test_faiss_kinds_against_exact(built: Path) -> None:
    pytest.importorskip("faiss")
    idx = EmbeddingIndex(built)
    stored = np.concatenate([np.asarray(s) for s in idx.shards])
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, idx.dimension)).astype(np.float32)
    want_s, want_i = exact_search(q, stored, top_k=5)
    # IVF with every cell probed and HNSW with a full candidate list are exact on 23 vectors.
    for kind, kw in (("flat", {}), ("ivf", {"nprobe": 1000}), ("hnsw", {"ef_search": 64})):
        entry = build_faiss_index(built, kind, nlist=2 if kind == "ivf" else None)
        assert entry["count"] == len(idx) and (built / entry["file"]).is_file()
        got_s, got_i = EmbeddingIndex(built).search_vectors(q, 5, faiss_kind=kind, **kw)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    hits = search(built, list(CORPUS[:5]), top_k=1, faiss=True)  # picks hnsw
    assert [h[0].text for h in hits] == list(CORPUS[:5])
    with pytest.raises(ValueError, match="unknown FAISS index kind"):
        build_faiss_index(built, "lsh")


def test_faiss_missing_and_stale(built: Path, tiny_model_dir: Path, corpus_txt: Path) -> None:
    pytest.importorskip("faiss")
    with pytest.raises(ValueError, match="no FAISS index built"):
        search(built, "a cat", faiss=True)
    with pytest.raises(ValueError, match="no 'ivf' FAISS index"):
        search(built, "a cat", faiss="ivf")
    build_faiss_index(built, "flat")
    data = json.loads((built / "manifest.json").read_text(encoding="utf-8"))
    data["faiss"]["flat"]["count"] = 3
    (built / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="stale FAISS index"):
        search(built, "a cat", faiss="flat")


def test_cli_encode_search_index(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli-idx"
    argv = ["encode", "--model", str(tiny_model_dir), "--input", str(corpus_txt)]
    argv += ["--output", str(out), "--shard-size", "7", "--max-tokens", "40", "--no-progress"]
    assert _run(argv) == 0
    assert "23 embeddings" in capsys.readouterr().out
    assert _run(argv) == 0  # a finished job: no-op
    assert "23 embeddings" in capsys.readouterr().out

    assert _run(["search", "--index", str(out), "--query", CORPUS[2], "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    assert f"query: {CORPUS[2]}" in table and table.splitlines()[2].endswith(CORPUS[2])

    queries = tmp_path / "q.txt"
    queries.write_text(f"{CORPUS[0]}\n\n{CORPUS[7]}\n", encoding="utf-8")
    argv = ["search", "--index", str(out), "--queries", str(queries), "--format", "jsonl"]
    assert _run([*argv, "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4
    assert [(r["query"], r["rank"]) for r in rows[:2]] == [(CORPUS[0], 0), (CORPUS[0], 1)]
    assert rows[0]["text"] == CORPUS[0] and rows[2]["text"] == CORPUS[7]
    assert set(rows[0]) == {"query", "rank", "id", "score", "text", "index"}

    if importlib.util.find_spec("faiss") is not None:
        assert _run(["index", "build", "--index", str(out), "--kind", "ivf", "--nlist", "2"]) == 0
        assert "faiss-ivf.index" in capsys.readouterr().out
        argv = ["search", "--index", str(out), "--query", CORPUS[4], "--faiss", "--nprobe", "2"]
        assert _run([*argv, "--format", "jsonl", "--top-k", "1"]) == 0
        assert json.loads(capsys.readouterr().out)["text"] == CORPUS[4]


def test_cli_errors_through_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from textcl import cli

    mods = ("textcl.commands.encode", "textcl.commands.search", "textcl.commands.index")
    monkeypatch.setattr(cli, "COMMAND_MODULES", mods)
    rc = cli.main(["search", "--index", str(tmp_path / "none"), "--query", "x"])
    assert rc == 2 and "no such index folder" in capsys.readouterr().err
    (tmp_path / "q.txt").write_text("\n \n", encoding="utf-8")
    rc = cli.main(["search", "--index", str(tmp_path), "--queries", str(tmp_path / "q.txt")])
    assert rc == 2 and "no queries" in capsys.readouterr().err
