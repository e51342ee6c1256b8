"""textcl.report / ``textcl report``: the HTML renders from a run folder, contains the numbers
it claims (checked against values computed here from the log), embeds decodable PNGs, and
says which sections have no data."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from tests.test_plots import PNG_MAGIC, synthetic_records, write_jsonl
from textcl import report
from textcl.cli import main
from textcl.evaluation.alignment import positive_mask
from textcl.evaluation.runs import evaluate_run

CONFIG = {
    "model": "tiny-bert",
    "pooling": "cls",
    "temperature": 0.05,
    "views": "dropout",
    "optim": {"lr": 3e-5, "batch_size": 64},
}

RESULTS = {
    "model": "runs/x/best",
    "pooling": "cls",
    "split": "test",
    "aggregation": "all",
    "data_source": "/data/sts",
    "versions": {"textcl": "0.1.0"},
    "wall_time_s": 12.5,
    "tasks": {
        "sts12": {"spearman": 68.41, "pearson": 70.12, "n_pairs": 3108},
        "stsb": {"spearman": 76.55, "pearson": 77.01, "n_pairs": 1379},
    },
    "average": 72.48,
    "average_pearson": 73.565,
    "predictions": {
        "stsb": {"pred": [0.1, 0.5, 0.9, 0.3, 0.7], "gold": [0.5, 2.0, 4.8, 1.0, 3.9]},
    },
}


def make_run(tmp_path: Path, records: list[dict[str, Any]] | None = None) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(CONFIG), encoding="utf-8")
    write_jsonl(run / "metrics.jsonl", records if records is not None else synthetic_records())
    for d in ("checkpoints/step-00000020", "checkpoints/step-00000040", "best", "final"):
        (run / d).mkdir(parents=True)
    return run


def embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]


def assert_decodes_as_png(data: bytes) -> None:
    from PIL import Image

    assert data[:8] == PNG_MAGIC
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.size[0] > 100 and im.size[1] > 100


def test_report_contains_the_metrics_it_claims(tmp_path: Path) -> None:
    records = synthetic_records()
    run = make_run(tmp_path, records)
    out = report.write_report(run)
    assert out == run / "report.html"
    text = out.read_text(encoding="utf-8")

    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    best = max(evals, key=lambda r: r["stsb_dev_spearman"])
    t0 = min(r["time"] for r in records)  # times are shown as seconds since the first record
    assert f"{train[-1]['loss']:.4f} (step {train[-1]['step']})" in text
    assert f"{best['stsb_dev_spearman']:.2f} (step {best['step']})" in text
    # Every eval event is a row of the metrics table, with its values.
    for r in evals:
        row = (
            f"<td>{r['step']}</td><td>{r['epoch']:.2f}</td><td>{r['time'] - t0:.1f}</td>"
            f"<td>{r['stsb_dev_spearman']:.2f}</td><td>{r['alignment']:.4f}</td>"
            f"<td>{r['uniformity']:.4f}</td>"
        )
        assert row in text
    # Config, flattened.
    assert "<td>optim.lr</td><td>3e-05</td>" in text
    assert "<td>pooling</td><td>cls</td>" in text
    assert "step-00000020, step-00000040" in text
    # Two pictures: training curves and the alignment-uniformity trajectory.
    pngs = embedded_pngs(text)
    assert len(pngs) == 2
    for png in pngs:
        assert_decodes_as_png(png)
    assert "No STS results" in text


def test_report_with_results_and_predictions(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "sts_results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    text = report.write_report(run, output=tmp_path / "r.html").read_text(encoding="utf-8")
    # Shown as stored (textcl stores correlations ×100).
    assert "<td>sts12</td><td>68.41</td><td>70.12</td><td>3108</td>" in text
    assert "<td>stsb</td><td>76.55</td><td>77.01</td><td>1379</td>" in text
    assert "<td>72.48</td><td>73.56</td>" in text
    assert "split=test" in text
    pngs = embedded_pngs(text)
    assert len(pngs) == 3  # curves, alignment-uniformity, STS scatter
    for png in pngs:
        assert_decodes_as_png(png)
    assert "No STS results" not in text


def test_report_shows_stored_values_never_rescales(tmp_path: Path) -> None:
    """A ×100 Spearman of 0.83 (a near-random model) is 0.83, not 83.00: the report used to
    take every |value| <= 1 for a fraction."""
    run = make_run(tmp_path)
    before = json.loads(json.dumps(RESULTS))
    del before["predictions"]
    after = json.loads(json.dumps(before))
    after["tasks"] = {
        "sts12": {"spearman": 0.5, "pearson": 0.61, "n_pairs": 3108},
        "stsb": {"spearman": 0.83, "pearson": -0.2, "n_pairs": 1379},
    }
    after["average"], after["average_pearson"] = 0.665, 0.205
    text = report.write_report(run, results=[("before", before), ("after", after)]).read_text(
        encoding="utf-8"
    )
    assert "before Spearman ×100" in text and "after Spearman ×100" in text
    assert "<td>stsb</td><td>76.55</td><td>0.83</td><td>77.01</td><td>-0.20</td>" in text
    assert "<td>72.48</td><td>0.67</td><td>73.56</td><td>0.20</td>" in text
    assert "83.00" not in text


def test_eval_table_labels_the_scale_the_records_declare(tmp_path: Path) -> None:
    records = [
        {
            "event": "eval",
            "step": 2,
            "epoch": 0.0,  # a fractional epoch (an integer is an epoch index, shown as such)
            "time": 1.0,
            "stsb_dev_spearman": 0.83,
            "scales": {"stsb_dev_spearman": 100.0},
        },
        {
            "event": "eval",
            "step": 4,
            "epoch": 0.0,
            "time": 2.0,
            "stsb_dev_spearman": 0.9,
            "scales": {"stsb_dev_spearman": 100.0},
        },
    ]
    text = report.write_report(make_run(tmp_path, records)).read_text(encoding="utf-8")
    assert "<th>STS-B dev Spearman ×100</th>" in text
    assert "<td>4</td><td>0.00</td><td>1.0</td><td>0.90</td>" in text
    assert "best STS-B dev Spearman ×100</td><td>0.90 (step 4)" in text
    # Without a declared scale the report claims none.
    for r in records:
        del r["scales"]
    (tmp_path / "b").mkdir()
    text = report.write_report(make_run(tmp_path / "b", records)).read_text(encoding="utf-8")
    assert "<th>STS-B dev Spearman</th>" in text and "×100</th>" not in text


def test_report_without_optional_data_says_so(tmp_path: Path) -> None:
    records = [r for r in synthetic_records(with_alignment=False)]
    for r in records:
        r.pop("best", None)
    run = make_run(tmp_path, records)
    (run / "config.json").unlink()
    text = report.write_report(run).read_text(encoding="utf-8")
    assert "No config.json" in text
    assert "Alignment and uniformity were not logged" in text
    assert "Not logged: alignment, uniformity." in text
    assert "No values logged for: alignment, uniformity" in text
    assert len(embedded_pngs(text)) == 1
    # Without best flags the best is the maximum.
    evals = [r for r in records if r["event"] == "eval"]
    best = max(evals, key=lambda r: r["stsb_dev_spearman"])
    assert f"{best['stsb_dev_spearman']:.2f} (step {best['step']})" in text


def test_summary_names_a_custom_primary_metric(tmp_path: Path) -> None:
    """A run whose evaluator picks best/ by its own metric (lower is better here)."""
    records = [
        {
            "event": "eval",
            "step": 2,
            "epoch": 0,
            "time": 1.0,
            "val_loss": 3.0,
            "primary_metric": "val_loss",
            "best": True,
        },
        {
            "event": "eval",
            "step": 4,
            "epoch": 0,
            "time": 2.0,
            "val_loss": 2.5,
            "primary_metric": "val_loss",
            "best": True,
        },
        {
            "event": "eval",
            "step": 6,
            "epoch": 0,
            "time": 3.0,
            "val_loss": 2.7,
            "primary_metric": "val_loss",
            "best": False,
        },
    ]
    run = report.load_run(make_run(tmp_path, records))
    s = report.run_summary(run)
    assert s["primary_metric"] == "val_loss"
    assert (s["best_primary"], s["best_primary_step"]) == (2.5, 4)
    text = report.render_report_html(run)
    assert "best val_loss (picks best/)</td><td>2.5 (step 4)" in text


def test_report_only_train_events(tmp_path: Path) -> None:
    records = [r for r in synthetic_records() if r["event"] == "train"]
    text = report.write_report(make_run(tmp_path, records)).read_text(encoding="utf-8")
    assert "No eval events in metrics.jsonl" in text
    assert "best STS-B dev Spearman</td><td>not logged" in text


def test_run_summary_resumed_run_later_eval_wins(tmp_path: Path) -> None:
    records = [
        {"event": "train", "step": 1, "epoch": 0.1, "time": 1.0, "loss": 3.0},
        {"event": "eval", "step": 2, "epoch": 0.2, "time": 2.0, "stsb_dev_spearman": 50.0},
        {"event": "eval", "step": 2, "epoch": 0.2, "time": 9.0, "stsb_dev_spearman": 55.0},
        {"event": "train", "step": 3, "epoch": 0.3, "time": 10.0, "loss": 2.5},
    ]
    s = report.run_summary(report.load_run(make_run(tmp_path, records)))
    assert s["last_loss"] == 2.5 and s["last_step"] == 3
    assert s["best_dev_spearman"] == 55.0 and s["best_step"] == 2
    assert s["wall_time_s"] == 9.0 and s["n_eval_events"] == 1


def test_unix_timestamps_become_seconds_since_first_record(tmp_path: Path) -> None:
    t0 = 1_790_000_000.25  # what textcl's trainer writes: time.time()
    records = [
        {"event": "train", "step": 10, "epoch": 0.1, "time": t0, "loss": 3.0},
        {"event": "eval", "step": 20, "epoch": 0.2, "time": t0 + 7.5, "stsb_dev_spearman": 50.0},
        {"event": "train", "step": 30, "epoch": 0.3, "time": t0 + 12.0, "loss": 2.5},
    ]
    run = report.load_run(make_run(tmp_path, records))
    assert [r["time"] for r in run.records] == [0.0, 7.5, 12.0]
    assert report.run_summary(run)["wall_time_s"] == 12.0
    text = report.render_report_html(run)
    assert "<td>20</td><td>0.20</td><td>7.5</td><td>50.00</td>" in text
    assert report.relative_times(records[:0]) == []


def test_trainer_summary_results_json_is_not_taken_for_sts_results(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    summary = {"steps": 40, "best": {"step": 40, "stsb_dev_spearman": 87.0}, "final": {}}
    (run / "results.json").write_text(json.dumps(summary), encoding="utf-8")
    assert report.find_results(run) == []
    text = report.write_report(run).read_text(encoding="utf-8")
    assert "No STS results" in text


def test_report_html_escapes_config(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "config.json").write_text(json.dumps({"note": "<script>x</script>"}))
    text = report.write_report(run).read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;x&lt;/script&gt;" in text


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        report.load_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no metrics\.jsonl"):
        report.load_run(empty)
    run = make_run(tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write("{broken\n")
    n = len((run / "metrics.jsonl").read_text().splitlines())
    with pytest.raises(ValueError, match=rf"metrics\.jsonl:{n}: not valid JSON"):
        report.write_report(run)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tasks": {"sts12": {"pearson": 0.5}}}))
    with pytest.raises(ValueError, match=r"bad\.json: tasks\['sts12'\] has no numeric 'spearman'"):
        report.load_sts_results(bad)


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    res = tmp_path / "res.json"
    res.write_text(json.dumps(RESULTS))
    out = tmp_path / "out" / "rep.html"
    assert main(["report", str(run), "--output", str(out), "--results", str(res)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "<td>stsb</td><td>76.55</td>" in out.read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err


# ---------------------------------------------------------------------- evaluate_run / --sts
MINI_PAIRS = 160


@pytest.fixture
def mini_sts(tmp_path: Path, sts_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The first MINI_PAIRS real STS-B dev pairs in a SentEval-layout folder (the published
    pair count check is lifted for stsb dev only), so the tiny model encodes ~300 sentences
    instead of 3,000."""
    from textcl.evaluation import data

    lines = (sts_dir / "STSBenchmark" / "sts-dev.csv").read_text(encoding="utf-8").splitlines()
    root = tmp_path / "mini-sts"
    (root / "STSBenchmark").mkdir(parents=True)
    (root / "STSBenchmark" / "sts-dev.csv").write_text(
        "\n".join(lines[:MINI_PAIRS]) + "\n", encoding="utf-8"
    )
    monkeypatch.delitem(data.EXPECTED_PAIRS, ("stsb", "dev"))
    return root


def _save_encoder(model_dir: Path, target: Path, pooling: str) -> Path:
    from textcl import SentenceEncoder

    return SentenceEncoder.from_pretrained(model_dir, pooling=pooling).save(target)


def _oracle_stsb(model_dir: Path, sts: Path) -> dict[str, Any]:
    """STS-B dev Spearman ×100 and positive-pair cosines recomputed here: each side encoded
    on its own (no de-duplication), cosines pair by pair."""
    import numpy as np
    from scipy.stats import spearmanr

    from textcl import SentenceEncoder
    from textcl.evaluation.data import read_stsb_file

    enc = SentenceEncoder.load(model_dir)
    sub = read_stsb_file(sts / "STSBenchmark" / "sts-dev.csv")
    a = enc.encode(sub.sentences1, batch_size=16, show_progress=False)
    b = enc.encode(sub.sentences2, batch_size=16, show_progress=False)
    cos, pos = [], []
    for x, y, gold in zip(a.astype(np.float64), b.astype(np.float64), sub.scores, strict=True):
        c = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
        cos.append(c)
        if gold > 4.0:  # SimCSE's positives: gold score above 4, as alignment takes them
            pos.append(c)
    return {"spearman": float(spearmanr(cos, sub.scores)[0]) * 100, "pos": pos, "n": len(cos)}


def _run_with(tmp_path: Path, tiny_model_dir: Path, **encoders: str) -> Path:
    """A run folder whose best/ and/or final/ hold the tiny encoder with the given pooling."""
    run = make_run(tmp_path)
    for name in ("best", "final"):
        (run / name).rmdir()
        if name in encoders:
            _save_encoder(tiny_model_dir, run / name, encoders[name])
    return run


def test_evaluate_run_matches_oracle(tmp_path: Path, tiny_model_dir: Path, mini_sts: Path) -> None:
    import numpy as np

    run = _run_with(tmp_path, tiny_model_dir, final="mean")
    path, (pos, rand), source = evaluate_run(run, split="dev", data_dir=mini_sts)
    assert path == run / "sts_results.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    oracle = _oracle_stsb(run / "final", mini_sts)
    stsb = saved["tasks"]["stsb"]
    assert stsb["n_pairs"] == oracle["n"] == MINI_PAIRS
    assert stsb["spearman"] == pytest.approx(oracle["spearman"], abs=1e-3)
    assert saved["model"] == "run/final" and saved["pooling"] == "mean"
    assert len(saved["predictions"]["stsb"]["pred"]) == oracle["n"]
    assert len(oracle["pos"]) >= 10
    np.testing.assert_allclose(pos, oracle["pos"], atol=1e-4)
    assert rand.shape == pos.shape and np.isfinite(rand).all()
    assert f"{len(pos)} pairs with gold score > 4" in source and "run/final" in source
    # One threshold with alignment: pairs at exactly 4.0 are no positives (6 in this data).
    from textcl.evaluation.data import read_stsb_file

    gold = read_stsb_file(mini_sts / "STSBenchmark" / "sts-dev.csv").scores
    assert len(pos) == int(positive_mask(gold).sum()) == int((gold > 4).sum())
    assert int((gold == 4.0).sum()) > 0
    assert not [p for p in run.iterdir() if ".tmp" in p.name]  # no temp file left


def test_evaluate_run_prefers_best_and_custom_output(
    tmp_path: Path, tiny_model_dir: Path, mini_sts: Path
) -> None:
    run = _run_with(tmp_path, tiny_model_dir, best="mean", final="cls")
    out = tmp_path / "elsewhere" / "res.json"
    path, _, _ = evaluate_run(run, tasks="stsb", split="dev", data_dir=mini_sts, output=out)
    assert path == out and not (run / "sts_results.json").exists()
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["model"] == "run/best" and saved["pooling"] == "mean"
    oracle = _oracle_stsb(run / "best", mini_sts)
    assert saved["tasks"]["stsb"]["spearman"] == pytest.approx(oracle["spearman"], abs=1e-3)


def test_evaluate_run_without_encoder(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "best").rmdir()
    (run / "final").rmdir()
    with pytest.raises(FileNotFoundError, match="neither best/ nor final/"):
        evaluate_run(run)


def test_cli_report_sts_end_to_end(
    tmp_path: Path, tiny_model_dir: Path, mini_sts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_with(tmp_path, tiny_model_dir, best="mean")
    argv = ["report", str(run), "--sts", "--split", "dev", "--data", str(mini_sts)]
    assert main(argv) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == run / "report.html"
    text = out.read_text(encoding="utf-8")
    saved = json.loads((run / "sts_results.json").read_text(encoding="utf-8"))
    stsb = saved["tasks"]["stsb"]
    # evaluate_sts stores ×100 and a numeric average (+ average_pearson).
    row = f"<td>stsb</td><td>{stsb['spearman']:.2f}</td><td>{stsb['pearson']:.2f}</td>"
    assert row + f"<td>{stsb['n_pairs']}</td>" in text
    avg = f"<td>{saved['average']:.2f}</td><td>{saved['average_pearson']:.2f}</td>"
    assert avg in text
    assert "Predicted vs gold similarity" in text
    assert "Cosine similarity of positive vs random pairs" in text
    assert "No STS results" not in text
    pngs = embedded_pngs(text)
    assert len(pngs) == 4  # curves, alignment-uniformity, STS scatter, similarity histogram
    for png in pngs:
        assert_decodes_as_png(png)
