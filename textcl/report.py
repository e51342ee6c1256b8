"""A self-contained HTML report of a training run (``textcl report RUN_DIR``).

Reads the run folder's fixed formats — ``config.json``, ``metrics.jsonl`` (train and eval
events), ``checkpoints/step-*/``, ``best/``, ``final/`` — plus optional STS results JSON
files (``textcl eval --output``, ``textcl report --sts``), and writes one HTML file with every picture embedded as
a base64 PNG: the config, a summary, the eval metrics table, the training curves, the
alignment-uniformity trajectory of the evaluated checkpoints, the STS table and, when the
results carry predictions, the predicted-vs-gold scatter plots. Sections without data say
so instead of failing.

The report renders what is stored, as stored: textcl stores correlations ×100 (STS results,
``stsb_dev_spearman``) and every eval record names the scale of its metrics (``scales``);
no value is rescaled by guessing. An ``epoch`` logged as a number with a fraction (``0.54``)
is shown as such; an integer ``epoch`` is the index of the epoch in progress (a fraction was
not logged) and is shown as that index, never as ``0.00``. Each eval record's ``best`` says
"a new best at the time": the report marks only the run's best evaluation (``results.json``'s
``best.step``, else the last record flagged ``best``). Evaluating a model now is
:func:`textcl.evaluation.runs.evaluate_run`'s job, not the report's.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textcl.errors import CorruptFileError
from textcl.io import PathLike, atomic_write_text, is_number, read_json, read_json_object
from textcl.plots import (
    available_curves,
    figure_to_png_bytes,
    plot_alignment_uniformity,
    plot_similarity_distribution,
    plot_sts_scatters,
    plot_training_curves,
    read_metrics,
)
from textcl.version import __version__

RUN_RESULTS_FILENAME = "results.json"
"""The trainer's end-of-run summary; the report reads its ``best.step``."""

RESULTS_FILENAMES: tuple[str, ...] = ("sts_results.json",)
"""STS results files picked up from the run folder when no ``results`` are given (not
``results.json``: that is the trainer's end-of-run summary, another format)."""

EVAL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("step", "step", "d"),
    ("epoch", "epoch", ".2f"),
    ("time", "time (s)", ".1f"),
    ("stsb_dev_spearman", "STS-B dev Spearman", ".2f"),
    ("alignment", "alignment", ".4f"),
    ("uniformity", "uniformity", ".4f"),
)
"""``(key, header, format)`` of the eval-metrics table; optional columns without data are dropped."""


@dataclass
class RunData:
    """What a run folder holds (see the module docstring)."""

    run_dir: Path
    config: dict[str, Any] | None
    records: list[dict[str, Any]]
    checkpoints: list[Path] = field(default_factory=list)
    best_dir: Path | None = None
    final_dir: Path | None = None
    results_best_step: int | None = None
    """``best.step`` of the run's ``results.json`` (None: no such file or no best)."""

    @property
    def best_eval_step(self) -> int | None:
        """The step of the run's best evaluation: ``results.json``'s when it names one of
        the eval records, else the last eval record flagged ``best`` (the trainer flags each
        new best, so the last flag is the best of the run); None when nothing is flagged."""
        steps = {int(r["step"]) for r in self.eval_records}
        if self.results_best_step is not None and self.results_best_step in steps:
            return self.results_best_step
        flagged = [int(r["step"]) for r in self.eval_records if r.get("best") is True]
        return flagged[-1] if flagged else None

    @property
    def train_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == "train"]

    @property
    def eval_records(self) -> list[dict[str, Any]]:
        """Eval events by step; a step logged twice (resumed run) keeps the later record."""
        by_step: dict[int, dict[str, Any]] = {}
        for r in self.records:
            if r.get("event") == "eval":
                by_step[int(r["step"])] = r
        return [by_step[s] for s in sorted(by_step)]


def relative_times(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with their ``time`` (the Unix timestamp textcl's trainer writes) turned into
    seconds since the first logged record."""
    times = [float(r["time"]) for r in records if is_number(r.get("time"))]
    if not times:
        return records
    t0 = min(times)
    return [{**r, "time": r["time"] - t0} if is_number(r.get("time")) else r for r in records]


def load_run(run_dir: PathLike) -> RunData:
    """Read a run folder. ``metrics.jsonl`` is required; ``config.json`` is optional.

    ``time`` values that are Unix timestamps become seconds since the first record
    (:func:`relative_times`), so the summary's wall time and the eval table read as durations.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl: not a textcl training run")
    config = None
    if (run_dir / "config.json").is_file():
        config = read_json_object(run_dir / "config.json", "run config")
    try:
        records = read_metrics(metrics)
    except UnicodeDecodeError as e:
        raise CorruptFileError(_decode_error_message(metrics, e)) from None
    ckpt_root = run_dir / "checkpoints"
    checkpoints = (
        sorted(p for p in ckpt_root.glob("step-*") if p.is_dir()) if ckpt_root.is_dir() else []
    )
    return RunData(
        run_dir=run_dir,
        config=config,
        records=relative_times(records),
        checkpoints=checkpoints,
        best_dir=run_dir / "best" if (run_dir / "best").is_dir() else None,
        final_dir=run_dir / "final" if (run_dir / "final").is_dir() else None,
        results_best_step=_results_best_step(run_dir / RUN_RESULTS_FILENAME),
    )


def _decode_error_message(path: Path, error: UnicodeDecodeError) -> str:
    """``path:LINE: not UTF-8 text ...`` for a file that failed to decode: the first line
    whose bytes are not UTF-8 (found by reading the file again as bytes)."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return (
                    f"{path}:{lineno}: not UTF-8 text (byte {raw[bad.start]:#04x} at column "
                    f"{bad.start + 1}): the file is damaged; remove or repair that line"
                )
    return f"{path}: not UTF-8 text ({error.reason})"


def _results_best_step(path: Path) -> int | None:
    """``best.step`` of a run's ``results.json`` (None when the file or the step is absent);
    :class:`~textcl.errors.CorruptFileError` naming the file and field when malformed."""
    if not path.is_file():
        return None
    data = read_json(path, "run results")
    best = data.get("best") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(best, dict | None):
        raise CorruptFileError(f"{path}: expected a JSON object with an object field 'best'")
    step = (best or {}).get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise CorruptFileError(f"{path}: field 'best.step' must be an integer, got {step!r}")
    return step


def format_epoch(value: object) -> str:
    """An ``epoch`` value for display: a float (fractional epochs, ``0.54``) with two
    decimals; an integer (the index of the epoch in progress, logged without its fraction)
    as ``index N``; anything else empty."""
    if isinstance(value, bool) or not is_number(value):
        return ""
    if isinstance(value, int):
        return f"index {value}"
    assert isinstance(value, float)  # is_number: an int or a float
    return f"{value:.2f}"


def load_sts_results(path: PathLike) -> dict[str, Any]:
    """Read an STS results JSON (``textcl eval --output``) and check its shape.

    Needs ``"tasks": {task: {"spearman": ..., ...}}``; ``ValueError`` naming the file and
    field otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STS results file not found: {path}")
    data = read_json(path, "STS results")
    check_sts_results(data, str(path))
    return dict(data)


def check_sts_results(data: object, source: str = "STS results") -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object")
    tasks = data.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"{source}: missing or empty field 'tasks'")
    for name, t in tasks.items():
        if not isinstance(t, Mapping) or not is_number(t.get("spearman")):
            raise ValueError(f"{source}: tasks[{name!r}] has no numeric 'spearman'")


def find_results(run_dir: PathLike) -> list[Path]:
    """STS results files (:data:`RESULTS_FILENAMES`) present in the run folder."""
    return [Path(run_dir) / n for n in RESULTS_FILENAMES if (Path(run_dir) / n).is_file()]


# ---------------------------------------------------------------------- formatting
def _fmt(v: object, spec: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else ""
    if is_number(v) and spec:
        assert isinstance(v, int | float)
        return format(int(v) if spec == "d" else v, spec)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _esc(v: object) -> str:
    return html.escape(str(v), quote=True)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def metric_label(key: str, records: Sequence[Mapping[str, Any]], name: str | None = None) -> str:
    """``name`` (default: the eval table's header of ``key``) with the scale the records
    declare for ``key`` (``scales``: ``×100`` for 100); no suffix when none is declared."""
    if name is None:
        name = next((h for k, h, _ in EVAL_COLUMNS if k == key), key)
    scales = {
        float(r["scales"][key])
        for r in records
        if isinstance(r.get("scales"), Mapping) and is_number(r["scales"].get(key))
    }
    if len(scales) != 1:
        return name if not scales else f"{name} (mixed scales)"
    scale = scales.pop()
    return name if scale == 1 else f"{name} ×{scale:g}"


# ---------------------------------------------------------------------- summary
def run_summary(run: RunData) -> dict[str, Any]:
    """Headline numbers of a run: last step/epoch/time, last train loss, best and last dev
    Spearman (with their steps). Missing data -> ``None``."""
    train = [r for r in run.train_records if is_number(r.get("loss"))]
    evals = [r for r in run.eval_records if is_number(r.get("stsb_dev_spearman"))]
    last = max(run.records, key=lambda r: int(r["step"])) if run.records else None
    best = None
    if evals:
        best_step = run.best_eval_step
        flagged = [r for r in evals if int(r["step"]) == best_step]
        best = flagged[-1] if flagged else max(evals, key=lambda r: r["stsb_dev_spearman"])
    primary = next(
        (
            r["primary_metric"]
            for r in reversed(run.eval_records)
            if isinstance(r.get("primary_metric"), str)
        ),
        None,
    )
    flagged_all = [r for r in run.eval_records if int(r["step"]) == run.best_eval_step]
    best_primary = flagged_all[-1] if primary and flagged_all else None
    return {
        "primary_metric": primary,
        "best_primary": best_primary.get(primary) if best_primary and primary else None,
        "best_primary_step": int(best_primary["step"]) if best_primary else None,
        "last_step": int(last["step"]) if last else None,
        "last_epoch": last.get("epoch") if last else None,
        "wall_time_s": max(
            (r["time"] for r in run.records if is_number(r.get("time"))), default=None
        ),
        "last_loss": train[-1]["loss"] if train else None,
        "last_loss_step": int(train[-1]["step"]) if train else None,
        "best_dev_spearman": best["stsb_dev_spearman"] if best else None,
        "best_step": int(best["step"]) if best else None,
        "last_dev_spearman": evals[-1]["stsb_dev_spearman"] if evals else None,
        "n_train_events": len(run.train_records),
        "n_eval_events": len(run.eval_records),
    }


# ---------------------------------------------------------------------- sections
def _summary_section(run: RunData, s: Mapping[str, Any]) -> str:
    sts = metric_label("stsb_dev_spearman", run.eval_records)
    rows = [
        ("last step", _fmt(s["last_step"], "d")),
        (
            "epoch (fraction not logged)"
            if isinstance(s["last_epoch"], int) and not isinstance(s["last_epoch"], bool)
            else "epochs",
            format_epoch(s["last_epoch"]),
        ),
        ("wall time (s)", _fmt(s["wall_time_s"], ".1f")),
        (
            "last training loss",
            f"{_fmt(s['last_loss'], '.4f')} (step {s['last_loss_step']})"
            if s["last_loss"] is not None
            else "not logged",
        ),
        (
            f"best {sts}",
            f"{_fmt(s['best_dev_spearman'], '.2f')} (step {s['best_step']})"
            if s["best_dev_spearman"] is not None
            else "not logged",
        ),
        (
            f"last {sts}",
            _fmt(s["last_dev_spearman"], ".2f")
            if s["last_dev_spearman"] is not None
            else "not logged",
        ),
        ("train / eval events", f"{s['n_train_events']} / {s['n_eval_events']}"),
    ]
    if s["primary_metric"] not in (None, "stsb_dev_spearman"):
        # best/ was chosen by the evaluator's own primary metric
        value = s["best_primary"]
        rows.insert(
            4,
            (
                f"best {metric_label(s['primary_metric'], run.eval_records)} (picks best/)",
                f"{_fmt(value)} (step {s['best_primary_step']})"
                if value is not None
                else "not logged",
            ),
        )
    rows += [
        ("checkpoints", ", ".join(p.name for p in run.checkpoints) or "none"),
        (
            "best/ and final/",
            ", ".join(n for n, p in (("best", run.best_dir), ("final", run.final_dir)) if p)
            or "none",
        ),
    ]
    return "<h2>Summary</h2>\n" + _table(["", ""], [(_esc(k), _esc(v)) for k, v in rows], "kv")


def _config_section(run: RunData) -> str:
    if run.config is None:
        return "<h2>Config</h2>\n" + _note("No config.json in the run folder.")
    rows = [
        (_esc(k), _esc(json.dumps(v) if not isinstance(v, str) else v))
        for k, v in _flatten(run.config)
    ]
    return "<h2>Config</h2>\n" + _table(["field", "value"], rows, "kv")


def _eval_section(run: RunData) -> str:
    evals = run.eval_records
    out = "<h2>Evaluation metrics</h2>\n"
    if not evals:
        return out + _note("No eval events in metrics.jsonl.")
    cols = [c for c in EVAL_COLUMNS if any(c[0] in r for r in evals)]
    missing = [c[1] for c in EVAL_COLUMNS if c not in cols]
    headers = [metric_label(c[0], evals, c[1]) for c in cols] + ["best"]
    best_step = run.best_eval_step
    rows = []
    for r in evals:
        cells = [
            _esc(format_epoch(r.get(k)) if k == "epoch" else _fmt(r.get(k), spec))
            for k, _, spec in cols
        ]
        cells.append("★" if int(r["step"]) == best_step else "")
        rows.append(cells)
    out += _table(headers, rows, "num")
    if missing:
        out += _note("Not logged: " + ", ".join(missing) + ".")
    return out


def _figure_html(make: Any, alt: str) -> str:
    return f"<figure>{_img(figure_to_png_bytes(make()), alt)}<figcaption>{_esc(alt)}</figcaption></figure>"


def _curves_section(run: RunData) -> str:
    out = "<h2>Training curves</h2>\n"
    present = available_curves(run.records)
    if not present:
        return out + _note("No loss, STS-B, alignment or uniformity values were logged.")
    out += _figure_html(
        lambda: plot_training_curves(run.records, title=run.run_dir.name),
        "training curves: " + ", ".join(present),
    )
    absent = [
        k for k in ("loss", "stsb_dev_spearman", "alignment", "uniformity") if k not in present
    ]
    if absent:
        out += _note("No values logged for: " + ", ".join(absent) + " (panels left out).")
    return out


def _alignment_section(run: RunData) -> str:
    out = "<h2>Alignment and uniformity of the evaluated checkpoints</h2>\n"
    evals = [
        r
        for r in run.eval_records
        if is_number(r.get("alignment")) and is_number(r.get("uniformity"))
    ]
    if not evals:
        return out + _note("Alignment and uniformity were not logged: no plot.")
    with_score = all(is_number(r.get("stsb_dev_spearman")) for r in evals)
    points = {
        f"step {r['step']}": (
            (r["alignment"], r["uniformity"], r["stsb_dev_spearman"])
            if with_score
            else (r["alignment"], r["uniformity"])
        )
        for r in evals
    }
    return out + _figure_html(
        lambda: plot_alignment_uniformity(
            points,
            connect=True,
            title="checkpoints in training order",
            score_label=metric_label("stsb_dev_spearman", evals),
        ),
        "alignment-uniformity trajectory (arrows: training order)",
    )


def _average(res: Mapping[str, Any]) -> Mapping[str, Any]:
    """The results' average as ``{"spearman", "pearson"}`` (what
    :func:`textcl.evaluation.evaluate_sts` writes: ``"average"``, ``"average_pearson"``)."""
    return {"spearman": res.get("average"), "pearson": res.get("average_pearson")}


def _sts_section(results: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    out = "<h2>STS results</h2>\n"
    if not results:
        return out + _note(
            "No STS results: pass --results FILE (from `textcl eval --output`) or --sts to evaluate best/ now."
        )
    tasks: list[str] = []
    for _, res in results:
        tasks += [t for t in res["tasks"] if t not in tasks]
    headers = ["task"] + [f"{name} Spearman ×100" for name, _ in results]
    headers += [f"{name} Pearson ×100" for name, _ in results] + ["pairs"]
    rows = []
    for t in tasks:
        sp, pe, n = [], [], ""
        for _, res in results:
            d = res["tasks"].get(t, {})
            sp.append(_fmt(d["spearman"], ".2f") if is_number(d.get("spearman")) else "")
            pe.append(_fmt(d["pearson"], ".2f") if is_number(d.get("pearson")) else "")
            n = n or _fmt(d.get("n_pairs"), "d")
        rows.append([_esc(t), *map(_esc, sp), *map(_esc, pe), _esc(n)])
    avg_sp, avg_pe = [], []
    for _, res in results:
        avg = _average(res)
        avg_sp.append(_fmt(avg["spearman"], ".2f") if is_number(avg.get("spearman")) else "")
        avg_pe.append(_fmt(avg["pearson"], ".2f") if is_number(avg.get("pearson")) else "")
    if any(avg_sp):
        rows.append([f"<b>{_esc('average')}</b>", *map(_esc, avg_sp), *map(_esc, avg_pe), ""])
    out += _table(headers, rows, "num")
    meta = []
    for name, res in results:
        bits = [
            f"{k}={res[k]}"
            for k in ("model", "pooling", "split", "aggregation", "data_source")
            if k in res
        ]
        meta.append(f"{name}: " + ", ".join(bits))
    out += "".join(_note(m) for m in meta)
    return out


def _scatter_section(results: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    with_preds = [
        (n, r) for n, r in results if isinstance(r.get("predictions"), Mapping) and r["predictions"]
    ]
    if not with_preds:
        return ""
    out = "<h2>Predicted vs gold similarity</h2>\n"
    for name, res in with_preds:
        out += _figure_html(
            lambda res=res: plot_sts_scatters(res["predictions"]),
            f"{name}: predicted cosine vs gold score",
        )
    return out


def _similarity_section(sims: tuple[Any, Any] | None, source: str) -> str:
    if sims is None:
        return ""
    return "<h2>Cosine similarity of positive vs random pairs</h2>\n" + _figure_html(
        lambda: plot_similarity_distribution(sims[0], sims[1], title=source), source
    )


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; text-align: left; }
table.num td { text-align: right; font-variant-numeric: tabular-nums; }
table.num td:first-child { text-align: left; }
table.kv td:first-child { font-weight: 600; white-space: nowrap; }
table.kv thead { display: none; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #666; font-size: .85em; }
p.note { color: #7a5c00; background: #fff8e1; padding: .3em .6em; border-radius: 3px; }
.meta { color: #666; font-size: .85em; }
"""


def render_report_html(
    run: RunData,
    results: Sequence[tuple[str, Mapping[str, Any]]] = (),
    similarity: tuple[Any, Any] | None = None,
    similarity_source: str = "",
    title: str | None = None,
) -> str:
    """The report of ``run`` as one HTML string (every image embedded)."""
    for name, res in results:
        check_sts_results(res, name)
    summary = run_summary(run)
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = title or f"textcl training report: {run.run_dir.name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="meta">run folder {_esc(run.run_dir.resolve())} · generated {now} · textcl {_esc(__version__)}</p>',
        _summary_section(run, summary),
        _curves_section(run),
        _eval_section(run),
        _alignment_section(run),
        _sts_section(results),
        _scatter_section(results),
        _similarity_section(similarity, similarity_source),
        _config_section(run),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(
    run_dir: PathLike,
    output: PathLike | None = None,
    results: Sequence[PathLike | tuple[str, Mapping[str, Any]]] | None = None,
    similarity: tuple[Any, Any] | None = None,
    similarity_source: str = "",
    title: str | None = None,
) -> Path:
    """Render the report of ``run_dir`` to ``output`` (default ``RUN_DIR/report.html``).

    ``results``: STS results files or ``(name, results dict)`` pairs; ``None`` picks up
    :data:`RESULTS_FILENAMES` from the run folder. ``similarity``: optional ``(pos, rand)``
    cosine arrays (see :func:`textcl.evaluation.runs.pair_cosine_similarities`). Returns
    the path.
    """
    run = load_run(run_dir)
    loaded: list[tuple[str, Mapping[str, Any]]] = []
    sources = find_results(run.run_dir) if results is None else list(results)
    for src in sources:
        if isinstance(src, tuple):
            loaded.append(src)
        else:
            loaded.append((Path(src).name, load_sts_results(src)))
    text = render_report_html(run, loaded, similarity, similarity_source, title)
    out = Path(output) if output is not None else run.run_dir / "report.html"
    atomic_write_text(out, text)
    return out
