"""The mteb adapter runs mteb's own STS evaluation on a local task (no hub access)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from textcl import SentenceEncoder

mteb = pytest.importorskip("mteb")
pytest.importorskip("mteb.mocks.mock_tasks.sts")

from datasets import Dataset, DatasetDict  # noqa: E402
from mteb.mocks.mock_tasks.sts import MockSTSTask  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from textcl.integrations.mteb import TextclMTEBModel  # noqa: E402


def _pairs(sts_dir: Path | None, fallback: list[str], n: int = 60) -> dict[str, list[Any]]:
    s1: list[str] = []
    s2: list[str] = []
    score: list[float] = []
    if sts_dir is not None:
        with (sts_dir / "STSBenchmark" / "sts-dev.csv").open(encoding="utf-8") as f:
            for line in f:
                cols = line.rstrip("\n").split("\t")
                score.append(float(cols[4]))
                s1.append(cols[5])
                s2.append(cols[6])
                if len(s1) >= n:
                    break
    else:  # tiny sentences with arbitrary but fixed scores
        rng = np.random.default_rng(0)
        for i in range(len(fallback) - 1):
            s1.append(fallback[i])
            s2.append(fallback[i + 1])
            score.append(float(rng.uniform(0, 5)))
    return {"sentence1": s1, "sentence2": s2, "score": score}


def local_sts_task(data: dict[str, list[Any]]) -> MockSTSTask:
    class LocalSTS(MockSTSTask):
        metadata = MockSTSTask.metadata.model_copy(update={"name": "TextclLocalSTS"})
        min_score = 0
        max_score = 5

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = DatasetDict({"test": Dataset.from_dict(data)})
            self.data_loaded = True

    return LocalSTS()


def _run(model: TextclMTEBModel, task: MockSTSTask) -> dict[str, Any]:
    result = mteb.evaluate(model, [task], cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    return dict(scores)


def test_mteb_evaluate_runs_a_textcl_encoder(tiny_model_dir: Path, sentences: list[str]) -> None:
    # mean pooling: the tiny random model's cls cosines are near-ties (0.99998-0.99999).
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean")
    data = _pairs(None, sentences)
    scores = _run(TextclMTEBModel(enc, name="textcl/tiny"), local_sts_task(data))
    # Oracle: Spearman of cosine similarity, computed here from textcl's own embeddings.
    a = enc.encode(data["sentence1"])
    b = enc.encode(data["sentence2"])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    want = spearmanr(cos, data["score"]).statistic
    assert scores["cosine_spearman"] == pytest.approx(want, abs=1e-6)
    # Negative control: another pooling gives another score.
    other = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="max")
    other_scores = _run(TextclMTEBModel(other, name="textcl/tiny-max"), local_sts_task(data))
    assert other_scores["cosine_spearman"] != pytest.approx(want, abs=1e-6)


def test_adapter_prompts_follow_mteb_priority(tiny_model_dir: Path) -> None:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir)
    enc.prompts = {"query": "q: ", "STS": "sts: ", "TextclLocalSTS-query": "exact: "}
    model = TextclMTEBModel(enc)
    meta = local_sts_task({"sentence1": [], "sentence2": [], "score": []}).metadata
    assert model.prompt_for(meta, "query") == "exact: "
    assert model.prompt_for(meta, "document") == "sts: "
    enc.prompts = {"query": "q: "}
    assert model.prompt_for(meta, "query") == "q: "
    assert model.prompt_for(meta, None) is None
    batches = [{"text": ["hello world", "a cat"]}, {"text": ["x"]}]
    got = model.encode(
        batches,
        task_metadata=meta,
        hf_split="test",
        hf_subset="default",
        prompt_type="query",
        task_name="ignored",
    )
    np.testing.assert_array_equal(got, enc.encode(["q: hello world", "q: a cat", "q: x"]))
    sims = model.similarity(got, got)
    assert sims.shape == (3, 3) and float(sims[0, 0]) == pytest.approx(1.0, abs=1e-6)
    pair = model.similarity_pairwise(got, got[::-1].copy())
    assert pair.shape == (3,)
    with pytest.raises(ValueError, match="'text'"):
        model.encode([{"image": [1]}], task_metadata=meta)


@pytest.mark.slow
def test_mteb_minilm_on_stsb_dev_matches_textcl(minilm_dir: Path, sts_dir: Path) -> None:
    enc = SentenceEncoder.from_pretrained(minilm_dir)
    data = _pairs(sts_dir, [], n=200)
    scores = _run(TextclMTEBModel(enc), local_sts_task(data))
    a, b = enc.encode(data["sentence1"]), enc.encode(data["sentence2"])
    want = spearmanr((a * b).sum(1), data["score"]).statistic  # normalised vectors
    assert scores["cosine_spearman"] == pytest.approx(want, abs=1e-6)
    assert scores["cosine_spearman"] > 0.8
