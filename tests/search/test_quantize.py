"""Quantized embeddings (int8 / uint8 / binary / ubinary) with rescoring: quantization vs
sentence-transformers' ``quantize_embeddings``, search vs numpy oracles, recall floors,
manifests, ``textcl index quantize`` and the CLI flags."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.search.test_faiss_and_cli import _run
from textcl.errors import CorruptFileError, FolderConflictError, InputError
from textcl.search import EmbeddingIndex, encode_corpus, exact_search, search
from textcl.search.convert import quantize_index
from textcl.search.encode import npy_bytes, shard_names, texts_jsonl
from textcl.search.manifest import Manifest, ShardInfo
from textcl.search.quantize import (
    calibration_ranges,
    dequantize,
    hamming_topk,
    quantize,
)
from textcl.search.rescore import rescore

HAS_FAISS = importlib.util.find_spec("faiss") is not None


def clustered(n: int, dim: int, seed: int, clusters: int = 200) -> np.ndarray:
    """Unit vectors from a Gaussian mixture (a corpus with neighbourhoods, like text; the
    centres are the same for every ``seed``, so queries fall near corpus points)."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def float_index(folder: Path, vectors: np.ndarray, shard_size: int = 700) -> Path:
    """A valid float32 index folder holding ``vectors`` (texts "t<row>")."""
    folder.mkdir(parents=True)
    shards = []
    for i, lo in enumerate(range(0, len(vectors), shard_size)):
        emb = np.ascontiguousarray(vectors[lo : lo + shard_size], dtype=np.float32)
        ids = [str(r) for r in range(lo, lo + len(emb))]
        lines, offsets = texts_jsonl(ids, [f"t{r}" for r in ids])
        files = shard_names(i)
        blobs = (npy_bytes(emb), lines, npy_bytes(offsets))
        for name, blob in zip(files, blobs, strict=True):
            (folder / name).write_bytes(blob)
        sha = [hashlib.sha256(b).hexdigest() for b in blobs]
        shards.append(
            ShardInfo(i, lo, len(emb), *files, sha[0], sha[1], 0, sha[2], *map(len, blobs))
        )
    Manifest(
        model="synthetic",
        encoder={"normalize": True},
        dimension=vectors.shape[1],
        dtype="float32",
        shard_size=shard_size,
        source={"kind": "synthetic"},
        probe=[],
        count=len(vectors),
        shards=shards,
        complete=True,
    ).save(folder)
    return folder


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


# --- quantization vs the sentence-transformers oracle ---------------------------------------


@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
def test_quantize_matches_sentence_transformers(dtype: str) -> None:
    st = pytest.importorskip("sentence_transformers.quantization")
    calib = clustered(500, 64, seed=1)
    x = clustered(300, 64, seed=2) * 1.3  # some values outside the calibration range
    ranges = calibration_ranges(calib) if dtype.endswith("int8") else None
    ours = quantize(x, dtype, ranges)
    theirs = st.quantize_embeddings(x, precision=dtype, calibration_embeddings=calib)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    if dtype.endswith("int8"):  # negative control: ranges from other data differ
        other = st.quantize_embeddings(x, precision=dtype, calibration_embeddings=x)
        assert not np.array_equal(ours, other)


def test_dequantize_and_calibration_floor() -> None:
    calib = clustered(200, 16, seed=3)
    ranges = calibration_ranges(calib)
    back = dequantize(quantize(calib, "int8", ranges), "int8", ranges)
    step = (ranges[1] - ranges[0]) / 255
    assert np.all(calib - back >= -1e-6) and np.all(calib - back <= step + 1e-6)
    bits = dequantize(quantize(calib, "binary"), "binary")
    np.testing.assert_array_equal(bits, (calib > 0).astype(np.float32))
    with pytest.raises(InputError, match="at least 16"):
        calibration_ranges(calib[:5])


def test_hamming_topk_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    corpus = rng.integers(0, 256, (900, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (5, 8), dtype=np.uint8)
    dist, rows = hamming_topk(queries, [corpus[:400], corpus[400:]], 20, chunk=128)
    full = np.unpackbits(corpus[None] ^ queries[:, None], axis=2).sum(axis=2)
    for i in range(5):
        order = np.lexsort((np.arange(900), full[i]))[:20]
        np.testing.assert_array_equal(rows[i], order)
        np.testing.assert_array_equal(dist[i], full[i][order])
    signed = (corpus.astype(np.int16) - 128).astype(np.int8)  # the "binary" storage
    _, rows2 = hamming_topk(queries, [signed], 20)
    np.testing.assert_array_equal(rows2, rows)


# --- rescoring ---------------------------------------------------------------------------


def test_rescore_matches_numpy(tmp_path: Path) -> None:
    x = clustered(1500, 32, seed=5)
    idx = EmbeddingIndex(float_index(tmp_path / "f", x))
    q = clustered(4, 32, seed=6)
    rng = np.random.default_rng(7)
    cand = rng.integers(0, 1500, (4, 30))
    cand[0, :5] = -1
    cand[1, :3] = cand[1, 3]  # duplicates count once
    scores, ids = rescore(idx, q, cand, 10)
    for i in range(4):
        rows = np.unique(cand[i][cand[i] >= 0])
        s = x[rows] @ q[i]
        order = np.lexsort((rows, -s))[:10]
        np.testing.assert_array_equal(ids[i], rows[order])
        np.testing.assert_allclose(scores[i], s[order], rtol=1e-5)
    few, few_ids = rescore(idx, q[:1], np.array([[3, -1, 8]]), 5)
    assert list(few_ids[0, 2:]) == [-1, -1, -1] and np.isneginf(few[0, 2:]).all()


# --- quantized indexes: search vs numpy oracles, recall ------------------------------------


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    x = clustered(3000, 64, seed=8)
    return float_index(tmp_path_factory.mktemp("q") / "float", x), x


@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
def test_quantized_search_candidates_match_numpy(
    corpus_index: tuple[Path, np.ndarray], tmp_path: Path, dtype: str
) -> None:
    folder, x = corpus_index
    out = quantize_index(folder, tmp_path / dtype, dtype, calibration_size=1000)
    idx = EmbeddingIndex(tmp_path / dtype)
    q = clustered(6, 64, seed=9)
    ranges = calibration_ranges(x[:1000])
    # without rescoring: the candidates are the oracle's top-k of the quantized rows
    scores, ids = idx.search_vectors(q, 10, rescore_multiplier=1)
    if dtype.endswith("int8"):
        deq = dequantize(quantize(x, dtype, ranges), dtype, ranges)
        s_ref, i_ref = exact_search(q, deq, top_k=10)
        np.testing.assert_array_equal(ids, i_ref)
        np.testing.assert_allclose(scores, s_ref, rtol=1e-4, atol=1e-5)
    else:
        ham = np.unpackbits(quantize(x, "ubinary")[None] ^ quantize(q, "ubinary")[:, None], axis=2)
        dist = ham.sum(axis=2)
        for i in range(6):
            np.testing.assert_array_equal(ids[i], np.lexsort((np.arange(len(x)), dist[i]))[:10])
    # with rescoring: the top 40 candidates re-ranked by float query . rescoring rows
    # (binary: the Hamming top 40 themselves, the sign stage off)
    pool = 0 if dtype.endswith("binary") else None
    scores, ids = idx.search_vectors(q, 10, rescore_multiplier=4, candidate_pool=pool)
    rescore_rows = (
        x
        if out.quantization["rescore_dtype"] == "float32"
        else (dequantize(quantize(x, "int8", ranges), "int8", ranges))
    )
    for i in range(6):
        if dtype.endswith("int8"):
            cand = exact_search(q[i : i + 1], deq, top_k=40)[1][0]
        else:
            cand = np.lexsort((np.arange(len(x)), dist[i]))[:40]
        s = rescore_rows[cand] @ q[i]
        order = np.lexsort((cand, -s))[:10]
        np.testing.assert_array_equal(ids[i], cand[order])
        np.testing.assert_allclose(scores[i], s[order], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("dtype", "floor"), [("int8", 0.97), ("binary", 0.85)])
def test_recall_with_rescoring_above_floor(
    corpus_index: tuple[Path, np.ndarray], tmp_path: Path, dtype: str, floor: float
) -> None:
    folder, x = corpus_index
    quantize_index(folder, tmp_path / dtype, dtype, calibration_size=1000)
    idx = EmbeddingIndex(tmp_path / dtype)
    q = clustered(50, 64, seed=10)
    truth = exact_search(q, x, top_k=10)[1]
    plain = recall(idx.search_vectors(q, 10, rescore_multiplier=1)[1], truth)
    rescored = recall(idx.search_vectors(q, 10, rescore_multiplier=4)[1], truth)
    assert rescored >= floor, (plain, rescored)
    assert rescored >= plain  # rescoring never hurts here


@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")
def test_binary_faiss_kinds(corpus_index: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    from textcl.search import build_faiss_index

    folder, _x = corpus_index
    quantize_index(folder, tmp_path / "b", "ubinary", calibration_size=1000)
    exact = EmbeddingIndex(tmp_path / "b").search_vectors(clustered(8, 64, seed=11), 10)
    for kind in ("binary-flat", "binary-hnsw"):
        entry = build_faiss_index(tmp_path / "b", kind)
        assert entry["kind"] == kind
    idx = EmbeddingIndex(tmp_path / "b")
    q = clustered(8, 64, seed=11)
    _s_flat, i_flat = idx.search_vectors(q, 10, faiss_kind="binary-flat")
    # Hamming ties may be ordered differently by FAISS: compare the rescored hit sets
    assert recall(i_flat, exact[1]) >= 0.95
    _s_h, i_h = idx.search_vectors(q, 10, faiss_kind="binary-hnsw", ef_search=200)
    assert recall(i_h, exact[1]) >= 0.8
    with pytest.raises(InputError, match="binary-flat or binary-hnsw"):
        build_faiss_index(tmp_path / "b", "hnsw")
    with pytest.raises(InputError, match="needs a binary index"):
        build_faiss_index(folder, "binary-flat")
    EmbeddingIndex(tmp_path / "b", verify=True).verify()


# --- encode --dtype, manifests, index quantize --------------------------------------------


def test_encode_quantized_equals_index_quantize(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    f = encode_corpus(tiny_model_dir, corpus_txt, tmp_path / "f", shard_size=6, show_progress=False)
    q = encode_corpus(
        tiny_model_dir,
        corpus_txt,
        tmp_path / "q",
        shard_size=6,
        dtype="int8",
        calibration_size=20,
        show_progress=False,
    )
    c = quantize_index(tmp_path / "f", tmp_path / "c", "int8", calibration_size=20)
    # the same sample (up to float rounding: the calibration batch differs from the shards')
    np.testing.assert_allclose(q.quantization["ranges"], c.quantization["ranges"], atol=1e-5)
    assert q.quantization["calibration_rows"] == 20 and q.quantization["rescore_dtype"] == "float32"
    a, b = EmbeddingIndex(tmp_path / "q"), EmbeddingIndex(tmp_path / "c")
    for sa, sb in zip(a.shards, b.shards, strict=True):
        np.testing.assert_array_equal(sa, sb)
        assert sa.dtype == np.int8
    np.testing.assert_allclose(a.rescore_shards()[0][:], EmbeddingIndex(tmp_path / "f").shards[0])
    assert c.count == f.count
    # texts hard-linked from the source
    assert (tmp_path / "c" / "shard-00000.jsonl").stat().st_ino == (
        tmp_path / "f" / "shard-00000.jsonl"
    ).stat().st_ino
    hits = search(tmp_path / "q", "A man is playing a guitar.", top_k=3)[0]
    exact = search(tmp_path / "f", "A man is playing a guitar.", top_k=3)[0]
    assert [h.id for h in hits] == [h.id for h in exact]
    assert abs(hits[0].score - exact[0].score) < 1e-5  # rescored with float32 rows
    # a rerun is a no-op; a folder holding another conversion is refused
    assert quantize_index(tmp_path / "f", tmp_path / "c", "int8", calibration_size=20).complete
    with pytest.raises(FolderConflictError):
        quantize_index(tmp_path / "f", tmp_path / "c", "binary")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FolderConflictError, match="not empty"):
        quantize_index(tmp_path / "f", tmp_path / "other", "binary")
    with pytest.raises(InputError, match="already int8"):
        quantize_index(tmp_path / "q", tmp_path / "qq", "binary")


def test_index_quantize_resumes_after_a_kill(
    tmp_path: Path, corpus_index: tuple[Path, np.ndarray]
) -> None:
    folder, x = corpus_index
    full = quantize_index(folder, tmp_path / "a", "binary", calibration_size=500)
    quantize_index(folder, tmp_path / "b", "binary", calibration_size=500)
    # simulate a kill after shard 1: the manifest lists 2 shards, not complete; a temp file
    m = Manifest.load(tmp_path / "b")
    m.shards, m.complete = m.shards[:2], False
    m.count = sum(s.rows for s in m.shards)
    m.save(tmp_path / "b")
    (tmp_path / "b" / ".shard-00002.npy.tmp-123").write_bytes(b"partial")
    done = quantize_index(folder, tmp_path / "b", "binary", calibration_size=500)
    assert done.complete and done.count == full.count == len(x)
    assert [s.sha256 for s in done.shards] == [s.sha256 for s in full.shards]
    assert not (tmp_path / "b" / ".shard-00002.npy.tmp-123").exists()


def _crafted(folder: Path, edit: dict) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in edit.items():
        if key.startswith("q."):
            data["quantization"][key[2:]] = value
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit",
    [
        {"q.ranges": [[0.0] * 64, [-1.0] * 64]},  # max < min
        {"q.ranges": [[0.0] * 63, [1.0] * 63]},  # wrong dimension
        {"q.ranges": [[float("nan")] * 64, [1.0] * 64]},
        {"q.rescore_dtype": "int4"},
        {"q.calibration_rows": -1},
        {"q.extra": 1},
        {"quantization": {}},
        {"dtype": "float32"},  # a float index with quantization / wrong shard dtype
        {"dimension": 60},
    ],
)
def test_crafted_quantized_manifest_is_refused(
    corpus_index: tuple[Path, np.ndarray], tmp_path: Path, edit: dict
) -> None:
    folder, _ = corpus_index
    quantize_index(folder, tmp_path / "q", "int8", calibration_size=1000)
    EmbeddingIndex(tmp_path / "q")  # intact: opens
    _crafted(tmp_path / "q", edit)
    with pytest.raises(CorruptFileError):
        EmbeddingIndex(tmp_path / "q")


def test_corrupt_quantized_shards_are_refused(
    corpus_index: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder, _ = corpus_index
    quantize_index(folder, tmp_path / "q", "binary", calibration_size=1000)
    q = clustered(2, 64, seed=12)
    rescore_file = tmp_path / "q" / "shard-00001.rescore.npy"
    data = bytearray(rescore_file.read_bytes())
    data[-1] ^= 0xFF
    rescore_file.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="rescore"):
        EmbeddingIndex(tmp_path / "q").search_vectors(q, 5)
    EmbeddingIndex(tmp_path / "q").search_vectors(q, 5, rescore_multiplier=1)  # no rescoring
    # a shard of the wrong width (e.g. float rows in place of packed bits)
    m = Manifest.load(tmp_path / "q")
    emb = tmp_path / "q" / m.shards[0].embeddings
    blob = npy_bytes(np.zeros((m.shards[0].rows, 64), dtype=np.int8))
    emb.write_bytes(blob)
    _crafted(tmp_path / "q", {})
    data2 = json.loads((tmp_path / "q" / "manifest.json").read_text())
    data2["shards"][0]["bytes"] = len(blob)
    data2["shards"][0]["sha256"] = hashlib.sha256(blob).hexdigest()
    (tmp_path / "q" / "manifest.json").write_text(json.dumps(data2))
    with pytest.raises(CorruptFileError, match="int8\\[700, 8\\]"):
        EmbeddingIndex(tmp_path / "q")


# --- CLI ---------------------------------------------------------------------------------


def test_cli_flags_and_errors(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    base = ["encode", "--model", str(tiny_model_dir), "--input", str(corpus_txt), "--no-progress"]
    assert _run([*base, "--output", str(out), "--dtype", "binary", "--calibration-size", "20"]) == 0
    m = Manifest.load(out)
    assert m.dtype == "binary" and m.quantization["rescore_dtype"] == "int8"
    assert (out / "shard-00000.rescore.npy").is_file()
    capsys.readouterr()
    assert (
        _run(
            [
                "search",
                "--index",
                str(out),
                "--query",
                "a guitar",
                "--top-k",
                "3",
                "--format",
                "jsonl",
                "--rescore-multiplier",
                "2",
                "--candidate-pool",
                "12",
            ]
        )
        == 0
    )
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    with pytest.raises(InputError, match="--candidate-pool"):
        _run(["search", "--index", str(out), "--query", "a", "--candidate-pool", "-1"])
    if HAS_FAISS:
        assert (
            _run(["index", "build", "--index", str(out), "--kind", "binary-hnsw", "--m", "8"]) == 0
        )
        assert (
            _run(
                [
                    "search",
                    "--index",
                    str(out),
                    "--query",
                    "a guitar",
                    "--faiss",
                    "binary-hnsw",
                    "--ef-search",
                    "50",
                ]
            )
            == 0
        )
    conv = tmp_path / "conv"
    f = tmp_path / "f"
    assert _run([*base, "--output", str(f)]) == 0
    assert (
        _run(
            [
                "index",
                "quantize",
                "--index",
                str(f),
                "--output",
                str(conv),
                "--dtype",
                "ubinary",
                "--rescore-dtype",
                "none",
            ]
        )
        == 0
    )
    assert Manifest.load(conv).quantization["rescore_dtype"] == "none"
    with pytest.raises(InputError, match="quantized index"):
        _run(["search", "--index", str(f), "--query", "x", "--rescore-multiplier", "2"])
    with pytest.raises(InputError, match="rescore-dtype int8 with --dtype int8"):
        _run([*base, "--output", str(tmp_path / "x"), "--dtype", "int8", "--rescore-dtype", "int8"])
    with pytest.raises(InputError, match="at least 16"):
        _run([*base, "--output", str(tmp_path / "y"), "--dtype", "int8", "--calibration-size", "5"])
    with pytest.raises(InputError, match=">= 0"):
        _run(["search", "--index", str(out), "--query", "x", "--rescore-multiplier", "-1"])
