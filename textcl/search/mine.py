"""Hard-negative mining: (anchor, positive) pairs in, (anchor, positive, hard negative)
triples out, the negatives retrieved from an index (``textcl mine``).

For every distinct anchor the top ``top_k`` candidates are retrieved (exactly, or through a
FAISS index built for the folder) from

* an index folder written by ``textcl encode`` (the anchors are encoded with the index's
  model, checked against the manifest's probe fingerprint like ``textcl search`` does), or
* by default, the distinct positives of the pairs, encoded in memory (what
  ``sentence_transformers.util.mine_hard_negatives`` uses when it is given no corpus).

The candidates are then walked best first and a candidate is skipped, in this order, when

1. ``anchor``: its text is the anchor's;
2. ``positive``: its text is one of the anchor's positives (every row with that anchor);
3. ``duplicate``: its text was already taken for this anchor (an index may hold a text
   twice; the in-memory corpus is de-duplicated);
4. ``absolute_margin``: ``score + absolute_margin > positive score``;
5. ``relative_margin``: ``score > positive score - |positive score| * relative_margin``;
6. ``max_score``: ``score > max_score``; 7. ``min_score``: ``score < min_score``.

The positive score of an anchor is its lowest score against its positives (the harder
positive), as sentence-transformers takes it. Of the candidates left, ranks
``range_min .. range_max - 1`` form the window; ``sampling="top"`` takes its first
``num_negatives``, ``sampling="random"`` draws ``num_negatives`` of it (a generator seeded
with ``seed``, anchors in input order) and sorts them by score. These are
``mine_hard_negatives``' rules (``range_min``/``range_max``, ``absolute_margin``,
``relative_margin``, ``max_score``, ``min_score``, ``sampling_strategy``); with the default
corpus and ``sampling="top"`` the same negatives come out, up to ties of equal scores.

Output: one row per (pair, negative) with the columns ``sent0``, ``sent1``, ``hard_neg``
(what ``textcl train --objective sup`` reads by default), in input order, written
atomically as JSON lines, CSV or TSV. A pair whose anchor found no negative writes no row;
the summary counts such pairs and why.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from textcl.data.pairs import DEFAULT_COLUMNS, PairDataset
from textcl.errors import FolderConflictError, InputError
from textcl.io import atomic_write_text, path_overlap
from textcl.precision import check_device
from textcl.search.exact import exact_search
from textcl.search.index import EmbeddingIndex, open_index
from textcl.search.model import load_encoder, model_name

logger = logging.getLogger(__name__)

SAMPLING = ("top", "random")
FORMATS = ("jsonl", "csv", "tsv")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
OUTPUT_COLUMNS: tuple[str, str, str] = (DEFAULT_COLUMNS[0], DEFAULT_COLUMNS[1], DEFAULT_COLUMNS[2])
"""The triple columns written: ``textcl train``'s default ``--columns``."""
RULES = (
    "anchor",
    "positive",
    "duplicate",
    "absolute_margin",
    "relative_margin",
    "max_score",
    "min_score",
)
"""Why a candidate is skipped, in the order the rules are tried (see the module doc)."""
SEARCH_CHUNK = 1024
"""Anchors encoded and searched at a time (the progress grain)."""


def _bad(flag: str, message: str) -> InputError:
    return InputError(f"{flag}: {message}")


@dataclass(frozen=True)
class MineOptions:
    """How :func:`mine_hard_negatives` selects negatives (see the module doc for the rules).

    ``top_k``: candidates retrieved per anchor (default: ``range_max`` plus the most
    positives of one anchor plus 1, sentence-transformers' count); ``range_max`` (default:
    ``range_min + num_negatives + max positives``, or ``range_min + 10 * num_negatives +
    max positives`` with a score rule, as sentence-transformers derives it).
    """

    anchor_column: str = DEFAULT_COLUMNS[0]
    positive_column: str = DEFAULT_COLUMNS[1]
    num_negatives: int = 1
    top_k: int | None = None
    range_min: int = 0
    range_max: int | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling: str = "top"
    seed: int = 0
    batch_size: int = 64
    faiss: str | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    precision: str = "auto"
    device: Any = None
    skip_bad_rows: bool = False
    split: str = "train"
    show_progress: bool = True

    @property
    def has_score_rule(self) -> bool:
        return any(
            v is not None
            for v in (self.absolute_margin, self.relative_margin, self.max_score, self.min_score)
        )

    def check(self) -> None:
        """Raise :class:`~textcl.errors.InputError` for a bad value (flag named)."""
        for flag, value, low in (
            ("--num-negatives", self.num_negatives, 1),
            ("--range-min", self.range_min, 0),
            ("--batch-size", self.batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise _bad(flag, f"must be an integer >= {low}, got {value!r}")
        for flag, opt in (("--top-k", self.top_k), ("--range-max", self.range_max)):
            if opt is not None and (isinstance(opt, bool) or not isinstance(opt, int) or opt < 1):
                raise _bad(flag, f"must be a positive integer, got {opt!r}")
        for flag, num in (
            ("--margin", self.absolute_margin),
            ("--relative-margin", self.relative_margin),
            ("--max-score", self.max_score),
            ("--min-score", self.min_score),
        ):
            if num is not None and not np.isfinite(float(num)):
                raise _bad(flag, f"must be a finite number, got {num!r}")
        if self.sampling not in SAMPLING:
            raise _bad("--sampling", f"must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        if self.anchor_column == self.positive_column:
            raise _bad(
                "--anchor-column/--positive-column",
                f"name two different columns, got {self.anchor_column!r} twice",
            )

    def window(self, max_positives: int) -> tuple[int, int, int]:
        """``(range_min, range_max, top_k)`` for anchors with at most ``max_positives``
        positives; raises InputError when the window cannot hold ``num_negatives`` or
        ``top_k`` retrieves fewer candidates than the window needs."""
        lo = self.range_min
        if self.range_max is not None:
            hi = self.range_max
        else:
            per = self.num_negatives * (10 if self.has_score_rule else 1)
            hi = lo + per + max_positives
        if lo >= hi:
            raise _bad("--range-min", f"{lo} must be smaller than --range-max {hi}")
        if self.num_negatives > hi - lo:
            raise _bad(
                "--num-negatives",
                f"cannot take {self.num_negatives} negatives from ranks {lo}..{hi - 1} "
                f"(--range-min {lo}, --range-max {hi}): lower --num-negatives or --range-min, "
                "or raise --range-max",
            )
        k = hi + max_positives + 1 if self.top_k is None else self.top_k
        if k < hi:
            raise _bad(
                "--top-k",
                f"{k} candidates per anchor are too few for --range-max {hi} (ranks "
                f"{lo}..{hi - 1} after skipping the anchor, its {max_positives} positive(s) at "
                f"most and near-duplicates): pass --top-k {hi + max_positives + 1} or more, or "
                "lower --range-max / --num-negatives",
            )
        return lo, hi, k


@dataclass
class Selection:
    """What :func:`select_negatives` made of one anchor's candidates."""

    chosen: list[tuple[int, float]]
    """``(candidate position, score)`` of the negatives taken, best score first."""
    skipped: dict[str, int]
    """Candidates skipped per rule (:data:`RULES`)."""
    kept: int
    """Candidates left after the rules (before the rank window)."""


def select_negatives(
    scores: Sequence[float] | np.ndarray,
    texts: Sequence[str | None],
    anchor: str,
    positives: set[str] | frozenset[str],
    positive_score: float,
    options: MineOptions,
    window: tuple[int, int],
    rng: np.random.Generator | None = None,
) -> Selection:
    """Apply the rules of the module doc to one anchor's candidates.

    Args:
        scores / texts: the retrieved candidates, best first (a ``None`` text: no candidate,
            e.g. FAISS padding).
        anchor / positives / positive_score: the anchor, the texts of its positives and its
            (lowest) positive score.
        window: ``(range_min, range_max)`` over the candidates left.
        rng: the generator of ``sampling="random"``.
    """
    skipped = dict.fromkeys(RULES, 0)
    seen: set[str] = set()
    kept: list[tuple[int, float]] = []
    o = options
    rel = None
    if o.relative_margin is not None:
        rel = positive_score - abs(positive_score) * o.relative_margin
    for pos, (score, text) in enumerate(zip(scores, texts, strict=True)):
        if text is None:
            continue
        s = float(score)
        rule: str | None = None
        if text == anchor:
            rule = "anchor"
        elif text in positives:
            rule = "positive"
        elif text in seen:
            rule = "duplicate"
        elif o.absolute_margin is not None and s + o.absolute_margin > positive_score:
            rule = "absolute_margin"
        elif rel is not None and s > rel:
            rule = "relative_margin"
        elif o.max_score is not None and s > o.max_score:
            rule = "max_score"
        elif o.min_score is not None and s < o.min_score:
            rule = "min_score"
        if rule is not None:
            skipped[rule] += 1
            continue
        seen.add(text)
        kept.append((pos, s))
    lo, hi = window
    pool = kept[lo:hi]
    if o.sampling == "top" or len(pool) <= o.num_negatives:
        chosen = pool[: o.num_negatives]
    else:
        generator = rng if rng is not None else np.random.default_rng(o.seed)
        picks = generator.choice(len(pool), size=o.num_negatives, replace=False)
        chosen = sorted((pool[int(i)] for i in picks), key=lambda c: (-c[1], c[0]))
    return Selection(chosen=chosen, skipped=skipped, kept=len(kept))


@dataclass
class MineResult:
    """Triples in input order, their scores, and the summary (:func:`mine_hard_negatives`)."""

    triples: list[tuple[str, str, str]]
    scores: list[tuple[float, float]]
    """``(positive score, negative score)`` of each triple."""
    summary: dict[str, Any] = field(default_factory=dict)


def read_pairs(source: Any, options: MineOptions) -> PairDataset:
    """The (anchor, positive) pairs of ``source`` (any input ``textcl train`` reads): a
    missing column is a MissingColumnError naming the file and the columns it has."""
    return PairDataset.from_source(
        source,
        columns=(options.anchor_column, options.positive_column),
        skip_bad_rows=options.skip_bad_rows,
        split=options.split,
    )


def _group(pairs: PairDataset) -> tuple[list[str], dict[str, list[str]]]:
    """The distinct anchors (first-seen order) and each one's distinct positives."""
    positives: dict[str, list[str]] = {}
    for anchor, positive in pairs:
        group = positives.setdefault(anchor, [])
        if positive not in group:
            group.append(positive)
    return list(positives), positives


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "min": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def mine_hard_negatives(
    pairs: Any,
    model: Any = None,
    *,
    index: str | os.PathLike[str] | EmbeddingIndex | None = None,
    options: MineOptions | None = None,
) -> MineResult:
    """Mine hard negatives for ``pairs`` (a file, dataset or :class:`PairDataset`).

    Args:
        pairs: (anchor, positive) pairs: any source :meth:`PairDataset.from_source` reads
            (columns ``options.anchor_column`` / ``options.positive_column``) or a
            :class:`PairDataset` of two columns.
        model: the encoder (a :class:`~textcl.SentenceEncoder`, folder or hub id); with
            ``index`` it defaults to the manifest's model and is checked against the index.
        index: an index folder (or open :class:`EmbeddingIndex`) to mine from; default: the
            distinct positives of ``pairs``, encoded in memory (L2-normalised: cosine).
        options: :class:`MineOptions`.

    Raises:
        InputError: bad options, an empty or malformed pairs file, a missing column.
        ValueError: a model that does not embed like the index's.
    """
    o = options or MineOptions()
    o.check()
    check_device(o.device)
    t0 = time.perf_counter()
    data = pairs if isinstance(pairs, PairDataset) else read_pairs(pairs, o)
    if len(data.columns) != 2:
        raise InputError(f"{data.source}: mining needs (anchor, positive) pairs, 2 columns")
    anchors, positives = _group(data)
    max_pos = max(len(p) for p in positives.values())
    lo, hi, k = o.window(max_pos)

    if index is None and (o.faiss or o.nprobe is not None or o.ef_search is not None):
        raise _bad("--faiss/--nprobe/--ef-search", "search an index folder: pass --index too")
    idx: EmbeddingIndex | None = None
    if index is not None:
        idx = open_index(index)
        if model is None:
            model = idx.manifest.model
    if model is None:
        raise InputError("--model: a model is needed to mine without --index")
    encoder = load_encoder(model, o.device)
    normalize = True
    t_load = time.perf_counter()
    if idx is not None:
        idx.check_encoder(encoder)  # refuses a model other than the index's
        normalize = idx.manifest.normalized
    enc_kw: dict[str, Any] = {
        "batch_size": o.batch_size,
        "normalize": normalize,
        "precision": o.precision,
    }
    # The distinct positives: the corpus by default, and the positive scores either way.
    distinct = list(dict.fromkeys(p for group in positives.values() for p in group))
    emb = np.asarray(encoder.encode(distinct, show_progress=o.show_progress, **enc_kw), np.float32)
    pos_vectors = dict(zip(distinct, emb, strict=True))
    corpus_texts = distinct if idx is None else []
    t_corpus = time.perf_counter()

    rng = np.random.default_rng(o.seed)
    text_cache: dict[int, str] = {}
    negatives: dict[str, list[tuple[str, float]]] = {}
    pos_score: dict[str, float] = {}
    skipped = dict.fromkeys(RULES, 0)
    reason: dict[str, str] = {}
    corpus_size = len(idx) if idx is not None else len(corpus_texts)
    bar = tqdm(
        total=len(anchors),
        disable=not o.show_progress,
        desc="mine",
        unit=" anchors",
        dynamic_ncols=True,
    )
    with bar:
        for start in range(0, len(anchors), SEARCH_CHUNK):
            block = anchors[start : start + SEARCH_CHUNK]
            q = np.asarray(encoder.encode(block, show_progress=False, **enc_kw), np.float32)
            if idx is None:
                scores, found = exact_search(q, emb, top_k=min(k, corpus_size))
            else:
                scores, found = idx.search_vectors(
                    q,
                    min(k, corpus_size),
                    faiss_kind=o.faiss,
                    nprobe=o.nprobe,
                    ef_search=o.ef_search,
                )
                todo = sorted({int(j) for j in found.ravel() if j >= 0} - text_cache.keys())
                text_cache.update(zip(todo, (text for _, text in idx.records(todo)), strict=True))
            for qi, anchor in enumerate(block):
                group = positives[anchor]
                ps = float(min(float(q[qi] @ pos_vectors[p]) for p in group))
                pos_score[anchor] = ps
                if idx is None:
                    texts: list[str | None] = [corpus_texts[int(j)] for j in found[qi]]
                else:
                    texts = [text_cache[int(j)] if j >= 0 else None for j in found[qi]]
                sel = select_negatives(
                    scores[qi], texts, anchor, frozenset(group), ps, o, (lo, hi), rng
                )
                for rule, n in sel.skipped.items():
                    skipped[rule] += n
                chosen = [(str(texts[c]), s) for c, s in sel.chosen]
                negatives[anchor] = chosen
                if not chosen:
                    reason[anchor] = (
                        "all_candidates_skipped" if sel.kept == 0 else "fewer_kept_than_range_min"
                    )
            bar.update(len(block))
    t_mine = time.perf_counter()

    triples: list[tuple[str, str, str]] = []
    triple_scores: list[tuple[float, float]] = []
    none_pairs = fewer_pairs = 0
    why = {"all_candidates_skipped": 0, "fewer_kept_than_range_min": 0}
    for anchor, positive in data:
        chosen = negatives[anchor]
        if not chosen:
            none_pairs += 1
            why[reason[anchor]] += 1
        elif len(chosen) < o.num_negatives:
            fewer_pairs += 1
        positive_score = float(pos_score[anchor])
        for text, s in chosen:
            triples.append((anchor, positive, text))
            triple_scores.append((positive_score, s))
    summary: dict[str, Any] = {
        "pairs": len(data),
        "pairs_skipped_malformed": data.n_skipped,
        "anchors": len(anchors),
        "max_positives_per_anchor": max_pos,
        "corpus": {
            "kind": "index" if idx is not None else "positives",
            "path": str(idx.folder) if idx is not None else None,
            "size": corpus_size,
            "faiss": o.faiss,
        },
        "model": model_name(model),
        "window": {"range_min": lo, "range_max": hi, "top_k": k},
        "options": {
            key: value for key, value in asdict(o).items() if key not in ("device", "show_progress")
        },
        "triples": len(triples),
        "pairs_with_negatives": len(data) - none_pairs,
        "pairs_without_negative": none_pairs,
        "pairs_with_fewer_negatives": fewer_pairs,
        "anchors_without_negative": len(reason),
        "pairs_without_negative_why": why,
        "skipped_candidates": skipped,
        "positive_score": _stats(list(pos_score.values())),
        "negative_score": _stats([s for _, s in triple_scores]),
        "seconds": {
            "load": round(t_load - t0, 3),
            "encode_corpus": round(t_corpus - t_load, 3),
            "search_and_select": round(t_mine - t_corpus, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    }
    if none_pairs:
        hint = "raise --top-k / --range-max"
        if o.has_score_rule:
            hint += " or loosen --margin / --relative-margin / --max-score / --min-score"
        summary["hint"] = f"{none_pairs} pair(s) got no negative: {hint}"
    return MineResult(triples=triples, scores=triple_scores, summary=summary)


def output_format(path: Path, fmt: str | None) -> str:
    """``fmt``, else the format the output's suffix names (.jsonl, .csv, .tsv)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise _bad("--format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    found = _SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise _bad(
            "--output",
            f"{path}: cannot tell the format from the name; end it in .jsonl, .csv or .tsv, "
            "or pass --format",
        )
    return found


def check_output(
    output: str | os.PathLike[str],
    inputs: Sequence[tuple[str, Any]],
    *,
    overwrite: bool,
) -> Path:
    """The output file, after checking that it is not (inside) an input, not a folder,
    and not an existing file unless ``overwrite``."""
    path = Path(output).expanduser()
    for what, other in inputs:
        if other is None or not isinstance(other, (str, os.PathLike)):
            continue
        if not Path(other).expanduser().exists():
            continue
        overlap = path_overlap(path, other)
        if overlap in ("is", "inside"):
            relation = "is" if overlap == "is" else "is inside"
            raise _bad(
                "--output",
                f"{path} {relation} the {what} {other}; write the triples elsewhere",
            )
    if path.is_dir():
        raise _bad("--output", f"{path} is a folder; name a .jsonl/.csv/.tsv file")
    if path.exists() and not overwrite:
        raise FolderConflictError(
            f"{path}: the output file exists; pass --overwrite to replace it, or choose "
            "another --output"
        )
    return path


def format_triples(result: MineResult, fmt: str, *, with_scores: bool = False) -> str:
    """The triples as JSON lines, CSV or TSV text with a header (columns
    :data:`OUTPUT_COLUMNS`, plus ``pos_score``/``neg_score`` when ``with_scores``)."""
    columns = [*OUTPUT_COLUMNS, *(("pos_score", "neg_score") if with_scores else ())]
    rows: list[list[Any]] = []
    for triple, (ps, ns) in zip(result.triples, result.scores, strict=True):
        row: list[Any] = list(triple)
        if with_scores:
            row += [round(ps, 6), round(ns, 6)]
        rows.append(row)
    if fmt == "jsonl":
        return "".join(
            json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False) + "\n"
            for row in rows
        )
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def write_triples(
    result: MineResult,
    output: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    with_scores: bool = False,
) -> Path:
    """Write ``result``'s triples to ``output`` atomically; returns the path."""
    path = Path(output).expanduser()
    return atomic_write_text(
        path, format_triples(result, output_format(path, fmt), with_scores=with_scores)
    )


def mine_to_file(
    pairs: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: Any = None,
    *,
    index: str | os.PathLike[str] | None = None,
    options: MineOptions | None = None,
    fmt: str | None = None,
    with_scores: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``textcl mine``: check the output (before any work), mine, write the triples
    atomically; returns the summary (with ``output`` and ``format``)."""
    o = options or MineOptions()
    o.check()
    model_path = model if isinstance(model, (str, os.PathLike)) else None
    path = check_output(
        output,
        [("pairs file", pairs), ("index folder", index), ("model folder", model_path)],
        overwrite=overwrite,
    )
    fmt = output_format(path, fmt)
    result = mine_hard_negatives(pairs, model, index=index, options=o)
    write_triples(result, path, fmt=fmt, with_scores=with_scores)
    return {**result.summary, "output": str(path), "format": fmt}
