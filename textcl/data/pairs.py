"""Supervised training data: (anchor, positive) pairs and (anchor, positive, hard negative)
triples.

Sources (:meth:`PairDataset.from_source`):

* a CSV (``.csv``) or TSV (``.tsv``/``.tab``) file with a header row naming the columns, read
  with the :mod:`csv` module (quoted fields, embedded delimiters and newlines work);
* a JSON-lines file (``.jsonl``/``.ndjson``/``.json``: one object per line; a ``.json`` file
  holding one array of objects works too);
* any of those compressed with gzip (``.csv.gz``, ...);
* a ``datasets.Dataset``, a folder written by ``Dataset.save_to_disk``, or a Hugging Face
  hub dataset id.

SimCSE's supervised NLI data (``nli_for_simcse.csv``) has the columns ``sent0`` (premise),
``sent1`` (entailment hypothesis) and ``hard_neg`` (contradiction hypothesis), the default
``columns``; pass two names for plain pairs.

A row is malformed when a requested column is missing, a field is empty, blank or not a
string (JSON ``null``, a number), a CSV/TSV row has a different number of fields than the
header, or a JSON line does not parse to an object. By default the first malformed row is
a ``ValueError`` naming the file and line; with ``skip_bad_rows=True`` malformed rows are
skipped, counted in :attr:`PairDataset.n_skipped` and reported with one logged warning.
Rows are never dropped silently. Blank lines are not rows (as in the :mod:`csv` module).
The whole dataset is held in memory (SimCSE's 275k NLI triples take about 100 MB).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from textcl.data._datasets import load_hub_dataset as _load_hub_dataset
from textcl.data._datasets import load_saved_dataset as _load_saved_dataset
from textcl.sources import resolve_source

logger = logging.getLogger(__name__)

DEFAULT_COLUMNS: tuple[str, ...] = ("sent0", "sent1", "hard_neg")
"""SimCSE's NLI triple columns: anchor (premise), positive (entailment), hard negative
(contradiction)."""

CSV_SUFFIXES = (".csv",)
TSV_SUFFIXES = (".tsv", ".tab")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
FILE_SUFFIXES = CSV_SUFFIXES + TSV_SUFFIXES + JSONL_SUFFIXES


class BadRow(ValueError):
    """A malformed row: ``where`` (``file:line`` or ``row i``) and the reason."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def check_columns(columns: Sequence[str] | str) -> tuple[str, ...]:
    """Normalise ``columns``: a sequence of 2 or 3 distinct non-empty names, or one string
    ``"sent0,sent1,hard_neg"`` (as the CLI spells it)."""
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",")]
    if not isinstance(columns, Sequence):
        raise TypeError(f"columns must be a sequence of names, got {type(columns).__name__}")
    cols = tuple(columns)
    for c in cols:
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"columns must be non-empty strings, got {cols!r}")
    if len(cols) not in (2, 3):
        raise ValueError(
            "columns must name 2 (anchor, positive) or 3 (anchor, positive, hard negative) "
            f"columns, got {len(cols)}: {cols!r}"
        )
    if len(set(cols)) != len(cols):
        raise ValueError(f"columns must be distinct, got {cols!r}")
    return cols


def _check_fields(values: Sequence[Any], columns: Sequence[str], where: str) -> tuple[str, ...]:
    """The row's fields as strings, stripped; a :class:`BadRow` for a None, non-string,
    empty or blank field."""
    out: list[str] = []
    for name, value in zip(columns, values, strict=True):
        if value is None:
            raise BadRow(where, f"field {name!r} is missing (null)")
        if not isinstance(value, str):
            raise BadRow(where, f"field {name!r} is {type(value).__name__}, not a string")
        text = value.strip()
        if not text:
            raise BadRow(where, f"field {name!r} is empty")
        out.append(text)
    return tuple(out)


def _file_format(path: Path) -> tuple[str, bool]:
    """(``"csv"``/``"tsv"``/``"jsonl"``, gzipped) from the file name."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for fmt, suffixes in (("csv", CSV_SUFFIXES), ("tsv", TSV_SUFFIXES), ("jsonl", JSONL_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt, gz
    raise ValueError(
        f"{path}: unknown file type; expected one of {', '.join(FILE_SUFFIXES)} (optionally .gz)"
    )


def _read_text(path: Path, gz: bool) -> str:
    """The whole file as text; errors name the file (and the line, for bad UTF-8)."""
    try:
        if gz:
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 (byte {e.start}: {e.reason})") from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    return text


def _csv_rows(path: Path, text: str, delimiter: str, columns: Sequence[str]) -> Iterator[Any]:
    """Yield each row's fields (a tuple) or a :class:`BadRow`, in file order."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except csv.Error as e:
        raise ValueError(f"{path}:1: malformed header ({e})") from None
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(
            f"{path}: column(s) {', '.join(map(repr, missing))} not in the header "
            f"(columns: {', '.join(map(repr, header))})"
        )
    for c in columns:
        if header.count(c) > 1:
            raise ValueError(f"{path}: column {c!r} appears {header.count(c)} times in the header")
    index = [header.index(c) for c in columns]
    line = reader.line_num
    while True:
        start = line + 1  # a quoted field may span lines: report where the row starts
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            line = reader.line_num
            yield BadRow(f"{path}:{start}", f"malformed {delimiter!r}-separated row ({e})")
            continue
        line = reader.line_num
        if not row:  # a blank line is not a row
            continue
        where = f"{path}:{start}"
        if len(row) != len(header):
            yield BadRow(where, f"{len(row)} fields, the header has {len(header)}")
            continue
        try:
            yield _check_fields([row[i] for i in index], columns, where)
        except BadRow as e:
            yield e


def _record_fields(record: Any, columns: Sequence[str], where: str) -> tuple[str, ...]:
    if not isinstance(record, dict):
        raise BadRow(where, f"expected a JSON object, got {type(record).__name__}")
    missing = [c for c in columns if c not in record]
    if missing:
        raise BadRow(where, f"missing field(s) {', '.join(map(repr, missing))}")
    return _check_fields([record[c] for c in columns], columns, where)


def _jsonl_rows(path: Path, text: str, columns: Sequence[str]) -> Iterator[Any]:
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        for i, record in enumerate(records):
            try:
                yield _record_fields(record, columns, f"{path}: record {i}")
            except BadRow as e:
                yield e
        return
    # split on "\n" only: str.splitlines would also split inside a string holding U+2028
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            yield BadRow(where, f"not valid JSON ({e.msg}, column {e.colno})")
            continue
        try:
            yield _record_fields(record, columns, where)
        except BadRow as e:
            yield e


def _dataset_rows(dataset: Any, columns: Sequence[str], describe: str) -> Iterator[Any]:
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):  # a DatasetDict
        raise ValueError(f"{describe}: holds several splits ({sorted(names)}); pick one")
    if names is None:
        raise TypeError(
            f"source must be a path, a hub id or a datasets.Dataset, got {type(dataset).__name__}"
        )
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(
            f"{describe}: column(s) {', '.join(map(repr, missing))} not in the dataset "
            f"(columns: {', '.join(map(repr, names))})"
        )
    if hasattr(dataset, "select_columns"):
        dataset = dataset.select_columns(list(columns))
    for i, record in enumerate(dataset):
        try:
            yield _record_fields(record, columns, f"{describe}: row {i}")
        except BadRow as e:
            yield e


class PairDataset:
    """Supervised rows: ``dataset[i]`` is ``(anchor, positive)`` or
    ``(anchor, positive, hard_negative)`` (``len(dataset.columns)`` strings, stripped).

    Build with :meth:`from_source`. Attributes: ``columns`` (the column names, in row order),
    ``source`` (a description of where the rows came from), ``n_skipped`` (malformed rows
    skipped with ``skip_bad_rows``).
    """

    def __init__(
        self, rows: Iterable[tuple[str, ...]], columns: Sequence[str], source: str = ""
    ) -> None:
        self.columns = check_columns(columns)
        self.rows: list[tuple[str, ...]] = list(rows)
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"row {i} has {len(row)} fields, expected {len(self.columns)}")
        self.source = source
        self.n_skipped = 0

    @classmethod
    def from_source(
        cls,
        source: str | os.PathLike[str] | Any,
        columns: Sequence[str] | str = DEFAULT_COLUMNS,
        skip_bad_rows: bool = False,
        split: str = "train",
    ) -> PairDataset:
        """Read pairs/triples from a file, a ``datasets.Dataset`` or a hub dataset id.

        Args:
            source: a ``.csv``/``.tsv``/``.jsonl``/``.json`` file (optionally ``.gz``), a
                ``datasets.Dataset``, a ``save_to_disk`` folder or a hub dataset id.
            columns: 2 or 3 column names: anchor, positive[, hard negative].
            skip_bad_rows: skip and count malformed rows instead of raising.
            split: the split to take from a hub dataset or a saved ``DatasetDict``.

        Raises:
            SourceError: no such file (and not a hub id that loads); see
                :func:`textcl.sources.resolve_source`.
            ValueError: an empty file, bad UTF-8 (file and line), a column missing from the
                header, a malformed row (file and line) unless ``skip_bad_rows``, or no valid
                rows at all.
        """
        cols = check_columns(columns)
        if not isinstance(source, (str, os.PathLike)):
            describe = type(source).__name__
            return cls._collect(
                _dataset_rows(source, cols, describe), cols, describe, skip_bad_rows
            )
        src = resolve_source(source, role="data")
        if src.kind == "file":
            path = src.path
            assert path is not None
            fmt, gz = _file_format(path)
            text = _read_text(path, gz)
            if fmt == "jsonl":
                rows = _jsonl_rows(path, text, cols)
            else:
                rows = _csv_rows(path, text, "," if fmt == "csv" else "\t", cols)
            return cls._collect(rows, cols, str(path), skip_bad_rows)
        if src.kind == "dataset":
            assert src.path is not None
            dataset = _load_saved_dataset(src.path, split)
            describe = str(src.path)
            return cls._collect(
                _dataset_rows(dataset, cols, describe), cols, describe, skip_bad_rows
            )
        if src.kind == "folder":
            raise ValueError(
                f"{src.path}: is a folder; pass a {'/'.join(FILE_SUFFIXES)} file or a folder "
                "written by datasets.Dataset.save_to_disk"
            )
        try:
            dataset = _load_hub_dataset(str(src.hub_id), split)
        except Exception as e:
            raise src.hub_error(e) from e
        describe = f"hub:{src.hub_id}"
        return cls._collect(_dataset_rows(dataset, cols, describe), cols, describe, skip_bad_rows)

    @classmethod
    def _collect(
        cls, rows: Iterable[Any], columns: tuple[str, ...], source: str, skip_bad_rows: bool
    ) -> PairDataset:
        good: list[tuple[str, ...]] = []
        skipped: list[BadRow] = []
        for row in rows:
            if isinstance(row, BadRow):
                if not skip_bad_rows:
                    raise ValueError(
                        f"{row}; fix the row or pass skip_bad_rows=True (--skip-bad-rows) "
                        "to skip and count malformed rows"
                    )
                skipped.append(row)
            else:
                good.append(row)
        if skipped:
            logger.warning(
                "%s: skipped %d malformed row(s) of %d (first: %s)",
                source,
                len(skipped),
                len(skipped) + len(good),
                skipped[0],
            )
        if not good:
            detail = f" ({len(skipped)} malformed, skipped; first: {skipped[0]})" if skipped else ""
            raise ValueError(f"{source}: no valid rows{detail}")
        dataset = cls(good, columns, source)
        dataset.n_skipped = len(skipped)
        return dataset

    # ------------------------------------------------------------------ access
    @property
    def has_hard_negatives(self) -> bool:
        return len(self.columns) == 3

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[str, ...]:
        return self.rows[i]

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return iter(self.rows)

    def column(self, name: str) -> list[str]:
        """All values of one column, in row order."""
        return [row[self.columns.index(name)] for row in self.rows]

    def __repr__(self) -> str:
        return (
            f"PairDataset({len(self)} rows, columns={list(self.columns)}, "
            f"n_skipped={self.n_skipped}, source={self.source!r})"
        )
