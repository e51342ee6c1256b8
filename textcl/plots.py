"""The usual pictures of sentence embeddings and their training runs (matplotlib, optional).

Every ``plot_*`` function takes data (a path or loaded records / arrays), builds a fresh
:class:`matplotlib.figure.Figure` (no ``pyplot`` state, no backend switch: nothing global
changes), returns it, and also writes a PNG when ``out`` is given (atomically, through
:mod:`textcl.io`). Plots draw: they never run a model (the similarities of
:func:`plot_similarity_distribution` come from
:func:`textcl.evaluation.runs.pair_cosine_similarities`). Install the extra with ``pip install 'textcl[plot]'``.

- :func:`plot_training_curves` — loss, STS-B dev Spearman, alignment and uniformity against
  the step, from a run's ``metrics.jsonl``.
- :func:`plot_alignment_uniformity` — the alignment-uniformity plane of several checkpoints or
  models (Wang & Isola 2020; SimCSE, Gao et al. 2021, Figures 2 and 3).
- :func:`plot_sts_scatter` / :func:`plot_sts_scatters` — predicted cosine vs gold score per
  STS task.
- :func:`plot_similarity_distribution` — cosine similarities of positive pairs vs random
  pairs (anisotropy: a squeezed, high random-pair distribution).

Data helpers that need no matplotlib: :func:`read_metrics`, :func:`metric_series`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textcl.errors import CorruptFileError
from textcl.io import PathLike, atomic_write_bytes, is_number

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MetricsSource = PathLike | Iterable[Mapping[str, Any]]

TRAINING_CURVES: tuple[tuple[str, str, str], ...] = (
    ("loss", "train", "training loss"),
    ("stsb_dev_spearman", "eval", "STS-B dev Spearman ×100"),
    ("alignment", "eval", "alignment (lower is better)"),
    ("uniformity", "eval", "uniformity (lower is better)"),
)
"""``(key, event, axis title)`` of the panels :func:`plot_training_curves` draws, in order."""

DEFAULT_DPI = 110

_MISSING_MATPLOTLIB = (
    "textcl's plots need matplotlib, which is not installed: pip install 'textcl[plot]'"
)


# ---------------------------------------------------------------------- matplotlib plumbing
def require_matplotlib() -> None:
    """Raise ``ImportError`` naming the ``plot`` extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(_MISSING_MATPLOTLIB) from e


def new_figure(width: float, height: float) -> Figure:
    """A fresh Agg-backed figure, independent of ``pyplot`` and of the active backend."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (:func:`textcl.io.atomic_write_bytes`)."""
    return atomic_write_bytes(path, figure_to_png_bytes(fig, dpi))


def figure_to_png_bytes(fig: Figure, dpi: int = DEFAULT_DPI) -> bytes:
    """The PNG encoding of ``fig``."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _finish(fig: Figure, out: PathLike | None) -> Figure:
    if out is not None:
        save_figure(fig, out)
    return fig


# ---------------------------------------------------------------------- metrics log
def read_metrics(path: PathLike) -> list[dict[str, Any]]:
    """Read a run's ``metrics.jsonl``: one JSON object per line, blank lines skipped.

    Each record must be an object with an ``"event"`` (string) and an integer ``"step"``.
    Raises ``FileNotFoundError`` for a missing file and
    :class:`~textcl.errors.CorruptFileError` (a ``ValueError``) naming the file and line
    number for a malformed line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"metrics log not found: {path}")
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorruptFileError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}): {line[:80]!r}"
                ) from None
            try:
                _check_record(rec, f"{path}:{lineno}")
            except ValueError as e:
                raise CorruptFileError(str(e)) from None
            records.append(rec)
    return records


def _check_record(rec: object, where: str) -> None:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if not isinstance(rec.get("event"), str):
        raise ValueError(f"{where}: missing or non-string field 'event'")
    step = rec.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"{where}: missing or non-integer field 'step' (got {step!r})")


def _as_records(metrics: MetricsSource) -> list[dict[str, Any]]:
    if isinstance(metrics, str | os.PathLike):
        return read_metrics(metrics)
    records = [dict(r) for r in metrics]
    for i, rec in enumerate(records):
        _check_record(rec, f"metrics record {i}")
    return records


def metric_series(
    records: Iterable[Mapping[str, Any]], key: str, event: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``key`` over the records (of ``event`` when given), by step.

    Records without a finite numeric ``key`` are skipped. When a step appears more than once
    (a resumed run logs again from its checkpoint) the later record wins.
    """
    by_step: dict[int, float] = {}
    for rec in records:
        if event is not None and rec.get("event") != event:
            continue
        v = rec.get(key)
        if isinstance(v, int | float) and is_number(v):
            by_step[int(rec["step"])] = float(v)
    steps = np.array(sorted(by_step), dtype=np.int64)
    values = np.array([by_step[int(s)] for s in steps], dtype=np.float64)
    return steps, values


def available_curves(metrics: MetricsSource) -> list[str]:
    """Keys of :data:`TRAINING_CURVES` that have at least one value in ``metrics``."""
    records = _as_records(metrics)
    return [key for key, event, _ in TRAINING_CURVES if len(metric_series(records, key, event)[0])]


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


# ---------------------------------------------------------------------- training curves
def plot_training_curves(
    metrics: MetricsSource,
    out: PathLike | None = None,
    keys: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Training curves against the step: one panel per key of :data:`TRAINING_CURVES`.

    ``metrics`` is a ``metrics.jsonl`` path (or its run folder) or the loaded records.
    Panels without data are left out; ``ValueError`` when none has data. The loss panel shows
    the raw values and, from 20 points on, a trailing moving average; the STS panel marks
    evaluations logged with ``"best": true``.
    """
    records = _as_records(metrics)
    known = {k: (ev, label) for k, ev, label in TRAINING_CURVES}
    wanted = list(keys) if keys is not None else list(known)
    for k in wanted:
        if k not in known:
            raise ValueError(f"unknown curve {k!r}: expected one of {sorted(known)}")
    panels = [(k, *known[k]) for k in wanted if len(metric_series(records, k, known[k][0])[0])]
    if not panels:
        raise ValueError(f"no data to plot: the metrics have none of {wanted}")
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(5.0 * ncols, 3.2 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax, (key, event, label) in zip(axes, panels, strict=False):
        steps, values = metric_series(records, key, event)
        if key == "loss" and len(values) >= 20:
            ax.plot(steps, values, color="C0", alpha=0.35, linewidth=0.8, label="loss")
            window = max(2, len(values) // 20)
            ax.plot(
                steps,
                _moving_average(values, window),
                color="C0",
                linewidth=1.6,
                label=f"mean of last {window}",
            )
            ax.legend(loc="upper right", fontsize=8)
        else:
            ax.plot(steps, values, marker="o" if len(values) <= 50 else None, markersize=3)
        if key == "stsb_dev_spearman":
            best = [
                (int(r["step"]), float(r[key]))
                for r in records
                if r.get("event") == "eval" and r.get("best") is True and is_number(r.get(key))
            ]
            if best:
                bs, bv = zip(*best, strict=True)
                ax.plot(
                    bs, bv, linestyle="none", marker="*", markersize=11, color="C3", label="best"
                )
                ax.legend(loc="lower right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _finish(fig, out)


# ---------------------------------------------------------------------- alignment-uniformity
def _check_points(
    points: Mapping[str, Sequence[float]] | Sequence[tuple[str, Sequence[float]]],
) -> list[tuple[str, float, float, float | None]]:
    items = list(points.items()) if isinstance(points, Mapping) else list(points)
    if not items:
        raise ValueError("no points to plot")
    out: list[tuple[str, float, float, float | None]] = []
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise TypeError(f"expected (label, (alignment, uniformity[, score])), got {item!r:.80}")
        label, vals = item
        vals = list(vals)
        if len(vals) not in (2, 3) or not all(is_number(v) for v in vals):
            raise ValueError(
                f"point {label!r}: expected 2 or 3 finite numbers "
                f"(alignment, uniformity[, score]), got {vals!r:.80}"
            )
        score = float(vals[2]) if len(vals) == 3 else None
        out.append((str(label), float(vals[0]), float(vals[1]), score))
    return out


def plot_alignment_uniformity(
    points: Mapping[str, Sequence[float]] | Sequence[tuple[str, Sequence[float]]],
    out: PathLike | None = None,
    connect: bool = False,
    title: str | None = None,
    score_label: str = "STS score",
) -> Figure:
    """The alignment-uniformity plane: x = uniformity, y = alignment (lower is better for both).

    ``points`` maps a label (a model, a checkpoint) to ``(alignment, uniformity)`` or
    ``(alignment, uniformity, score)``; when every point has a score the points are coloured
    by it (as in SimCSE's Figure 3). ``connect=True`` joins the points in order with arrows
    (a training trajectory, as in SimCSE's Figure 2).
    """
    pts = _check_points(points)
    fig = new_figure(5.6, 4.4)
    ax: Axes = fig.subplots()
    xs = np.array([p[2] for p in pts])
    ys = np.array([p[1] for p in pts])
    scores = [p[3] for p in pts]
    if connect and len(pts) > 1:
        for i in range(len(pts) - 1):
            ax.annotate(
                "",
                xy=(xs[i + 1], ys[i + 1]),
                xytext=(xs[i], ys[i]),
                arrowprops={"arrowstyle": "->", "color": "0.55", "lw": 1.0},
            )
    if all(s is not None for s in scores):
        sc = ax.scatter(xs, ys, c=np.array(scores, dtype=float), cmap="viridis", s=60, zorder=3)
        fig.colorbar(sc, ax=ax, label=score_label)
    else:
        ax.scatter(xs, ys, s=60, color="C0", zorder=3)
    # Label every point when few; otherwise the first and the last only.
    to_label = range(len(pts)) if len(pts) <= 12 else (0, len(pts) - 1)
    for i in to_label:
        ax.annotate(
            pts[i][0],
            (xs[i], ys[i]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    # Pad the limits so that labels stay inside.
    for lim, vals in ((ax.set_xlim, xs), (ax.set_ylim, ys)):
        span = float(vals.max() - vals.min()) or max(abs(float(vals.mean())) * 0.1, 0.05)
        lim(float(vals.min()) - 0.15 * span, float(vals.max()) + 0.25 * span)
    ax.set_xlabel(r"$\ell_{\mathrm{uniform}}$ (lower is better)")
    ax.set_ylabel(r"$\ell_{\mathrm{align}}$ (lower is better)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "alignment vs uniformity", fontsize=10)
    return _finish(fig, out)


# ---------------------------------------------------------------------- STS scatter
def _check_pred_gold(
    pred: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    g = np.asarray(gold, dtype=np.float64).ravel()
    if len(p) != len(g):
        raise ValueError(f"{what}: {len(p)} predictions but {len(g)} gold scores")
    if len(p) < 2:
        raise ValueError(f"{what}: need at least 2 pairs, got {len(p)}")
    if not (np.isfinite(p).all() and np.isfinite(g).all()):
        raise ValueError(f"{what}: predictions and gold scores must be finite numbers")
    return p, g


def _draw_sts_scatter(ax: Axes, p: np.ndarray, g: np.ndarray, task: str) -> None:
    from scipy.stats import pearsonr, spearmanr

    rho = float(spearmanr(p, g)[0]) * 100
    r = float(pearsonr(p, g)[0]) * 100
    alpha = float(min(0.8, max(0.08, 60.0 / math.sqrt(len(p)) / 4)))
    ax.scatter(g, p, s=6, alpha=alpha, color="C0", edgecolors="none")
    ax.set_xlabel("gold score")
    ax.set_ylabel("predicted cosine")
    ax.set_title(f"{task}  Spearman {rho:.2f}  Pearson {r:.2f}  (n={len(p)})", fontsize=9)
    ax.grid(True, alpha=0.3)


def plot_sts_scatter(
    pred: Sequence[float] | np.ndarray,
    gold: Sequence[float] | np.ndarray,
    task: str = "STS",
    out: PathLike | None = None,
) -> Figure:
    """Predicted cosine similarity (y) against the gold score (x) of one STS task, with its
    Spearman and Pearson correlations (×100) in the title."""
    p, g = _check_pred_gold(pred, gold, task)
    fig = new_figure(4.6, 3.8)
    _draw_sts_scatter(fig.subplots(), p, g, task)
    return _finish(fig, out)


def plot_sts_scatters(
    predictions: Mapping[str, Mapping[str, Sequence[float]]],
    out: PathLike | None = None,
    ncols: int = 4,
) -> Figure:
    """One predicted-vs-gold panel per task: ``{task: {"pred": [...], "gold": [...]}}`` (the
    ``"predictions"`` of an STS results JSON)."""
    if not predictions:
        raise ValueError("no STS predictions to plot")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    data = []
    for task, d in predictions.items():
        if not isinstance(d, Mapping) or "pred" not in d or "gold" not in d:
            raise ValueError(f"predictions[{task!r}] must have 'pred' and 'gold' lists")
        data.append((task, *_check_pred_gold(d["pred"], d["gold"], task)))
    ncols = min(ncols, len(data))
    nrows = math.ceil(len(data) / ncols)
    fig = new_figure(4.2 * ncols, 3.5 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (task, p, g) in zip(axes, data, strict=False):
        _draw_sts_scatter(ax, p, g, task)
    for ax in axes[len(data) :]:
        ax.set_visible(False)
    return _finish(fig, out)


# ---------------------------------------------------------------------- similarity distribution
def plot_similarity_distribution(
    pos_sims: Sequence[float] | np.ndarray,
    rand_sims: Sequence[float] | np.ndarray,
    out: PathLike | None = None,
    labels: tuple[str, str] = ("positive pairs", "random pairs"),
    title: str | None = None,
    bins: int = 50,
) -> Figure:
    """Histograms of cosine similarities of positive pairs vs random pairs, with their means.

    An anisotropic embedding space shows random pairs bunched at a high similarity; a good
    space separates the two distributions.
    """
    pos = np.asarray(pos_sims, dtype=np.float64).ravel()
    rnd = np.asarray(rand_sims, dtype=np.float64).ravel()
    for name, a in (("pos_sims", pos), ("rand_sims", rnd)):
        if len(a) == 0:
            raise ValueError(f"{name} is empty")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds non-finite values")
    lo = min(-1.0, float(min(pos.min(), rnd.min())))
    hi = max(1.0, float(max(pos.max(), rnd.max())))
    edges = np.linspace(lo, hi, bins + 1)
    fig = new_figure(5.6, 3.6)
    ax: Axes = fig.subplots()
    for a, label, color in ((pos, labels[0], "C2"), (rnd, labels[1], "C7")):
        ax.hist(
            a,
            bins=edges.tolist(),
            density=True,
            alpha=0.55,
            color=color,
            label=f"{label}: mean {a.mean():.3f} (n={len(a)})",
        )
        ax.axvline(float(a.mean()), color=color, linestyle="--", linewidth=1.2)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "cosine similarity: positive vs random pairs", fontsize=10)
    return _finish(fig, out)
