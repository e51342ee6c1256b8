"""Search at scale: the sign re-ranking stage of binary search, rescoring rows read with
``os.preadv`` (:class:`~textcl.search.rescore.RowFile`), the int8 scalar-quantizer path, and
the memory a binary search holds; against numpy oracles, with negative controls."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.search.test_quantize import clustered, float_index, recall
from textcl.errors import CorruptFileError, InputError
from textcl.search import EmbeddingIndex, build_faiss_index, exact_search
from textcl.search.binary_index import default_pool, sign_scores
from textcl.search.convert import quantize_index
from textcl.search.quantize import calibration_ranges, dequantize, quantize
from textcl.search.rescore import RowFile

HAS_FAISS = importlib.util.find_spec("faiss") is not None
ROOT = Path(__file__).resolve().parents[2]


def test_sign_scores_match_numpy() -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 64)).astype(np.float32)
    codes = rng.integers(0, 256, (3, 50, 8), dtype=np.uint8)
    got = sign_scores(q, codes)
    signs = 2 * np.unpackbits(codes, axis=2).astype(np.float64) - 1
    want = np.einsum("qpd,qd->qp", signs, q.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # negative control: the other bit order gives other scores
    wrong = 2 * np.unpackbits(codes, axis=2, bitorder="little").astype(np.float64) - 1
    assert not np.allclose(got, np.einsum("qpd,qd->qp", wrong, q), atol=1e-3)


@pytest.fixture(scope="module")
def binary_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    x = clustered(3000, 64, seed=8)
    root = tmp_path_factory.mktemp("bin")
    quantize_index(float_index(root / "float", x), root / "b", "binary", calibration_size=1000)
    return root / "b", x


def _oracle(x: np.ndarray, q: np.ndarray, pool: int, c: int, k: int) -> np.ndarray:
    """Hamming top ``pool`` (ties: smaller row), the best ``c`` of them by q . signs (ties:
    smaller row), then the top ``k`` by q . the int8 rescoring rows (ties: smaller row)."""
    ranges = calibration_ranges(x[:1000])
    rows8 = dequantize(quantize(x, "int8", ranges), "int8", ranges)
    bits = np.unpackbits(quantize(x, "ubinary"), axis=1)
    out = []
    for qi in q:
        ham = (bits != (qi > 0)).sum(axis=1)
        cand = np.lexsort((np.arange(len(x)), ham))[:pool]
        s = (2 * bits[cand].astype(np.float64) - 1) @ qi
        top = cand[np.lexsort((cand, -s))[:c]]
        r = rows8[top] @ qi
        out.append(top[np.lexsort((top, -r))[:k]])
    return np.array(out)


@pytest.mark.parametrize("kind", [None, "binary-flat"])
def test_sign_stage_matches_numpy(binary_folder: tuple[Path, np.ndarray], kind: str | None) -> None:
    folder, x = binary_folder
    if kind is not None:
        if not HAS_FAISS:
            pytest.skip("faiss not installed")
        build_faiss_index(folder, kind)
    idx = EmbeddingIndex(folder)
    q = clustered(8, 64, seed=9)
    _, ids = idx.search_vectors(q, 10, faiss_kind=kind, rescore_multiplier=4, candidate_pool=300)
    np.testing.assert_array_equal(ids, _oracle(x, q, 300, 40, 10))
    # negative control: without the stage, the Hamming top 40 give other hits
    _, plain = idx.search_vectors(q, 10, faiss_kind=kind, rescore_multiplier=4, candidate_pool=0)
    np.testing.assert_array_equal(plain, _oracle(x, q, 40, 40, 10))
    assert (plain != ids).any()


def test_sign_stage_raises_recall(binary_folder: tuple[Path, np.ndarray]) -> None:
    folder, x = binary_folder
    idx = EmbeddingIndex(folder)
    q = clustered(40, 64, seed=10)
    truth = exact_search(q, x, top_k=10)[1]
    plain = recall(idx.search_vectors(q, 10, candidate_pool=0)[1], truth)
    staged = recall(idx.search_vectors(q, 10)[1], truth)  # default pool (all 3000 rows)
    assert staged >= max(0.99, plain + 0.02), (plain, staged)


def test_default_pool_grows_with_the_corpus() -> None:
    assert default_pool(3000) == default_pool(1_000_000) == 2000
    assert default_pool(5_000_000) == 10_000 and default_pool(5_000_001) == 10_001


def test_candidate_pool_errors(binary_folder: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder, _ = binary_folder
    idx = EmbeddingIndex(folder)
    q = clustered(2, 64, seed=11)
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="--candidate-pool"):
            idx.search_vectors(q, 5, candidate_pool=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="binary index"):
        EmbeddingIndex(folder.parent / "float").search_vectors(q, 5, candidate_pool=100)
    quantize_index(folder.parent / "float", tmp_path / "none", "binary", rescore_dtype="none")
    with pytest.raises(InputError, match="rescore-dtype none"):
        EmbeddingIndex(tmp_path / "none").search_vectors(q, 5, candidate_pool=100)


# --- rows read at their offsets ------------------------------------------------------------


def test_row_file_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((500, 12)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    rows = RowFile(tmp_path / "a.npy")
    assert rows.shape == (500, 12) and rows.dtype == np.float32
    pick = np.array([3, 4, 5, 499, 0, 7, 7, 200])
    np.testing.assert_array_equal(rows[pick], a[pick])
    np.testing.assert_array_equal(rows[10:20], a[10:20])
    np.testing.assert_array_equal(rows[490:900], a[490:])
    np.testing.assert_array_equal(rows[np.array([-1])], a[[-1]])
    assert rows[np.array([], dtype=np.int64)].shape == (0, 12)
    with pytest.raises(IndexError):
        rows[np.array([500])]
    # a version-2 header, int8 rows
    b = rng.integers(-128, 128, (40, 7), dtype=np.int8)
    with open(tmp_path / "b.npy", "wb") as f:
        np.lib.format.write_array(f, b, version=(2, 0))
    np.testing.assert_array_equal(RowFile(tmp_path / "b.npy")[np.arange(39, -1, -3)], b[::-3][:14])
    # truncated, Fortran order, not an .npy: refused
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-5])
    with pytest.raises(CorruptFileError, match="truncated"):
        RowFile(tmp_path / "t.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    with pytest.raises(CorruptFileError, match="Fortran"):
        RowFile(tmp_path / "f.npy")
    (tmp_path / "x.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(CorruptFileError, match="not a readable"):
        RowFile(tmp_path / "x.npy")


# --- int8: FAISS scalar quantizer (small batches) and numpy (large) -----------------------


@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_int8_sq8_and_numpy_paths_match_oracle(
    binary_folder: tuple[Path, np.ndarray], tmp_path: Path, dtype: str
) -> None:
    _, x = binary_folder
    quantize_index(
        float_index(tmp_path / "float", x), tmp_path / dtype, dtype, calibration_size=1000
    )
    idx = EmbeddingIndex(tmp_path / dtype)
    ranges = calibration_ranges(x[:1000])
    deq = dequantize(quantize(x, dtype, ranges), dtype, ranges)
    q = clustered(20, 64, seed=12)
    s_ref, i_ref = exact_search(q, deq, top_k=10)
    small_s, small_i = idx.search_vectors(q[:5], 10, rescore_multiplier=1)  # FAISS SQ8
    big_s, big_i = idx.search_vectors(q, 10, rescore_multiplier=1)  # 20 > 16: numpy
    np.testing.assert_array_equal(small_i, i_ref[:5])
    np.testing.assert_array_equal(big_i, i_ref)
    np.testing.assert_allclose(small_s, s_ref[:5], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(big_s, s_ref, rtol=1e-4, atol=1e-5)
    # negative control: the codes read as buckets without the 0.5-step shift score otherwise
    starts, steps = ranges[0], (ranges[1] - ranges[0]) / 255
    off = 128 if dtype == "int8" else 0
    shifted = starts + (quantize(x, dtype, ranges).astype(np.float32) + off + 0.5) * steps
    assert not np.allclose(small_s, exact_search(q[:5], shifted, top_k=10)[0], atol=1e-4)


# --- memory: a binary search holds its candidates' rows, not the rescoring file -------------

RSS_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from textcl.search import EmbeddingIndex

    def peak():  # VmHWM: this program's own peak (ru_maxrss carries the parent's over exec)
        with open("/proc/self/status") as f:
            return 1024 * int(next(x for x in f if x.startswith("VmHWM:")).split()[1])

    folder, mode = sys.argv[1], sys.argv[2]
    idx = EmbeddingIndex(folder)
    if mode == "mmap":  # the negative control: the rescoring rows memory-mapped
        idx._rescore = [
            np.load(f"{folder}/{s.rescore}", mmap_mode="r") for s in idx.manifest.shards
        ]
    q = np.load(sys.argv[3])
    idx.search_vectors(q[:64], 10, rescore_multiplier=10)  # warm: checks, buffers, imports
    base = peak()
    idx.search_vectors(q[64:], 10, rescore_multiplier=10)  # other queries, other rows
    print(peak() - base)
    """
)


@pytest.mark.slow
def test_binary_search_rss_bounded(tmp_path: Path) -> None:
    """A search over a binary index with ~150 MB of float32 rescoring rows grows the process
    by a fraction of them: rows are read at the candidates (a memory map would keep the
    pages around every candidate row)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    n, dim = 100_000, 384
    x = clustered(n, dim, seed=13)
    float_index(tmp_path / "f", x, shard_size=50_000)
    del x
    quantize_index(tmp_path / "f", tmp_path / "b", "ubinary", rescore_dtype="float32")
    size = sum(p.stat().st_size for p in (tmp_path / "b").glob("*.rescore.npy"))
    assert size > 150e6
    np.save(tmp_path / "q.npy", clustered(128, dim, seed=14))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def grown(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(tmp_path / "b"), mode, str(tmp_path / "q.npy")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[-1])

    mapped, read = grown("mmap"), grown("pread")
    assert mapped > 0.1 * size, (mapped, size)  # the measurement sees mapped pages
    assert read < 0.03 * size, (read, mapped, size)
