"""STS metrics, aggregation, de-duplication, the evaluate_sts API and `textcl eval`."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from tests.evaluation._synth import patch_counts, write_sick, write_stsb, write_year
from textcl.evaluation import (
    aggregate_subsets,
    correlations,
    evaluate_sts,
    format_sts_table,
    pair_similarity,
)


# ---------------------------------------------------------------------- metrics
def test_pair_similarity_vs_loop() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 7)), rng.normal(size=(20, 7))
    a[3] = 0.0  # zero vector: cosine 0
    cos = [
        0.0 if not np.linalg.norm(x) else float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
        for x, y in zip(a, b, strict=True)
    ]
    np.testing.assert_allclose(pair_similarity(a, b, "cosine"), cos, rtol=1e-12)
    np.testing.assert_allclose(
        pair_similarity(a, b, "dot"), [x @ y for x, y in zip(a, b, strict=True)]
    )
    np.testing.assert_allclose(
        pair_similarity(a, b, "euclidean"), [-math.dist(x, y) for x, y in zip(a, b, strict=True)]
    )
    np.testing.assert_allclose(
        pair_similarity(a, b, "manhattan"), [-sum(abs(x - y)) for x, y in zip(a, b, strict=True)]
    )
    with pytest.raises(ValueError, match="unknown similarity"):
        pair_similarity(a, b, "jaccard")
    with pytest.raises(ValueError, match="same shape"):
        pair_similarity(a, b[:3])


def test_correlations_vs_scipy() -> None:
    rng = np.random.default_rng(1)
    gold = np.round(rng.uniform(0, 5, 200), 1)  # many ties, like real gold scores
    pred = gold + rng.normal(scale=2.0, size=200)
    got = correlations(pred, gold)
    assert got["spearman"] == pytest.approx(spearmanr(pred, gold)[0] * 100, abs=1e-10)
    assert got["pearson"] == pytest.approx(pearsonr(pred, gold)[0] * 100, abs=1e-10)
    const = correlations(np.ones(5), np.arange(5.0))
    assert math.isnan(const["spearman"]) and math.isnan(const["pearson"])
    with pytest.raises(ValueError, match="at least 2"):
        correlations(np.ones(1), np.ones(1))


def test_aggregation_all_wmean_mean() -> None:
    rng = np.random.default_rng(2)
    sizes = [10, 40, 25]
    golds = [rng.uniform(0, 5, n) for n in sizes]
    # Different offsets per subset make the pooled correlation differ from the subset means.
    preds = [g * (i + 1) + rng.normal(scale=1.5, size=len(g)) + 3 * i for i, g in enumerate(golds)]
    res = aggregate_subsets(preds, golds, ["a", "b", "c"])
    sp = [spearmanr(p, g)[0] * 100 for p, g in zip(preds, golds, strict=True)]
    pe = [pearsonr(p, g)[0] * 100 for p, g in zip(preds, golds, strict=True)]
    allp, allg = np.concatenate(preds), np.concatenate(golds)
    assert res["spearman"] == pytest.approx(spearmanr(allp, allg)[0] * 100)
    assert res["pearson"] == pytest.approx(pearsonr(allp, allg)[0] * 100)
    assert res["n_pairs"] == 75 and res["aggregation"] == "all"
    assert res["wmean"]["spearman"] == pytest.approx(
        sum(s * n for s, n in zip(sp, sizes, strict=True)) / 75
    )
    assert res["mean"]["spearman"] == pytest.approx(sum(sp) / 3)
    assert res["mean"]["pearson"] == pytest.approx(sum(pe) / 3)
    assert res["subsets"]["b"]["n_pairs"] == 40
    assert res["subsets"]["c"]["spearman"] == pytest.approx(sp[2])
    # The three aggregations really differ on this data.
    assert (
        len(
            {
                round(res["spearman"], 6),
                round(res["wmean"]["spearman"], 6),
                round(res["mean"]["spearman"], 6),
            }
        )
        == 3
    )


# ---------------------------------------------------------------------- evaluate_sts
class CountingModel:
    """A callable model: a fixed random vector per sentence (word bag), counting calls."""

    def __init__(self, dim: int = 16) -> None:
        self.calls: list[list[str]] = []
        self.dim = dim

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim)
        for w in text.split():
            v += np.random.default_rng(abs(hash(w)) % 2**32).normal(size=self.dim)
        return v

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts])


@pytest.fixture
def synth_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    subs = {"FNWN": 6, "headlines": 8, "OnWN": 5}
    write_year(tmp_path, "STS13-en-test", subs, seed=3)
    write_stsb(tmp_path, "sts-test.csv", 12, seed=4)
    write_stsb(tmp_path, "sts-dev.csv", 9, seed=5)
    write_sick(tmp_path, "SICK_test_annotated.txt", 10, seed=6)
    patch_counts(
        monkeypatch,
        {("sts13", "test"): 19, ("stsb", "test"): 12, ("stsb", "dev"): 9, ("sickr", "test"): 10},
        {"sts13": subs},
    )
    return tmp_path


def test_each_unique_sentence_encoded_once(synth_dir: Path) -> None:
    from textcl.evaluation.data import load_sts_task

    model = CountingModel()
    res = evaluate_sts(model, ["sts13", "stsb", "sickr"], split="test", data_dir=synth_dir)
    assert len(model.calls) == 1
    encoded = model.calls[0]
    tasks = [load_sts_task(t, "test", synth_dir) for t in ("sts13", "stsb", "sickr")]
    every = [s for t in tasks for s in (*t.sentences1, *t.sentences2)]
    assert len(every) > len(set(every))  # the synthetic data has repeats
    assert sorted(encoded) == sorted(set(every))
    assert res["n_sentences"] == len(set(every))
    # Oracle: score every pair by embedding it directly.
    for t in tasks:
        pred = [
            float(
                np.dot(model.vector(a), model.vector(b))
                / np.linalg.norm(model.vector(a))
                / np.linalg.norm(model.vector(b))
            )
            for a, b in zip(t.sentences1, t.sentences2, strict=True)
        ]
        assert res["tasks"][t.name]["spearman"] == pytest.approx(
            spearmanr(pred, t.scores)[0] * 100, abs=1e-6
        )


def test_result_dict_shape(synth_dir: Path) -> None:
    res = evaluate_sts(
        CountingModel(),
        "sts13,stsb",
        split="dev",
        data_dir=synth_dir,
        return_predictions=True,
        similarities=["dot", "manhattan"],
    )
    assert list(res["tasks"]) == ["sts13", "stsb"]
    sts13, stsb = res["tasks"]["sts13"], res["tasks"]["stsb"]
    assert sts13["split"] == "test" and stsb["split"] == "dev" and stsb["n_pairs"] == 9
    assert set(sts13["subsets"]) == {"FNWN", "headlines", "OnWN"}
    assert res["average"] == pytest.approx((sts13["spearman"] + stsb["spearman"]) / 2)
    assert res["split"] == "dev" and res["aggregation"] == "all" and res["pooling"] is None
    assert res["data_source"] == f"local:{synth_dir}"
    assert set(res["versions"]) == {"textcl", "torch", "transformers"}
    assert res["wall_time_s"] > 0
    assert len(stsb["predictions"]) == len(stsb["gold"]) == 9
    assert res["predictions"]["stsb"]["pred"] == stsb["predictions"]
    assert spearmanr(stsb["predictions"], stsb["gold"])[0] * 100 == pytest.approx(stsb["spearman"])
    assert set(stsb["dot"]) == {"spearman", "pearson"} and "manhattan" in stsb
    json.dumps(res)  # JSON-ready
    table = format_sts_table(res)
    assert "sts13" in table and "stsb (dev)" in table and "average" in table
    assert f"{res['average']:.2f}" in table and "dot sp" in table


def test_bad_model_and_outputs(synth_dir: Path) -> None:
    with pytest.raises(TypeError, match="SentenceEncoder, an object with encode"):
        evaluate_sts(object(), "stsb", "test", synth_dir)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        evaluate_sts(lambda t: np.zeros(3), "stsb", "test", synth_dir)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_sts(lambda t: np.full((len(t), 4), np.nan), "stsb", "test", synth_dir)
    with pytest.raises(ValueError, match="unknown similarity"):
        evaluate_sts(CountingModel(), "stsb", "test", synth_dir, similarities=["cos2"])


def test_object_with_encode_method(synth_dir: Path) -> None:
    model = CountingModel()

    class Wrapped:  # a sentence-transformers-like model: .encode(texts, batch_size=...)
        def __init__(self) -> None:
            self.batch_sizes: list[int] = []

        def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
            self.batch_sizes.append(batch_size)
            return model(texts)

    wrapped = Wrapped()
    ref = evaluate_sts(model, "stsb", "test", synth_dir)
    res = evaluate_sts(wrapped, "stsb", "test", synth_dir, batch_size=7)
    assert wrapped.batch_sizes == [7]
    assert res["tasks"]["stsb"]["spearman"] == pytest.approx(ref["tasks"]["stsb"]["spearman"])


def test_torch_output_accepted(synth_dir: Path) -> None:
    import torch

    model = CountingModel()
    ref = evaluate_sts(model, "stsb", "test", synth_dir)
    res = evaluate_sts(lambda t: torch.tensor(model(t)), "stsb", "test", synth_dir)
    assert res["tasks"]["stsb"]["spearman"] == pytest.approx(ref["tasks"]["stsb"]["spearman"])


def test_sentence_encoder(tiny_encoder, synth_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from textcl.evaluation.data import load_sts_task

    tiny_encoder.train()
    res = evaluate_sts(tiny_encoder, "stsb", "test", synth_dir, batch_size=4)
    assert tiny_encoder.training  # mode restored
    assert res["pooling"] == "mean"
    task = load_sts_task("stsb", "test", synth_dir)
    a = tiny_encoder.encode(task.sentences1)
    b = tiny_encoder.encode(task.sentences2)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert res["tasks"]["stsb"]["spearman"] == pytest.approx(
        spearmanr(cos, task.scores)[0] * 100, abs=1e-4
    )


def test_cli_writes_json(tiny_model_dir: Path, synth_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from textcl.commands import eval as eval_cmd

    parser = argparse.ArgumentParser()
    eval_cmd.register(parser.add_subparsers())
    out = tmp_path / "out" / "results.json"
    args = parser.parse_args(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--tasks",
            "sts13,stsb",
            "--data",
            str(synth_dir),
            "--pooling",
            "cls",
            "--batch-size",
            "8",
            "--max-length",
            "16",
            "--output",
            str(out),
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["pooling"] == "cls" and saved["model"] == str(tiny_model_dir)
    assert saved["max_length"] == 16 and saved["split"] == "test"
    from textcl.precision import native_bf16

    assert saved["precision"] == ("bf16 (weights)" if native_bf16() else "fp32")
    assert set(saved["tasks"]) == {"sts13", "stsb"}
    assert f"{saved['tasks']['stsb']['spearman']:.2f}" in printed
    assert [p.name for p in out.parent.iterdir()] == ["results.json"]  # no temp file left
    bad = parser.parse_args(["eval", "--model", str(tiny_model_dir), "--tasks", "sts99"])
    with pytest.raises(ValueError, match="unknown STS task"):
        bad.func(bad)


def test_evaluate_from_hub_without_subsets(monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets import Dataset

    from textcl.evaluation import data

    rng = np.random.default_rng(7)
    texts = ["a man plays the guitar", "the cat sleeps", "two dogs run", "a car", "rain"]

    def fake(path: str, revision: str, split: str) -> Dataset:
        n = 12
        return Dataset.from_dict(
            {
                "sentence1": [str(rng.choice(texts)) for _ in range(n)],
                "sentence2": [str(rng.choice(texts)) + " today" for _ in range(n)],
                "score": rng.uniform(0, 5, n).tolist(),
            }
        )

    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    monkeypatch.setattr(data, "_hub_load", fake)
    patch_counts(monkeypatch, {("sts12", "test"): 12})
    res = evaluate_sts(CountingModel(), "sts12", "test")
    sts12 = res["tasks"]["sts12"]
    assert res["split"] == "test"  # STS12-16 only have a test split
    assert sts12["wmean"] is None and sts12["mean"] is None and sts12["subsets"] == {}
    assert res["data_source"].startswith("hub:mteb/sts12-sts@")
    assert "sts12" in format_sts_table(res)
