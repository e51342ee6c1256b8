"""textcl.plots: every plot function writes a non-empty PNG (Agg, no pyplot state); the data
helpers are checked against numpy oracles; bad input gets clear errors."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from textcl import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


T0 = 1_790_000_000.0
"""Records carry Unix timestamps, as textcl's trainer writes them."""


def synthetic_records(
    n_train: int = 60, eval_every: int = 20, with_alignment: bool = True
) -> list[dict[str, Any]]:
    """A plausible metrics log: decaying loss, rising dev Spearman, best flags."""
    rng = np.random.default_rng(0)
    records: list[dict[str, Any]] = []
    best = -math.inf
    for step in range(1, n_train + 1):
        records.append(
            {
                "event": "train",
                "step": step,
                "epoch": step / n_train,
                "time": T0 + 0.5 * step,
                "loss": float(2.0 * math.exp(-step / 30) + 0.05 * rng.random()),
                "lr": 3e-5,
                "sentences_per_s": 100.0 + step,
            }
        )
        if step % eval_every == 0:
            sp = 60.0 + 10 * (1 - math.exp(-step / 40))
            rec: dict[str, Any] = {
                "event": "eval",
                "step": step,
                "epoch": step / n_train,
                "time": T0 + 0.5 * step + 0.1,
                "stsb_dev_spearman": sp,
                "best": sp > best,
            }
            best = max(best, sp)
            if with_alignment:
                rec["alignment"] = 0.2 + 0.001 * step
                rec["uniformity"] = -1.5 - 0.01 * step
            records.append(rec)
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 2000, f"{path} is suspiciously small ({len(data)} bytes)"
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100
        # Not a blank canvas: more than a handful of distinct colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10


# ---------------------------------------------------------------------- metrics log
def test_read_metrics_round_trip_and_blank_lines(tmp_path: Path) -> None:
    recs = synthetic_records()
    path = write_jsonl(tmp_path / "metrics.jsonl", recs)
    path.write_text(path.read_text() + "\n\n", encoding="utf-8")
    assert plots.read_metrics(path) == recs
    assert plots.read_metrics(tmp_path) == recs  # the run folder works too


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"event": "train", "step": 3, "loss": 1.0', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"step": 3, "loss": 1.0}', "'event'"),
        ('{"event": "train", "step": "3"}', "'step'"),
        ('{"event": "train", "step": true}', "'step'"),
    ],
)
def test_read_metrics_malformed_line_names_file_and_line(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    path = write_jsonl(tmp_path / "metrics.jsonl", synthetic_records(n_train=4, eval_every=2))
    lines = path.read_text().splitlines()
    lines.insert(2, bad_line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"metrics\.jsonl:3: .*{message}"):
        plots.read_metrics(path)


def test_read_metrics_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics log not found"):
        plots.read_metrics(tmp_path / "nope.jsonl")


def test_metric_series_filters_sorts_and_later_record_wins() -> None:
    recs = [
        {"event": "train", "step": 2, "loss": 2.0},
        {"event": "train", "step": 1, "loss": 1.0},
        {"event": "eval", "step": 2, "loss": 99.0},  # other event: ignored
        {"event": "train", "step": 3, "loss": None},  # no value: skipped
        {"event": "train", "step": 4, "loss": float("nan")},  # non-finite: skipped
        {"event": "train", "step": 2, "loss": 5.0},  # resumed run logs step 2 again
    ]
    steps, values = plots.metric_series(recs, "loss", "train")
    np.testing.assert_array_equal(steps, [1, 2])
    np.testing.assert_array_equal(values, [1.0, 5.0])


def test_moving_average_matches_loop() -> None:
    v = np.random.default_rng(1).random(37)
    got = plots._moving_average(v, 5)
    want = [v[max(0, i - 4) : i + 1].mean() for i in range(len(v))]
    np.testing.assert_allclose(got, want)


# ---------------------------------------------------------------------- plots
def test_no_global_matplotlib_state_and_pngs(tmp_path: Path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    recs = synthetic_records()
    fig = plots.plot_training_curves(recs, out=tmp_path / "curves.png")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 4
    assert_png(tmp_path / "curves.png")
    assert matplotlib.get_backend() == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_training_curves_from_path_skips_missing_panels(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "metrics.jsonl", synthetic_records(with_alignment=False))
    fig = plots.plot_training_curves(path, out=tmp_path / "c.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["training loss", "STS-B dev Spearman ×100"]
    assert plots.available_curves(path) == ["loss", "stsb_dev_spearman"]
    assert_png(tmp_path / "c.png")
    # The plotted loss line holds exactly the logged values.
    loss_ax = fig.axes[0]
    steps, values = plots.metric_series(plots.read_metrics(path), "loss", "train")
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), values)
    np.testing.assert_array_equal(loss_ax.lines[0].get_xdata(), steps)


def test_training_curves_without_data_or_unknown_key() -> None:
    with pytest.raises(ValueError, match="no data to plot"):
        plots.plot_training_curves([{"event": "train", "step": 1, "lr": 1e-5}])
    with pytest.raises(ValueError, match="unknown curve"):
        plots.plot_training_curves(synthetic_records(), keys=["accuracy"])


def test_alignment_uniformity_plane(tmp_path: Path) -> None:
    pts = {"BERT": (0.11, -1.2, 48.0), "SimCSE": (0.20, -2.4, 76.0), "SBERT": (0.15, -2.0, 74.0)}
    fig = plots.plot_alignment_uniformity(pts, out=tmp_path / "au.png")
    assert_png(tmp_path / "au.png")
    offsets = fig.axes[0].collections[0].get_offsets()
    # x = uniformity, y = alignment.
    np.testing.assert_allclose(np.asarray(offsets), [[-1.2, 0.11], [-2.4, 0.20], [-2.0, 0.15]])
    assert len(fig.axes) == 2  # coloured by score: a colour bar
    traj = [(f"step {i}", (0.1 + 0.01 * i, -1.0 - 0.1 * i)) for i in range(5)]
    fig2 = plots.plot_alignment_uniformity(traj, out=tmp_path / "traj.png", connect=True)
    assert_png(tmp_path / "traj.png")
    assert len(fig2.axes) == 1


@pytest.mark.parametrize(
    ("points", "exc", "message"),
    [
        ({}, ValueError, "no points"),
        ({"a": (0.1,)}, ValueError, "2 or 3 finite numbers"),
        ({"a": (0.1, float("nan"))}, ValueError, "2 or 3 finite numbers"),
        ([("a", 0.1, -1.0)], TypeError, "expected \\(label"),
    ],
)
def test_alignment_uniformity_bad_points(points: Any, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        plots.plot_alignment_uniformity(points)


def test_sts_scatter_title_matches_scipy(tmp_path: Path) -> None:
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 200)
    pred = gold / 5 + rng.normal(0, 0.2, 200)
    fig = plots.plot_sts_scatter(pred, gold, task="STSBenchmark", out=tmp_path / "s.png")
    assert_png(tmp_path / "s.png")
    title = fig.axes[0].get_title()
    assert f"Spearman {spearmanr(pred, gold)[0] * 100:.2f}" in title
    assert f"Pearson {pearsonr(pred, gold)[0] * 100:.2f}" in title
    assert "n=200" in title
    preds = {t: {"pred": pred.tolist(), "gold": gold.tolist()} for t in ("sts12", "sts13", "sts14")}
    fig = plots.plot_sts_scatters(preds, out=tmp_path / "grid.png", ncols=2)
    assert_png(tmp_path / "grid.png")
    assert sum(ax.get_visible() for ax in fig.axes) == 3


def test_sts_scatter_bad_input() -> None:
    with pytest.raises(ValueError, match="3 predictions but 2 gold"):
        plots.plot_sts_scatter([0.1, 0.2, 0.3], [1.0, 2.0], task="x")
    with pytest.raises(ValueError, match="'pred' and 'gold'"):
        plots.plot_sts_scatters({"sts12": {"pred": [0.1, 0.2]}})
    with pytest.raises(ValueError, match="no STS predictions"):
        plots.plot_sts_scatters({})


def test_similarity_distribution(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pos, rnd = rng.normal(0.7, 0.1, 300), rng.normal(0.1, 0.1, 300)
    fig = plots.plot_similarity_distribution(pos, rnd, out=tmp_path / "d.png")
    assert_png(tmp_path / "d.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [
        f"positive pairs: mean {pos.mean():.3f} (n=300)",
        f"random pairs: mean {rnd.mean():.3f} (n=300)",
    ]
    with pytest.raises(ValueError, match="rand_sims is empty"):
        plots.plot_similarity_distribution(pos, [])


def test_plots_draw_and_never_encode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plots.py runs no model: with every way of running one booby-trapped (any torch module
    call; loading or encoding with a SentenceEncoder), every plot function still draws from
    its data alone and writes a real PNG with the expected axes, lines and points."""
    import torch

    from textcl import SentenceEncoder

    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a plot ran a model")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_model)
    for name in ("encode", "from_pretrained", "load"):
        monkeypatch.setattr(SentenceEncoder, name, no_model)
    with pytest.raises(AssertionError, match="ran a model"):  # the trap is armed
        torch.nn.Identity()(torch.zeros(1))

    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 120)
    pred = gold / 5 + rng.normal(0, 0.2, 120)
    figs = {
        "curves": plots.plot_training_curves(synthetic_records(), out=tmp_path / "curves.png"),
        "au": plots.plot_alignment_uniformity(
            {"a": (0.1, -1.0, 50.0), "b": (0.2, -2.0, 70.0)}, out=tmp_path / "au.png"
        ),
        "scatter": plots.plot_sts_scatter(pred, gold, task="stsb", out=tmp_path / "scatter.png"),
        "grid": plots.plot_sts_scatters(
            {t: {"pred": pred, "gold": gold} for t in ("sts12", "sts13")},
            out=tmp_path / "grid.png",
        ),
        "dist": plots.plot_similarity_distribution(
            rng.normal(0.7, 0.1, 80), rng.normal(0.1, 0.1, 80), out=tmp_path / "dist.png", bins=20
        ),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{k}.png" for k in figs)
    for name in figs:
        assert_png(tmp_path / f"{name}.png")
    # What was drawn: loss (raw + moving average), STS (values + best markers), alignment,
    # uniformity; one point per model; one point per STS pair; two histograms of 20 bars and
    # their two mean lines.
    curves = [ax for ax in figs["curves"].axes if ax.get_visible()]
    assert [len(ax.lines) for ax in curves] == [2, 2, 1, 1]
    assert len(figs["au"].axes[0].collections[0].get_offsets()) == 2
    assert len(figs["scatter"].axes[0].collections[0].get_offsets()) == 120
    assert [
        len(ax.collections[0].get_offsets()) for ax in figs["grid"].axes if ax.get_visible()
    ] == [
        120,
        120,
    ]
    dist = figs["dist"].axes[0]
    assert len(dist.patches) == 40 and len(dist.lines) == 2
    # No encoding helper lives here (it is textcl.evaluation.runs.pair_cosine_similarities).
    assert not hasattr(plots, "pair_cosine_similarities")


def test_saved_png_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        plots.plot_similarity_distribution([0.5, 0.6], [0.1, 0.2], out=tmp_path / "d.png")
    finally:
        os.umask(old)
    assert (tmp_path / "d.png").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["d.png"]


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"textcl\[plot\]"):
        plots.plot_similarity_distribution([0.5, 0.6], [0.1, 0.2])
