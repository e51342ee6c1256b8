"""STS data: loaders for STS12-16, STS-B and SICK-R.

Three sources, in this order of priority:

1. a local folder in SentEval layout (``STS12-en-test/``, ..., ``STSBenchmark/``, ``SICK/``),
   given as ``data_dir`` (the ``sts`` folder itself or a data root holding ``sts/``);
2. ``$TEXTCL_DATA`` (same two forms);
3. the Hugging Face hub (MTEB's public copies, pinned revisions) via ``datasets``.

Every loaded task is checked against the published pair counts (:data:`EXPECTED_PAIRS`);
a mismatch is an error. Every gold score must lie in its task's range
(:data:`SCORE_RANGES`: 0-5, SICK 1-5); one outside is an error naming the file and line.

Duplicated pairs (the same sentence pair on two lines of a file) are scored as they are:
the published files hold some (STS12 SMTeuroparl repeats 142 pairs; a few repeated pairs
of STS-B train and SICK train even carry different gold scores) and every published result
counts them. A file with more repeated pairs than the published one
(:data:`PUBLISHED_DUPLICATES`) gets a warning with their count and the first file:line;
the published files load silently and score as published.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textcl.io import PathLike

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")
"""Task names, in the order results are reported; ``"all"`` expands to all of them."""

SPLITS: tuple[str, ...] = ("test", "dev", "train", "all")
"""``split`` applies to ``stsb`` and ``sickr`` (STS12-16 only have ``test``). ``dev`` is
SICK's ``trial`` file. ``all`` is MTEB's protocol: SICK-R on the 9,927 pairs of its three
files together, STS-B on ``test``."""

YEAR_TASKS: dict[str, tuple[str, dict[str, int], tuple[int, ...]]] = {
    # task: (folder, {subset: pairs with a gold score}, allowed input column counts)
    "sts12": (
        "STS12-en-test",
        {
            "MSRpar": 750,
            "MSRvid": 750,
            "SMTeuroparl": 459,
            "surprise.OnWN": 750,
            "surprise.SMTnews": 399,
        },
        (2,),
    ),
    # SMT is not redistributed (its gold file has no input): never part of STS13.
    "sts13": ("STS13-en-test", {"FNWN": 189, "headlines": 750, "OnWN": 561}, (2,)),
    "sts14": (
        "STS14-en-test",
        {
            "deft-forum": 450,
            "deft-news": 300,
            "headlines": 750,
            "images": 750,
            "OnWN": 750,
            "tweet-news": 750,
        },
        (2,),
    ),
    "sts15": (
        "STS15-en-test",
        {
            "answers-forums": 375,
            "answers-students": 750,
            "belief": 375,
            "headlines": 750,
            "images": 750,
        },
        (2,),
    ),
    # STS16 inputs carry two extra source columns.
    "sts16": (
        "STS16-en-test",
        {
            "answer-answer": 254,
            "headlines": 249,
            "plagiarism": 230,
            "postediting": 244,
            "question-question": 209,
        },
        (2, 4),
    ),
}

STSB_FILES: dict[str, str] = {
    "train": "sts-train.csv",
    "dev": "sts-dev.csv",
    "test": "sts-test.csv",
}
SICK_FILES: dict[str, str] = {
    "train": "SICK_train.txt",
    "dev": "SICK_trial.txt",
    "test": "SICK_test_annotated.txt",
}

EXPECTED_PAIRS: dict[tuple[str, str], int] = {
    **{(t, "test"): sum(spec[1].values()) for t, spec in YEAR_TASKS.items()},
    ("stsb", "train"): 5749,
    ("stsb", "dev"): 1500,
    ("stsb", "test"): 1379,
    ("sickr", "train"): 4500,
    ("sickr", "dev"): 500,
    ("sickr", "test"): 4927,
    ("sickr", "all"): 9927,
}
"""Pairs with a gold score per ``(task, split)``: the published sizes (data MANIFEST)."""

SCORE_RANGES: dict[str, tuple[float, float]] = {
    **{t: (0.0, 5.0) for t in YEAR_TASKS},
    "stsb": (0.0, 5.0),
    "sickr": (1.0, 5.0),
}
"""The range of every task's gold scores (inclusive): SemEval STS 0-5, SICK relatedness 1-5."""

PUBLISHED_DUPLICATES: dict[tuple[str, str], int] = {
    ("sts12", "MSRvid"): 5,
    ("sts12", "SMTeuroparl"): 142,
    ("sts12", "surprise.SMTnews"): 44,
    ("sts14", "deft-forum"): 27,
    ("sts14", "deft-news"): 1,
    ("sts14", "images"): 1,
    ("sts14", "OnWN"): 38,
    ("stsb", "sts-test"): 1,
    ("stsb", "sts-dev"): 2,
    ("stsb", "sts-train"): 43,
    ("sickr", "SICK_train"): 30,
    # The hub copies of STS12-16 and SICK-R: every file of the task in one subset.
    ("sts12", "sts12"): 191,
    ("sts14", "sts14"): 67,
    ("sickr", "sickr"): 85,
}
"""Repeated sentence pairs (lines beyond the first of each pair) in the published files,
per ``(task, subset)``; any other subset has none. A different count is warned about."""

HUB_DATASETS: dict[str, tuple[str, str]] = {
    # task: (hub dataset, revision pinned by MTEB)
    "sts12": ("mteb/sts12-sts", "a0d554a64d88156834ff5ae9920b964011b16384"),
    "sts13": ("mteb/sts13-sts", "7e90230a92c190f1bf69ae9002b8cea547a64cca"),
    "sts14": ("mteb/sts14-sts", "6031580fec1f6af667f0bd2da0a551cf4f0b2375"),
    "sts15": ("mteb/sts15-sts", "ae752c7c21bf194d8b67fd573edf7ae58183cbe3"),
    "sts16": ("mteb/sts16-sts", "4d8694f8f0e0100860b497b999b3dbed754a0513"),
    "stsb": ("mteb/stsbenchmark-sts", "b0fddb56ed78048fa8b90373c8a3cfc37b684831"),
    "sickr": ("mteb/sickr-sts", "20a6d6f312dd54037fe07a32d58e5e168867909d"),
}
HUB_SPLITS: dict[str, dict[str, str]] = {
    **{t: {"test": "test"} for t in YEAR_TASKS},
    "stsb": {"train": "train", "dev": "validation", "test": "test"},
    # mteb/sickr-sts holds the three SICK files together in one "test" split.
    "sickr": {"all": "test"},
}


@dataclass(frozen=True)
class STSSubset:
    """The scored pairs of one file: ``sentences1[i]``, ``sentences2[i]``, ``scores[i]``."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # (n_pairs,) float64 gold scores
    path: str = ""
    """The file the pairs come from (for messages); empty when unknown."""
    lines: tuple[int, ...] = ()
    """The line (in ``path``) of each pair, or empty (hub rows: pair ``i`` is row ``i``)."""

    def __post_init__(self) -> None:
        if not (len(self.sentences1) == len(self.sentences2) == len(self.scores)):
            raise ValueError(
                f"subset {self.name!r}: {len(self.sentences1)} / {len(self.sentences2)} "
                f"sentences but {len(self.scores)} scores"
            )

    @property
    def n_pairs(self) -> int:
        return len(self.scores)


@dataclass
class STSTask:
    """One task on one split: its subsets (files) in a fixed order, and where they came from.

    ``has_subsets`` is False when the source does not say which subset a pair belongs to (the
    hub copies of STS12-16): then only the ``all`` aggregation is defined.
    """

    name: str
    split: str
    subsets: list[STSSubset]
    source: str
    has_subsets: bool = True
    files: list[str] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        return sum(s.n_pairs for s in self.subsets)

    @property
    def sentences1(self) -> list[str]:
        return [x for s in self.subsets for x in s.sentences1]

    @property
    def sentences2(self) -> list[str]:
        return [x for s in self.subsets for x in s.sentences2]

    @property
    def scores(self) -> np.ndarray:
        return np.concatenate([s.scores for s in self.subsets]).astype(np.float64)


# ---------------------------------------------------------------------- task names
def expand_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Normalise task names: a comma-separated string or a list; ``"all"`` -> :data:`TASKS`.

    Case-insensitive; ``sts-b``/``stsbenchmark`` -> ``stsb``, ``sick-r``/``sick`` -> ``sickr``.
    Order is kept, duplicates dropped; an unknown name is a ``ValueError``.
    """
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    aliases = {"sts-b": "stsb", "stsbenchmark": "stsb", "sick-r": "sickr", "sick": "sickr"}
    out: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise TypeError(f"task names must be strings, got {type(raw).__name__}")
        name = raw.strip().lower()
        if not name:
            continue
        name = aliases.get(name, name)
        names = list(TASKS) if name == "all" else [name]
        for n in names:
            if n not in TASKS:
                raise ValueError(
                    f"unknown STS task {raw.strip()!r}: expected one of {', '.join(TASKS)} or all"
                )
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("no STS task given")
    return out


def task_split(task: str, split: str) -> str:
    """The split actually used for ``task``: STS12-16 always ``test``; ``all`` (MTEB's
    protocol) is SICK-R's three files together and STS-B's ``test``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected test, dev, train or all")
    if task in YEAR_TASKS:
        return "test"
    if split == "all" and task != "sickr":
        return "test"
    return split


# ---------------------------------------------------------------------- folders
def _is_sts_folder(path: Path) -> bool:
    names = ("STSBenchmark", "SICK", *(spec[0] for spec in YEAR_TASKS.values()))
    return any((path / n).is_dir() for n in names)


def resolve_sts_dir(data_dir: PathLike | None = None) -> Path | None:
    """The local STS folder: ``data_dir``, else ``$TEXTCL_DATA``; each either the SentEval
    folder itself or a data root with an ``sts/`` subfolder. ``None`` when neither is set
    (the hub is used then); ``FileNotFoundError`` when one is set but holds no STS data.
    """
    given: list[tuple[str, str]] = []
    if data_dir is not None:
        given.append(("data_dir", str(data_dir)))
    elif os.environ.get("TEXTCL_DATA"):
        given.append(("TEXTCL_DATA", os.environ["TEXTCL_DATA"]))
    for what, value in given:
        root = Path(value).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{what}={value}: no such folder")
        for cand in (root / "sts", root):
            if cand.is_dir() and _is_sts_folder(cand):
                return cand
        raise FileNotFoundError(
            f"{what}={value}: no STS data there (expected SentEval folders such as "
            "STS12-en-test/ and STSBenchmark/, in it or in its sts/ subfolder)"
        )
    return None


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file, split on ``\\n`` only (``str.splitlines`` would also split
    on characters such as U+2028 or U+0085 inside sentences); a trailing ``\\r`` is removed."""
    if not path.is_file():
        raise FileNotFoundError(f"STS data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _parse_score(
    value: str, path: Path, lineno: int, score_range: tuple[float, float] = (0.0, 5.0)
) -> float:
    try:
        score = float(value)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: score {value.strip()!r} is not a number") from None
    if not math.isfinite(score):
        raise ValueError(f"{path}:{lineno}: score {value.strip()!r} is not a finite number")
    low, high = score_range
    if not low <= score <= high:
        raise ValueError(
            f"{path}:{lineno}: gold score {value.strip()!r} is outside the task's range "
            f"{low:g}-{high:g}"
        )
    return score


def read_senteval_pairs(
    input_path: PathLike,
    gold_path: PathLike,
    columns: Sequence[int] = (2,),
    name: str = "",
    score_range: tuple[float, float] = SCORE_RANGES["sts12"],
) -> STSSubset:
    """Read one STS12-16 subset: ``STS.input.X.txt`` (tab-separated, sentences in the first
    two columns; ``columns`` lists the allowed column counts) and ``STS.gs.X.txt`` (one score
    a line; an empty line means "no gold score" and the pair is skipped).

    ``ValueError`` naming the file and line for a wrong column count, a non-numeric score or
    one outside ``score_range``, and naming both files when their line counts differ.
    """
    inp, gold = Path(input_path), Path(gold_path)
    in_lines, gold_lines = _read_lines(inp), _read_lines(gold)
    if len(in_lines) != len(gold_lines):
        raise ValueError(
            f"{inp} has {len(in_lines)} lines but {gold} has {len(gold_lines)}: "
            "input and gold files must be aligned line by line"
        )
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    lines: list[int] = []
    for i, (line, g) in enumerate(zip(in_lines, gold_lines, strict=True), start=1):
        cols = line.split("\t")
        if len(cols) not in columns:
            raise ValueError(
                f"{inp}:{i}: expected {' or '.join(map(str, columns))} tab-separated columns, "
                f"got {len(cols)}"
            )
        if not g.strip():
            continue  # no gold score for this pair
        scores.append(_parse_score(g, gold, i, score_range))
        s1.append(cols[0])
        s2.append(cols[1])
        lines.append(i)
    return STSSubset(
        name or inp.name, s1, s2, np.asarray(scores, dtype=np.float64), str(inp), tuple(lines)
    )


def read_stsb_file(
    path: PathLike, score_range: tuple[float, float] = SCORE_RANGES["stsb"]
) -> STSSubset:
    """Read an STS Benchmark ``sts-*.csv``: tab-separated, NOT quoted (sentences contain
    ``"``); columns genre, file, year, id, score, sentence1, sentence2, and on some rows two
    extra source columns (ignored). A score outside ``score_range`` is an error."""
    p = Path(path)
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    for i, line in enumerate(_read_lines(p), start=1):
        cols = line.split("\t")
        if len(cols) not in (7, 9):
            raise ValueError(f"{p}:{i}: expected 7 or 9 tab-separated columns, got {len(cols)}")
        scores.append(_parse_score(cols[4], p, i, score_range))
        s1.append(cols[5])
        s2.append(cols[6])
    n = len(scores)
    return STSSubset(
        p.stem, s1, s2, np.asarray(scores, dtype=np.float64), str(p), tuple(range(1, n + 1))
    )


def read_sick_file(
    path: PathLike, score_range: tuple[float, float] = SCORE_RANGES["sickr"]
) -> STSSubset:
    """Read a SICK file: a header row, then tab-separated pair_ID, sentence_A, sentence_B,
    relatedness_score, entailment_judgment (CRLF line endings are accepted). A score outside
    ``score_range`` (relatedness is 1-5) is an error."""
    p = Path(path)
    lines = _read_lines(p)
    if not lines:
        raise ValueError(f"{p}: empty file")
    header = lines[0].split("\t")
    if header[:4] != ["pair_ID", "sentence_A", "sentence_B", "relatedness_score"]:
        raise ValueError(
            f"{p}:1: expected the header pair_ID, sentence_A, sentence_B, relatedness_score, "
            f"got {lines[0][:80]!r}"
        )
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    for i, line in enumerate(lines[1:], start=2):
        cols = line.split("\t")
        if len(cols) != len(header):
            raise ValueError(
                f"{p}:{i}: expected {len(header)} tab-separated columns, got {len(cols)}"
            )
        scores.append(_parse_score(cols[3], p, i, score_range))
        s1.append(cols[1])
        s2.append(cols[2])
    n = len(scores)
    return STSSubset(
        p.stem, s1, s2, np.asarray(scores, dtype=np.float64), str(p), tuple(range(2, n + 2))
    )


def check_counts(task: STSTask) -> STSTask:
    """``ValueError`` when ``task``'s pair count (or a subset's) differs from the published
    size."""
    if task.has_subsets and task.name in YEAR_TASKS:
        expected_sub = YEAR_TASKS[task.name][1]
        for s in task.subsets:
            want = expected_sub.get(s.name)
            if want is not None and s.n_pairs != want:
                raise ValueError(
                    f"{task.name} subset {s.name} ({task.source}): {s.n_pairs} scored pairs, "
                    f"expected {want}"
                )
    expected = EXPECTED_PAIRS.get((task.name, task.split))
    if expected is not None and task.n_pairs != expected:
        raise ValueError(
            f"{task.name} {task.split} ({task.source}): {task.n_pairs} scored pairs, "
            f"expected {expected} (the published size)"
        )
    return task


def duplicate_pairs(subset: STSSubset) -> list[tuple[int, int]]:
    """``(i, first)`` for every pair ``i`` of ``subset`` that repeats the sentence pair of an
    earlier pair ``first`` (same order of the two sentences), in file order."""
    seen: dict[tuple[str, str], int] = {}
    out: list[tuple[int, int]] = []
    for i, pair in enumerate(zip(subset.sentences1, subset.sentences2, strict=True)):
        first = seen.setdefault(pair, i)
        if first != i:
            out.append((i, first))
    return out


def check_duplicates(task: STSTask) -> STSTask:
    """Log a warning for each subset of ``task`` with more repeated sentence pairs than the
    published file (:data:`PUBLISHED_DUPLICATES`): the count, how many of them carry a
    different gold score and the first repeat as file:line. Pairs are scored as they are."""
    for sub in task.subsets:
        dups = duplicate_pairs(sub)
        published = PUBLISHED_DUPLICATES.get((task.name, sub.name), 0)
        if len(dups) <= published:  # fewer: the pair count check speaks for the file
            if dups:
                logger.debug(
                    "%s: %d repeated pair(s), as published", sub.path or sub.name, len(dups)
                )
            continue
        conflicting = sum(1 for i, j in dups if sub.scores[i] != sub.scores[j])
        where = sub.path or f"{task.source} {sub.name}"
        first = ""
        if dups:
            i, j = dups[0]
            at = [f"line {sub.lines[k]}" if sub.lines else f"row {k}" for k in (i, j)]
            first = f"; first: {where} {at[0]} repeats {at[1]}"
        logger.warning(
            "%s %s (%s): %d repeated sentence pair(s), %d of them with a different gold "
            "score (the published file has %d)%s; scored as they are",
            task.name,
            sub.name,
            where,
            len(dups),
            conflicting,
            published,
            first,
        )
    return task


def load_local_task(task: str, split: str, sts_dir: PathLike) -> STSTask:
    """Load ``task`` (split as in :func:`task_split`) from a SentEval-layout folder."""
    root = Path(sts_dir)
    split = task_split(task, split)
    if task in YEAR_TASKS:
        folder, subsets, columns = YEAR_TASKS[task]
        d = root / folder
        if not d.is_dir():
            raise FileNotFoundError(f"{task}: folder {d} not found")
        subs = [
            read_senteval_pairs(
                d / f"STS.input.{s}.txt", d / f"STS.gs.{s}.txt", columns, s, SCORE_RANGES[task]
            )
            for s in subsets
        ]
        files = [str(d / f"STS.input.{s}.txt") for s in subsets]
    elif task == "stsb":
        path = root / "STSBenchmark" / STSB_FILES[split]
        subs, files = [read_stsb_file(path)], [str(path)]
    elif task == "sickr":
        names = list(SICK_FILES) if split == "all" else [split]
        paths = [root / "SICK" / SICK_FILES[n] for n in names]
        subs, files = [read_sick_file(p) for p in paths], [str(p) for p in paths]
    else:
        raise ValueError(f"unknown STS task {task!r}")
    return check_duplicates(check_counts(STSTask(task, split, subs, f"local:{root}", True, files)))


# ---------------------------------------------------------------------- hub
def _hub_load(path: str, revision: str, split: str) -> Any:
    """Download one split of a hub dataset (the only network access of the STS harness).

    Returns a ``datasets.Dataset`` (anything with ``column_names`` and ``ds[column]`` works).
    """
    from datasets import load_dataset

    return load_dataset(path, revision=revision, split=split)


def load_hub_task(task: str, split: str) -> STSTask:
    """Load ``task`` from MTEB's copy on the Hugging Face hub (pinned revision).

    Those copies do not mark the subsets of STS12-16, so only the ``all`` aggregation is
    available; SICK-R is available as ``split="all"`` only (MTEB keeps the three SICK files
    together).
    """
    split = task_split(task, split)
    hub_name, revision = HUB_DATASETS[task]
    hub_split = HUB_SPLITS[task].get(split)
    if hub_split is None:
        raise ValueError(
            f"{task} {split}: not available from the hub copy {hub_name} (it holds "
            f"{', '.join(HUB_SPLITS[task])}); use a local SentEval folder (data_dir / TEXTCL_DATA)"
        )
    source = f"hub:{hub_name}@{revision[:7]}"
    try:
        ds = _hub_load(hub_name, revision, hub_split)
    except Exception as e:
        raise ValueError(
            f"{task}: no local STS folder (set data_dir or TEXTCL_DATA) and the hub download "
            f"of {hub_name} failed ({type(e).__name__}: {e})"
        ) from e
    cols = set(ds.column_names)
    missing = {"sentence1", "sentence2", "score"} - cols
    if missing:
        raise ValueError(f"{source} {hub_split}: missing column(s) {sorted(missing)}")
    s1 = [str(x) for x in ds["sentence1"]]
    s2 = [str(x) for x in ds["sentence2"]]
    raw = list(ds["score"])
    scores = np.empty(len(raw), dtype=np.float64)
    for i, v in enumerate(raw):
        try:
            scores[i] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{source} {hub_split} row {i}: score {v!r} is not a number") from None
    if not np.isfinite(scores).all():
        raise ValueError(f"{source} {hub_split}: non-finite score(s)")
    low, high = SCORE_RANGES[task]
    outside = np.flatnonzero((scores < low) | (scores > high))
    if outside.size:
        i = int(outside[0])
        raise ValueError(
            f"{source} {hub_split} row {i}: gold score {scores[i]!r} is outside the task's "
            f"range {low:g}-{high:g} ({outside.size} such row(s))"
        )
    sub = STSSubset(task if task != "stsb" else f"sts-{split}", s1, s2, scores)
    has_subsets = task not in YEAR_TASKS
    return check_duplicates(
        check_counts(STSTask(task, split, [sub], source, has_subsets, [hub_name]))
    )


def load_sts_task(task: str, split: str = "test", data_dir: PathLike | None = None) -> STSTask:
    """Load one task: from the local folder (:func:`resolve_sts_dir`) when there is one, else
    from the hub."""
    task = expand_tasks([task])[0]
    sts_dir = resolve_sts_dir(data_dir)
    if sts_dir is not None:
        return load_local_task(task, split, sts_dir)
    return load_hub_task(task, split)
