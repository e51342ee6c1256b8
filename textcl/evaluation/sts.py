"""STS evaluation: Spearman / Pearson of embedding similarity against gold scores.

Conventions (all numbers are ×100):

* headline: Spearman correlation of the cosine similarity with the gold score;
* ``all`` aggregation: one correlation over the concatenated pairs of a task (a year of
  STS12-16), the SimCSE / MTEB convention, and the headline number;
* ``wmean`` / ``mean``: the pair-weighted / plain mean of the per-subset (per-file)
  correlations, SentEval's convention; reported beside it, labelled.

Every unique sentence of a run is encoded once, whatever the number of tasks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np

from textcl.encoder import SentenceEncoder
from textcl.evaluation.data import (
    TASKS,
    PathLike,
    STSTask,
    expand_tasks,
    load_sts_task,
)
from textcl.version import __version__

SIMILARITIES: tuple[str, ...] = ("cosine", "dot", "euclidean", "manhattan")
"""Pair scores: cosine (the headline), dot product, and negated euclidean / manhattan
distances (so that higher always means more similar)."""

AGGREGATION = "all"

Encoder = Callable[[list[str]], Any]


# ---------------------------------------------------------------------- metrics
def pair_similarity(a: np.ndarray, b: np.ndarray, kind: str = "cosine") -> np.ndarray:
    """Row-wise similarity of two ``(N, D)`` arrays -> ``(N,)`` float64.

    ``cosine`` (zero vectors give 0), ``dot``, ``euclidean`` / ``manhattan`` (negated
    distances).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N, D) arrays of the same shape, got {a.shape}, {b.shape}")
    if kind == "cosine":
        na = np.linalg.norm(a, axis=1)
        nb = np.linalg.norm(b, axis=1)
        denom = na * nb
        dots = np.einsum("ij,ij->i", a, b)
        return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    if kind == "dot":
        return np.einsum("ij,ij->i", a, b)
    if kind == "euclidean":
        return -np.linalg.norm(a - b, axis=1)
    if kind == "manhattan":
        return -np.abs(a - b).sum(axis=1)
    raise ValueError(f"unknown similarity {kind!r}: expected one of {', '.join(SIMILARITIES)}")


def correlations(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """``{"spearman", "pearson"}`` ×100 of ``pred`` against ``gold`` (both ``(N,)``).

    A constant input (correlation undefined) gives ``nan``.
    """
    from scipy.stats import pearsonr, spearmanr

    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gold, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 1:
        raise ValueError(f"pred and gold must be 1-D of the same length, got {p.shape}, {g.shape}")
    if len(p) < 2:
        raise ValueError(f"need at least 2 pairs to correlate, got {len(p)}")
    if np.ptp(p) == 0 or np.ptp(g) == 0:
        return {"spearman": math.nan, "pearson": math.nan}
    return {
        "spearman": float(spearmanr(p, g)[0]) * 100.0,
        "pearson": float(pearsonr(p, g)[0]) * 100.0,
    }


def aggregate_subsets(
    preds: Sequence[np.ndarray], golds: Sequence[np.ndarray], names: Sequence[str]
) -> dict[str, Any]:
    """Score one task from its subsets' predictions and gold scores.

    Returns ``spearman`` / ``pearson`` / ``n_pairs`` of the ``all`` aggregation (the
    concatenated pairs), ``wmean`` and ``mean`` (pair-weighted and plain means of the
    per-subset correlations) and ``subsets`` ``{name: {spearman, pearson, n_pairs}}``.
    """
    if not (len(preds) == len(golds) == len(names)) or not preds:
        raise ValueError("aggregate_subsets needs one prediction and gold array per subset name")
    overall = correlations(np.concatenate(preds), np.concatenate(golds))
    subsets = {
        name: {**correlations(p, g), "n_pairs": len(g)}
        for name, p, g in zip(names, preds, golds, strict=True)
    }
    weights = np.array([len(g) for g in golds], dtype=np.float64)
    out: dict[str, Any] = {
        **overall,
        "n_pairs": int(weights.sum()),
        "aggregation": AGGREGATION,
    }
    for label, w in (("wmean", weights), ("mean", np.ones_like(weights))):
        out[label] = {
            m: float(np.average([subsets[n][m] for n in names], weights=w))
            for m in ("spearman", "pearson")
        }
    out["subsets"] = subsets
    return out


# ---------------------------------------------------------------------- encoding
def _encode_fn(model: Any, batch_size: int, show_progress: bool | None = None) -> Encoder:
    if isinstance(model, SentenceEncoder):
        return lambda texts: model.encode(
            texts, batch_size=batch_size, normalize=False, show_progress=show_progress
        )
    encode = getattr(model, "encode", None)
    if callable(encode):  # e.g. a sentence-transformers model
        return lambda texts: encode(texts, batch_size=batch_size)
    if callable(model):
        return model
    raise TypeError(
        "model must be a SentenceEncoder, an object with encode(texts, batch_size=...) or a "
        f"callable list[str] -> (N, D) array, got {type(model).__name__}"
    )


def encode_unique(
    model: Any,
    sentences: Sequence[str],
    batch_size: int = 64,
    *,
    show_progress: bool | None = None,
) -> np.ndarray:
    """Embed ``sentences`` (already unique) in one call: ``(N, D)`` float32.

    ``model`` is a :class:`~textcl.SentenceEncoder` (encoded unnormalised, in eval mode), an
    object with ``encode(texts, batch_size=...)`` (a sentence-transformers model) or any
    callable ``list[str] -> (N, D)`` array / tensor. ``show_progress``: a
    :class:`~textcl.SentenceEncoder`'s progress bar (default: its own rule, no bar unless
    the ``textcl`` logger is at INFO).
    """
    fn = _encode_fn(model, batch_size, show_progress)
    out = fn(list(sentences))
    if hasattr(out, "detach"):  # a torch tensor
        out = out.detach().float().cpu().numpy()
    emb = np.asarray(out, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(sentences):
        raise ValueError(
            f"the model returned an array of shape {emb.shape} for {len(sentences)} sentences; "
            "expected (N, D)"
        )
    if not np.isfinite(emb).all():
        raise ValueError("the model returned non-finite embeddings (nan or inf)")
    return emb


# ---------------------------------------------------------------------- metadata
def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"textcl": __version__}
    for pkg in ("torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _model_info(model: Any) -> tuple[str, str | None]:
    if isinstance(model, SentenceEncoder):
        cfg = getattr(model.model, "config", None)
        name = getattr(cfg, "_name_or_path", "") or type(model.model).__name__
        return str(name), model.pooling.strategy
    name = getattr(model, "__qualname__", None) or type(model).__name__
    return str(name), None


# ---------------------------------------------------------------------- main entry
def evaluate_sts(
    model: Any,
    tasks: str | Sequence[str] = ("stsb",),
    split: str = "dev",
    data_dir: PathLike | None = None,
    batch_size: int = 64,
    return_predictions: bool = False,
    *,
    similarities: Sequence[str] = (),
    model_name: str | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on STS tasks; returns a JSON-ready dict (see below).

    Args:
        model: a :class:`~textcl.SentenceEncoder`, an object with
            ``encode(texts, batch_size=...)`` (e.g. a sentence-transformers model) or any
            callable ``list[str] -> (N, D)``.
        tasks: names from :data:`~textcl.evaluation.data.TASKS`, a comma-separated string,
            or ``"all"``.
        split: ``test`` / ``dev`` / ``train`` for ``stsb`` and ``sickr`` (``dev`` is SICK's
            trial file; ``all`` is MTEB's protocol: SICK-R on its three files together,
            STS-B on test); STS12-16 always use ``test``.
        data_dir: SentEval-layout folder (or a data root holding ``sts/``); default
            ``$TEXTCL_DATA``, else the Hugging Face hub.
        batch_size: sentences per forward pass.
        return_predictions: add each task's cosine ``predictions`` and ``gold`` lists, and a
            top-level ``predictions`` ``{task: {"pred", "gold"}}``.
        similarities: extra pair scores among ``dot``, ``euclidean``, ``manhattan`` (each task
            gets ``{name: {spearman, pearson}}``, ``all`` aggregation).
        model_name: the ``"model"`` field (default: the model's name or path).
        show_progress: a :class:`~textcl.SentenceEncoder`'s progress bar while encoding
            (default: none unless the ``textcl`` logger is at INFO; the CLI asks for one).

    Returns ``{"tasks": {task: {"spearman", "pearson", "n_pairs", "aggregation": "all",
    "wmean", "mean", "subsets", ...}}, "average", "average_pearson", "model", "pooling",
    "split", "aggregation", "data_source", "versions", "wall_time_s", "n_sentences"}``;
    correlations ×100. ``wmean`` / ``mean`` are ``None`` where subsets are unknown (hub
    copies of STS12-16).
    """
    start = time.perf_counter()
    names = expand_tasks(tasks)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    extra = [s for s in similarities if s != "cosine"]
    for s in extra:
        if s not in SIMILARITIES:
            raise ValueError(f"unknown similarity {s!r}: expected one of {', '.join(SIMILARITIES)}")
    _encode_fn(model, batch_size)  # type check before loading data

    loaded: list[STSTask] = [load_sts_task(t, split, data_dir) for t in names]

    # One encode call over the unique sentences of all tasks.
    index: dict[str, int] = {}
    for task in loaded:
        for s in (*task.sentences1, *task.sentences2):
            index.setdefault(s, len(index))
    emb = encode_unique(model, list(index), batch_size, show_progress=show_progress)

    results: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for task in loaded:
        preds, golds = [], []
        for sub in task.subsets:
            a = emb[[index[s] for s in sub.sentences1]]
            b = emb[[index[s] for s in sub.sentences2]]
            preds.append(pair_similarity(a, b, "cosine"))
            golds.append(sub.scores)
        res = aggregate_subsets(preds, golds, [s.name for s in task.subsets])
        if not task.has_subsets:
            res["wmean"] = res["mean"] = None
            res["subsets"] = {}
        res["split"] = task.split
        res["data_source"] = task.source
        if extra:
            a = emb[[index[s] for s in task.sentences1]]
            b = emb[[index[s] for s in task.sentences2]]
            for kind in extra:
                res[kind] = correlations(pair_similarity(a, b, kind), task.scores)
        if return_predictions:
            pred = np.concatenate(preds).tolist()
            gold = task.scores.tolist()
            res["predictions"], res["gold"] = pred, gold
            predictions[task.name] = {"pred": pred, "gold": gold}
        results[task.name] = res

    model_str, pooling = _model_info(model)
    sources = list(dict.fromkeys(t.source for t in loaded))
    splits = list(dict.fromkeys(t.split for t in loaded if t.name in ("stsb", "sickr")))
    out: dict[str, Any] = {
        "tasks": results,
        "average": float(np.mean([r["spearman"] for r in results.values()])),
        "average_pearson": float(np.mean([r["pearson"] for r in results.values()])),
        "model": model_name or model_str,
        "pooling": pooling,
        # STS12-16 alone: "test" (the only split they have); else the stsb / sickr split.
        "split": splits[0] if len(splits) == 1 else (split if splits else "test"),
        "aggregation": AGGREGATION,
        "similarity": "cosine",
        "data_source": sources[0] if len(sources) == 1 else "; ".join(sources),
        "n_sentences": len(index),
        "versions": _versions(),
    }
    if return_predictions:
        out["predictions"] = predictions
    out["wall_time_s"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------------- table
def _f(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) and math.isfinite(v) else "-"


def format_sts_table(results: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_sts` results: one row per task (Spearman and
    Pearson of the ``all`` aggregation, SentEval's ``wmean`` / ``mean`` Spearman, pair count,
    extra similarities if any) and the average."""
    tasks: Mapping[str, Any] = results["tasks"]
    extra = [k for k in SIMILARITIES[1:] if any(k in r for r in tasks.values())]
    headers = ["task", "spearman", "pearson", "wmean sp", "mean sp", "pairs"]
    headers += [f"{k} sp" for k in extra]
    rows: list[list[str]] = []
    for name in [t for t in TASKS if t in tasks] + [t for t in tasks if t not in TASKS]:
        r = tasks[name]
        label = name
        if name in ("stsb", "sickr") and r.get("split"):
            label = f"{name} ({r['split']})"
        row = [
            label,
            _f(r.get("spearman")),
            _f(r.get("pearson")),
            _f((r.get("wmean") or {}).get("spearman")),
            _f((r.get("mean") or {}).get("spearman")),
            str(r.get("n_pairs", "")),
        ]
        row += [_f((r.get(k) or {}).get("spearman")) for k in extra]
        rows.append(row)
    avg_p = results.get("average_pearson")
    rows.append(["average", _f(results.get("average")), _f(avg_p), "", "", ""] + [""] * len(extra))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    sep = "  ".join("-" * w for w in widths)
    body = [line(headers), sep, *map(line, rows[:-1]), sep, line(rows[-1])]
    meta = (
        f"model: {results.get('model')}  pooling: {results.get('pooling')}  "
        f"similarity: cosine  aggregation: {results.get('aggregation')} "
        f"(wmean/mean: SentEval per-subset means)  data: {results.get('data_source')}"
    )
    foot = ""
    if isinstance(results.get("wall_time_s"), int | float):
        foot = f"\nwall time: {results['wall_time_s']:.1f} s"
        if results.get("n_sentences"):
            foot += f" ({results['n_sentences']} unique sentences encoded once)"
    return meta + "\n" + "\n".join(body) + foot
