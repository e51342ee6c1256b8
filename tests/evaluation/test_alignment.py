"""Alignment and uniformity (Wang & Isola 2020) against loop oracles, and SimCSE's STS-B
dev protocol."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.evaluation._synth import patch_counts, write_stsb
from textcl.evaluation.alignment import (
    POSITIVE_THRESHOLD,
    alignment,
    alignment_uniformity,
    positive_mask,
    uniformity,
)
from textcl.evaluation.runs import pair_cosine_similarities


def _unit(v: np.ndarray) -> list[float]:
    values = [float(x) for x in v]
    norm = math.sqrt(sum(x * x for x in values))
    return [x / norm for x in values]


def loop_alignment(a: np.ndarray, b: np.ndarray, alpha: float) -> float:
    total = 0.0
    for x, y in zip(a, b, strict=True):
        d = math.sqrt(sum((p - q) ** 2 for p, q in zip(_unit(x), _unit(y), strict=True)))
        total += d**alpha
    return total / len(a)


def loop_uniformity(z: np.ndarray, t: float) -> float:
    units = [_unit(x) for x in z]
    terms = []
    for i in range(len(units)):
        for j in range(i + 1, len(units)):
            d2 = sum((p - q) ** 2 for p, q in zip(units[i], units[j], strict=True))
            terms.append(math.exp(-t * d2))
    return math.log(sum(terms) / len(terms))


# non-degenerate rows: entries in [-10, 10], at least one entry of size >= 0.5
def _matrices(n_min: int, n_max: int) -> st.SearchStrategy[np.ndarray]:
    return (
        st.tuples(st.integers(n_min, n_max), st.integers(1, 6))
        .flatmap(lambda s: arrays(np.float64, s, elements=st.floats(-10, 10, allow_nan=False)))
        .filter(lambda m: bool((np.abs(m).max(axis=1) >= 0.5).all()))
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data(), alpha=st.sampled_from([1.0, 2.0, 3.0, 0.5]))
def test_alignment_matches_loop(data: st.DataObject, alpha: float) -> None:
    a = data.draw(_matrices(1, 12))
    b = data.draw(
        arrays(np.float64, a.shape, elements=st.floats(-10, 10)).filter(
            lambda m: bool((np.abs(m).max(axis=1) >= 0.5).all())
        )
    )
    assert alignment(a, b, alpha=alpha) == pytest.approx(loop_alignment(a, b, alpha), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(z=_matrices(2, 14), t=st.sampled_from([2.0, 1.0, 0.5]), block=st.integers(1, 5))
def test_uniformity_matches_loop(z: np.ndarray, t: float, block: int) -> None:
    # small blocks exercise the blockwise log-sum-exp
    assert uniformity(z, t=t, block_size=block) == pytest.approx(loop_uniformity(z, t), abs=1e-9)


def test_wang_isola_reference_formulas() -> None:
    """Same numbers as the paper's torch code on normalised embeddings."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(200, 16, generator=g, dtype=torch.float64))
    y = torch.nn.functional.normalize(
        x + 0.3 * torch.randn(200, 16, generator=g, dtype=torch.float64)
    )
    ref_align = (x - y).norm(p=2, dim=1).pow(2).mean().item()
    ref_uniform = torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log().item()
    assert alignment(x, y) == pytest.approx(ref_align, rel=1e-10)
    assert uniformity(x) == pytest.approx(ref_uniform, rel=1e-10)
    assert uniformity(x, block_size=7) == pytest.approx(ref_uniform, rel=1e-10)
    # torch float32 input works the same
    assert uniformity(x.float()) == pytest.approx(ref_uniform, rel=1e-5)


def test_known_values() -> None:
    eye = np.eye(5)
    assert uniformity(eye) == pytest.approx(-4.0)  # all pairs at squared distance 2: log e^-4
    assert uniformity(3 * eye, t=1) == pytest.approx(-2.0)  # scale does not matter
    assert alignment(eye, 7 * eye) == 0.0
    assert alignment(eye, -eye) == pytest.approx(4.0)  # antipodal: ||2x||^2
    assert alignment(eye, -eye, alpha=1) == pytest.approx(2.0)
    same = np.tile([[1.0, 2.0]], (4, 1))
    assert uniformity(same) == pytest.approx(0.0)  # the maximum: all collapsed
    # raw (unnormalised) variant
    assert alignment(np.zeros((2, 3)), np.ones((2, 3)), normalize=False) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: alignment(np.ones((3, 2)), np.ones((2, 2))), "one shape"),
        (lambda: alignment(np.ones((0, 2)), np.ones((0, 2))), "non-empty"),
        (lambda: alignment(np.ones(3), np.ones(3)), r"\(N, D\)"),
        (lambda: alignment(np.zeros((2, 2)), np.ones((2, 2))), r"z_a\[0\] is a zero vector"),
        (lambda: alignment(np.ones((2, 2)), np.ones((2, 2)), alpha=0), "alpha"),
        (lambda: alignment(np.full((2, 2), np.nan), np.ones((2, 2))), "NaN"),
        (lambda: uniformity(np.ones((1, 4))), "at least 2"),
        (lambda: uniformity(np.ones((3, 4)), t=-1), "t must be"),
        (lambda: uniformity(np.ones((3, 4)), block_size=0), "block_size"),
    ],
)
def test_bad_input(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- STS-B dev
def _hash_encoder(dim: int = 8):  # type: ignore[no-untyped-def]
    """A deterministic callable list[str] -> (N, dim): a vector per sentence text."""
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        rows = []
        for s in texts:
            seed = int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).normal(size=dim))
        return np.array(rows)

    encode.calls = calls  # type: ignore[attr-defined]
    return encode


def test_alignment_uniformity_on_stsb_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s1, s2, scores = write_stsb(tmp_path, "sts-dev.csv", 40, seed=5)
    patch_counts(monkeypatch, {("stsb", "dev"): 40})
    enc = _hash_encoder()
    out = alignment_uniformity(enc, data_dir=tmp_path)
    assert set(out) == {"alignment", "uniformity"}
    # oracle: positives = pairs with score > 4; uniformity over the distinct sentences
    pos = [i for i in range(40) if scores[i] > 4]
    assert pos, "the synthetic set needs positives"
    # the embeddings as the metric sees them: float32 (encode_unique's output type)
    vec = {s: enc([s])[0].astype(np.float32) for s in {*s1, *s2}}
    distinct = list(dict.fromkeys([*s1, *s2]))
    assert len(distinct) < 80  # the synthetic set repeats sentences
    expected_align = loop_alignment(
        np.array([vec[s1[i]] for i in pos]), np.array([vec[s2[i]] for i in pos]), 2
    )
    expected_uniform = loop_uniformity(np.array([vec[s] for s in distinct]), 2)
    assert out["alignment"] == pytest.approx(expected_align, abs=1e-9)
    assert out["uniformity"] == pytest.approx(expected_uniform, abs=1e-9)
    # each distinct sentence was encoded once, in one call
    first = enc.calls[0]  # type: ignore[attr-defined]
    assert sorted(first) == sorted(distinct)
    # a stricter threshold changes the positive set
    strict = alignment_uniformity(enc, data_dir=tmp_path, threshold=4.5)
    assert strict["uniformity"] == out["uniformity"]
    with pytest.raises(ValueError, match="no pair with a gold score above 5"):
        alignment_uniformity(enc, data_dir=tmp_path, threshold=5.0)


def test_stsb_dev_real_data_protocol(sts_dir: Path) -> None:
    """Real STS-B dev: 1500 pairs; positives and distinct sentences from an independent reader."""
    with open(sts_dir / "STSBenchmark" / "sts-dev.csv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 1500
    pos = [r for r in rows if float(r[4]) > 4]
    distinct = list(dict.fromkeys([*(r[5] for r in rows), *(r[6] for r in rows)]))
    enc = _hash_encoder(dim=4)
    out = alignment_uniformity(enc, data_dir=sts_dir)
    assert [len(c) for c in enc.calls] == [len(distinct)]  # type: ignore[attr-defined]
    a = np.array([enc([r[5]])[0] for r in pos], dtype=np.float32)
    b = np.array([enc([r[6]])[0] for r in pos], dtype=np.float32)
    assert out["alignment"] == pytest.approx(alignment(a, b), abs=1e-9)
    z = np.array([enc([s])[0] for s in distinct], dtype=np.float32)
    assert out["uniformity"] == pytest.approx(uniformity(z), abs=1e-9)


@pytest.mark.slow
def test_alignment_uniformity_with_sentence_encoder(
    tiny_encoder,  # type: ignore[no-untyped-def]
    sts_dir: Path,
) -> None:
    """A SentenceEncoder directly: embeddings are L2-normalised by the metric."""
    out = alignment_uniformity(tiny_encoder, data_dir=sts_dir, batch_size=256)
    assert 0.0 <= out["alignment"] <= 4.0 and out["uniformity"] <= 0.0
    with open(sts_dir / "STSBenchmark" / "sts-dev.csv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    pos = [r for r in rows if float(r[4]) > 4]
    a = tiny_encoder.encode([r[5] for r in pos])
    b = tiny_encoder.encode([r[6] for r in pos])
    assert out["alignment"] == pytest.approx(alignment(a, b), abs=1e-5)


def test_pair_cosine_similarities_match_numpy(tiny_encoder: Any, sentences: list[str]) -> None:
    a, b = sentences[:8], sentences[8:]
    pos, rand = pair_cosine_similarities(tiny_encoder, a, b, seed=3)
    ea = tiny_encoder.encode(a)
    eb = tiny_encoder.encode(b)
    ea = ea / np.linalg.norm(ea, axis=1, keepdims=True)
    eb = eb / np.linalg.norm(eb, axis=1, keepdims=True)
    np.testing.assert_allclose(pos, (ea * eb).sum(1), atol=1e-5)
    perm = np.random.default_rng(3).permutation(8)
    want = [ea[perm[i]] @ eb[perm[(i + 1) % 8]] for i in range(8)]
    np.testing.assert_allclose(rand, want, atol=1e-5)
    # Random pairs never pair a sentence with its own partner.
    assert all(perm[i] != perm[(i + 1) % 8] for i in range(8))
    with pytest.raises(ValueError, match="8 items but sentences_b has 7"):
        pair_cosine_similarities(tiny_encoder, a, b[:7])


def test_one_positive_threshold_for_alignment_and_report() -> None:
    """SimCSE's positives are pairs "above 4": a gold score of exactly 4 is not one, for
    alignment and the report's similarity plot alike (the report used to take >= 4)."""
    assert POSITIVE_THRESHOLD == 4.0
    np.testing.assert_array_equal(
        positive_mask([3.9, 4.0, 4.0001, 5.0]), [False, False, True, True]
    )
    import inspect

    from textcl import report
    from textcl.evaluation import runs

    assert "positive_mask" in inspect.getsource(runs.evaluate_run)
    assert ">=" not in inspect.getsource(runs.evaluate_run)
    assert "POSITIVE" not in inspect.getsource(report)  # the report no longer decides it
