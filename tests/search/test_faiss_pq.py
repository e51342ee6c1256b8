"""Compressed FAISS kinds (ivfpq, opq-ivfpq, factory), exact rescoring and memory-mapped
IVF search, against numpy oracles on a clustered synthetic index folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from tests.search.test_faiss_and_cli import _run
from textcl.errors import CorruptFileError, InputError
from textcl.io import sha256_file
from textcl.search import EmbeddingIndex, build_faiss_index, exact_search
from textcl.search.encode import shard_names, texts_jsonl
from textcl.search.faiss_index import FAISS_KINDS, create_faiss_index
from textcl.search.faiss_pq import default_pq_m
from textcl.search.manifest import Manifest, ShardInfo
from textcl.search.rescore import rescore

faiss = pytest.importorskip("faiss")

ROOT = Path(__file__).resolve().parents[2]


def clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.6) -> np.ndarray:
    """Unit vectors from a mixture of Gaussian clusters (the corpus / query model)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, size=n)]
    x = x + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_index(folder: Path, x: np.ndarray, shard_rows: int, dtype: str = "float32") -> Path:
    """An index folder (manifest, shards, texts, offsets) holding the vectors ``x``,
    written shard by shard as ``textcl encode`` lays it out."""
    folder.mkdir(parents=True)
    m = Manifest(
        model="synthetic",
        encoder={"normalize": True},
        dimension=int(x.shape[1]),
        dtype=dtype,
        shard_size=shard_rows,
        source={},
        probe=[],
    )
    for s, start in enumerate(range(0, len(x), shard_rows)):
        rows = x[start : start + shard_rows]
        emb, texts, offs = shard_names(s)
        np.save(folder / emb, rows.astype(dtype), allow_pickle=False)
        ids = [str(start + i) for i in range(len(rows))]
        lines, offsets = texts_jsonl(ids, [f"text {i}" for i in ids])
        (folder / texts).write_bytes(lines)
        np.save(folder / offs, offsets, allow_pickle=False)
        m.shards.append(
            ShardInfo(
                index=s,
                start=start,
                rows=len(rows),
                embeddings=emb,
                texts=texts,
                offsets=offs,
                sha256=sha256_file(folder / emb),
                texts_sha256=sha256_file(folder / texts),
                offsets_sha256=sha256_file(folder / offs),
                bytes=(folder / emb).stat().st_size,
                texts_bytes=len(lines),
                offsets_bytes=(folder / offs).stat().st_size,
            )
        )
        m.count += len(rows)
    m.complete = True
    m.save(folder)
    return folder


def recall(got: np.ndarray, want: np.ndarray) -> float:
    k = want.shape[1]
    return float(np.mean([len(set(g) & set(w)) / k for g, w in zip(got, want, strict=True)]))


DIM = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 4,000 x 32 clustered index folder (3 shards), 100 queries, exact top-10 ids."""
    x = clustered(4_000, DIM, 60, seed=0)
    q = clustered(100, DIM, 60, seed=1)
    folder = write_index(tmp_path_factory.mktemp("pq") / "idx", x, 1_500)
    _, want = exact_search(q, x, top_k=10)
    np.save(folder.parent / "q.npy", q)
    np.save(folder.parent / "want.npy", want)
    return folder, q, want


def test_kinds_table_and_defaults() -> None:
    assert {"ivfpq", "opq-ivfpq", "factory"} <= set(FAISS_KINDS)
    fi, params = create_faiss_index("ivfpq", 384, 100_000)
    assert params == {"nlist": 1264, "pq_m": 48, "pq_bits": 8}
    assert (fi.pq.M, fi.pq.nbits, fi.nlist, fi.metric_type) == (48, 8, 1264, 0)
    assert default_pq_m(32) == 4 and default_pq_m(768) == 96 and default_pq_m(100) == 10


def test_pq_recall_floor_rescoring_and_negative_control(
    data: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    folder, q, want = data
    build_faiss_index(folder, "ivfpq", nlist=16, pq_m=8, pq_bits=4, seed=0)
    idx = EmbeddingIndex(folder)
    kw = {"faiss_kind": "ivfpq", "nprobe": 8}
    _, plain = idx.search_vectors(q, 10, rescore_multiplier=0, **kw)
    r_plain = recall(plain, want)
    assert r_plain >= 0.25, r_plain
    # Rescoring (default multiplier 4) improves recall, and is exact on the candidates.
    s4, i4 = idx.search_vectors(q, 10, **kw)
    r4 = recall(i4, want)
    assert r4 >= 0.75 and r4 > r_plain + 0.3, (r4, r_plain)
    fi = faiss.read_index(str(folder / "faiss-ivfpq.index"))
    fi.nprobe = 8
    _, cand = fi.search(q, 40)
    x = idx.vectors()
    oracle = np.take_along_axis(q @ x.T, np.where(cand >= 0, cand, 0), axis=1)
    oracle = np.where(cand >= 0, oracle, -np.inf)
    order = np.lexsort((cand, -oracle), axis=1)[:, :10]
    np.testing.assert_array_equal(i4, np.take_along_axis(cand, order, axis=1))
    np.testing.assert_allclose(s4, np.take_along_axis(oracle, order, axis=1), rtol=1e-5)
    # 1 means off too; the approximate scores differ from the exact ones.
    s1, i1 = idx.search_vectors(q, 10, rescore_multiplier=1, **kw)
    np.testing.assert_array_equal(i1, plain)
    assert not np.allclose(s1, s4[:, :10], atol=1e-4)
    # Negative control: 2 sub-quantizers of 32 dims each code far worse (the floor means
    # something).
    build_faiss_index(folder, "ivfpq", nlist=16, pq_m=2, pq_bits=4, seed=0)
    worse = EmbeddingIndex(folder)
    assert recall(worse.search_vectors(q, 10, rescore_multiplier=0, **kw)[1], want) < 0.2
    assert recall(worse.search_vectors(q, 10, **kw)[1], want) < 0.65


@pytest.mark.slow  # OPQ trains 50 rotations: ~30 s of CPU
def test_opq_and_determinism(data: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, q, want = data
    first = build_faiss_index(
        folder, "opq-ivfpq", nlist=16, pq_m=8, pq_bits=4, train_size=1000, seed=3
    )
    assert first["params"] == {
        "nlist": 16,
        "pq_m": 8,
        "pq_bits": 4,
        "factory": "OPQ8,IVF16,PQ8x4",
        "train_size": 1000,
        "seed": 3,
    }
    second = build_faiss_index(
        folder, "opq-ivfpq", nlist=16, pq_m=8, pq_bits=4, train_size=1000, seed=3
    )
    assert second["sha256"] == first["sha256"]  # same sample, same seeds: same bytes
    assert second["bytes"] == (folder / "faiss-opq-ivfpq.index").stat().st_size
    idx = EmbeddingIndex(folder)
    _, got = idx.search_vectors(q, 10, faiss_kind="opq-ivfpq", nprobe=8, rescore_multiplier=0)
    assert recall(got, want) >= 0.25
    _, got = idx.search_vectors(q, 10, faiss_kind="opq-ivfpq", nprobe=8)
    assert recall(got, want) >= 0.7


def test_rescore_against_numpy_oracle() -> None:
    x = clustered(300, 16, 5, seed=2)
    x[120] = x[5]  # a tie: the smaller row first

    class Idx:
        manifest = Manifest("m", {}, 16, "float32", 100, {}, [], count=300)
        folder = Path("fake-index")
        shards: ClassVar[list[np.ndarray]] = [x[:100], x[100:250], x[250:]]

        def __len__(self) -> int:
            return 300

        def rescore_shards(self) -> list[np.ndarray]:
            return self.shards  # a float index rescores against its own shards

    q = clustered(4, 16, 5, seed=3)
    cand = np.array(
        [[5, 120, 299, -1, 5], [-1, -1, -1, -1, -1], [0, 1, 2, 3, 4], [260, 7, 130, 7, -1]]
    )
    scores, ids = rescore(Idx(), q, cand, 3)
    for r in range(4):
        rows = sorted({int(c) for c in cand[r] if c >= 0}, key=lambda j: (-(q[r] @ x[j]), j))[:3]
        assert ids[r, : len(rows)].tolist() == rows and (ids[r, len(rows) :] == -1).all()
        np.testing.assert_allclose(scores[r, : len(rows)], [q[r] @ x[j] for j in rows], rtol=1e-5)
        assert np.isneginf(scores[r, len(rows) :]).all()
    with pytest.raises(ValueError, match="candidate rows"):
        rescore(Idx(), q, cand + 300, 3)


def test_factory_round_trip_and_bad_strings(
    data: tuple[Path, np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, q, want = data
    argv = ["index", "build", "--index", str(folder), "--factory", "IVF16,PQ8x4"]
    assert _run([*argv, "--train-size", "3000"]) == 0
    assert "factory over 4000 vectors" in capsys.readouterr().out
    entry = json.loads((folder / "manifest.json").read_text())["faiss"]["factory"]
    assert entry["params"] == {"factory": "IVF16,PQ8x4", "train_size": 3000, "seed": 0}
    idx = EmbeddingIndex(folder)
    fi = faiss.read_index(str(folder / entry["file"]))
    assert type(faiss.downcast_index(fi)).__name__ == "IndexIVFPQ" and fi.ntotal == 4_000
    _, got = idx.search_vectors(q, 10, faiss_kind="factory", nprobe=16)
    assert recall(got, want) >= 0.75  # 4-bit codes, rescored x4
    with pytest.raises(InputError, match="--nprobe applies to an index with IVF cells"):
        build_faiss_index(folder, "factory", factory="HNSW8")
        EmbeddingIndex(folder).search_vectors(q, 10, faiss_kind="factory", nprobe=4)
    _, got = EmbeddingIndex(folder).search_vectors(q, 10, faiss_kind="factory", ef_search=64)
    assert recall(got, want) >= 0.9
    for bad, message in (
        ("Bogus12", "could not parse index string Bogus12"),
        ("IVF16,PQ7", "multiple of the number of subquantizers"),
        ("LSH", "FAISS cannot build it"),
        ("IDMap,Flat", "use add_with_ids"),
    ):
        with pytest.raises(InputError, match=message) as err:
            build_faiss_index(folder, "factory", factory=bad)
        assert "Error in" not in str(err.value)
    with pytest.raises(InputError, match="--factory STRING goes with --kind factory"):
        build_faiss_index(folder, "ivfpq", factory="IVF4,PQ8")
    with pytest.raises(InputError, match="--factory applies only to --kind factory"):
        _run(["index", "build", "--index", str(folder), "--kind", "ivf", "--factory", "Flat"])
    with pytest.raises(InputError, match="--kind factory needs --factory"):
        _run(["index", "build", "--index", str(folder), "--kind", "factory"])


def test_flag_checks(data: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, q, _ = data
    with pytest.raises(InputError, match=r"--pq-m \(pq_m\) 5 does not divide the dimension 32"):
        build_faiss_index(folder, "ivfpq", pq_m=5)
    with pytest.raises(InputError, match="does not divide"):
        _run(["index", "build", "--index", str(folder), "--kind", "opq-ivfpq", "--pq-m", "7"])
    with pytest.raises(InputError, match="--pq-bits"):
        build_faiss_index(folder, "ivfpq", pq_bits=17)
    with pytest.raises(InputError, match="--pq-m applies only to --kind ivfpq / opq-ivfpq"):
        _run(["index", "build", "--index", str(folder), "--kind", "hnsw", "--pq-m", "8"])
    with pytest.raises(InputError, match="at least 256 needed"):
        build_faiss_index(folder, "ivfpq", nlist=4, pq_m=8, train_size=200)
    build_faiss_index(folder, "hnsw", m=8, ef_construction=40)
    idx = EmbeddingIndex(folder)
    with pytest.raises(InputError, match=r"--nprobe .* applies only to a FAISS ivf / ivfpq"):
        idx.search_vectors(q, 5, faiss_kind="hnsw", nprobe=4)
    with pytest.raises(InputError, match="--rescore-multiplier must be an integer >= 0"):
        idx.search_vectors(q, 5, faiss_kind="hnsw", rescore_multiplier=-1)
    with pytest.raises(
        InputError, match="--rescore-multiplier applies to a quantized index or a search through"
    ):
        idx.search_vectors(q, 5, rescore_multiplier=4)
    # An exact kind rescored: the same hits (its scores are exact already).
    a = idx.search_vectors(q, 5, faiss_kind="hnsw", ef_search=64)
    b = idx.search_vectors(q, 5, faiss_kind="hnsw", ef_search=64, rescore_multiplier=3)
    assert (a[1][:, 0] == b[1][:, 0]).all()


def test_stale_and_corrupt_refused(data: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, q, _ = data
    entry = build_faiss_index(folder, "ivfpq", nlist=16, pq_m=8, pq_bits=4, seed=1)
    again = build_faiss_index(folder, "ivfpq", nlist=16, pq_m=8, pq_bits=4, seed=1)
    assert again["sha256"] == entry["sha256"]  # same sample, same seeds: same bytes
    path = folder / entry["file"]
    good = path.read_bytes()
    EmbeddingIndex(folder).search_vectors(q, 5, faiss_kind="ivfpq")
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptFileError, match="sha256 differs"):
        EmbeddingIndex(folder).search_vectors(q, 5, faiss_kind="ivfpq")
    path.write_bytes(good[:-10])
    with pytest.raises(CorruptFileError, match="truncated or replaced"):
        EmbeddingIndex(folder).search_vectors(q, 5, faiss_kind="ivfpq")
    # A crafted file with a matching manifest entry: FAISS cannot read it.
    junk = b"IwPQ" + bytes(200)
    path.write_bytes(junk)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["faiss"]["ivfpq"].update(bytes=len(junk), sha256=sha256_file(path))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="not a readable FAISS index"):
        EmbeddingIndex(folder).search_vectors(q, 5, faiss_kind="ivfpq")
    path.write_bytes(good)
    manifest["faiss"]["ivfpq"].update(bytes=len(good), sha256=entry["sha256"], count=3_999)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="stale FAISS index"):
        EmbeddingIndex(folder).search_vectors(q, 5, faiss_kind="ivfpq")
    manifest["faiss"]["ivfpq"]["count"] = 4_000
    (folder / "manifest.json").write_text(json.dumps(manifest))
    EmbeddingIndex(folder).search_vectors(q, 5, faiss_kind="ivfpq")


RSS_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import faiss
    from textcl.search import EmbeddingIndex

    def peak():  # this process's peak RSS in bytes (getrusage's ru_maxrss keeps, across
        # exec, the high-water mark of the forked parent: VmHWM is this program's own)
        with open("/proc/self/status") as f:
            return 1024 * int(next(x for x in f if x.startswith("VmHWM:")).split()[1])

    folder, mode = sys.argv[1], sys.argv[2]
    idx = EmbeddingIndex(folder)
    q = np.load(sys.argv[3])
    base = peak()
    if mode == "read-whole":  # the negative control: the index read into memory
        fi = faiss.read_index(folder + "/faiss-ivf.index")
        fi.nprobe = 4
        fi.search(q, 10)
    else:
        idx.search_vectors(q, 10, faiss_kind="ivf", nprobe=4)
    print(peak() - base)
    """
)


@pytest.mark.slow
def test_mmap_search_rss_bounded(tmp_path: Path) -> None:
    """A search of a ~200 MB IVF index grows the process by a fraction of it: the inverted
    lists stay memory-mapped and only the ``nprobe`` probed ones are touched."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    n, dim = 130_000, 384
    x = clustered(n, dim, 64, seed=4)
    folder = write_index(tmp_path / "big", x, 50_000, dtype="float16")
    del x
    entry = build_faiss_index(folder, "ivf", nlist=256, train_size=8_000)
    size = entry["bytes"]
    assert size > 190e6
    np.save(tmp_path / "q.npy", clustered(2, dim, 64, seed=5))  # 2 x 4 of 256 lists
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def grown(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(folder), mode, str(tmp_path / "q.npy")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[-1])

    assert grown("read-whole") > 0.9 * size  # the measurement sees a whole read
    assert grown("mmap") < 0.1 * size
