"""Integration: all-MiniLM-L6-v2 on the real STS-B test set reproduces MTEB's number."""

from __future__ import annotations

from pathlib import Path

import pytest

# MTEB STSBenchmark, all-MiniLM-L6-v2, cosine Spearman ×100 (textcl measures 82.03 too).
MTEB_STSB_TEST = 82.03


@pytest.mark.slow
def test_minilm_stsb_test_matches_mteb(minilm_dir: Path, sts_dir: Path) -> None:
    from textcl import SentenceEncoder
    from textcl.evaluation import evaluate_sts

    encoder = SentenceEncoder.from_pretrained(minilm_dir)  # its own mean pooling, 256 tokens
    res = evaluate_sts(encoder, ["stsb"], split="test", data_dir=sts_dir, batch_size=64)
    stsb = res["tasks"]["stsb"]
    assert stsb["n_pairs"] == 1379
    assert stsb["spearman"] == pytest.approx(MTEB_STSB_TEST, abs=0.1)
    assert res["pooling"] == "mean"
