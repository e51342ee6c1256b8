"""Supervised training data: (anchor, positive) pairs and (anchor, positive, hard negative)
triples.

Sources (:meth:`PairDataset.from_source`), all read by :mod:`textcl.data.readers`:

* a CSV (``.csv``) or TSV (``.tsv``/``.tab``) file with a header row naming the columns, read
  with the :mod:`csv` module (quoted fields, embedded delimiters and newlines work);
* a JSON-lines file (``.jsonl``/``.ndjson``/``.json``: one object per line; a ``.json`` file
  holding one array of objects works too);
* any of those compressed with gzip (``.csv.gz``, ...), or a ``.parquet`` file;
* a ``datasets.Dataset``, a folder written by ``Dataset.save_to_disk``, or a Hugging Face
  hub dataset id.

SimCSE's supervised NLI data (``nli_for_simcse.csv``) has the columns ``sent0`` (premise),
``sent1`` (entailment hypothesis) and ``hard_neg`` (contradiction hypothesis), the default
``columns``; pass two names for plain pairs.

A row is malformed when a requested column is missing, a field is empty, blank or not a
string (JSON ``null``, a number), a CSV/TSV row has a different number of fields than the
header, or a JSON line does not parse to an object. By default the first malformed row is
an :class:`~textcl.errors.InputError` (a ``ValueError``) naming the file and line; with
``skip_bad_rows=True`` malformed rows are skipped, counted in :attr:`PairDataset.n_skipped`
and reported with one logged warning. Rows are never dropped silently. Blank lines are not rows (as in the :mod:`csv` module).
The whole dataset is held in memory (SimCSE's 275k NLI triples take about 100 MB).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from textcl.data import readers
from textcl.data.readers import BadRow, Row
from textcl.errors import InputError
from textcl.sources import resolve_source

logger = logging.getLogger(__name__)

DEFAULT_COLUMNS: tuple[str, ...] = ("sent0", "sent1", "hard_neg")
"""SimCSE's NLI triple columns: anchor (premise), positive (entailment), hard negative
(contradiction)."""

FILE_SUFFIXES = tuple(s for s in readers.FILE_SUFFIXES if s not in readers.TEXT_SUFFIXES)
"""File types that hold columns (all but ``.parquet`` also with ``.gz``)."""


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
                ``.parquet`` file, a ``datasets.Dataset``, a ``save_to_disk`` folder or a hub dataset id.
            columns: 2 or 3 column names: anchor, positive[, hard negative].
            skip_bad_rows: skip and count malformed rows instead of raising.
            split: the split to take from a hub dataset or a saved ``DatasetDict``.

        Raises:
            SourceError: no such file (and not a hub id that loads); see
                :func:`textcl.sources.resolve_source`.
            MissingColumnError: a column missing from the header, schema or dataset (the
                message lists the columns found).
            ValueError (InputError): an empty file, bad UTF-8 (file and line), a text file, a
                malformed row (file and line) unless ``skip_bad_rows``, or no valid
                rows at all.
        """
        cols = check_columns(columns)
        if not isinstance(source, (str, os.PathLike)):
            describe = type(source).__name__
            rows = readers.read_dataset(source, cols, describe)
            return cls._collect(rows, cols, describe, skip_bad_rows)
        src = resolve_source(source, role="data")
        if src.kind == "file":
            path = src.path
            assert path is not None
            fmt, _ = readers.file_format(path)
            if fmt == "txt":
                raise InputError(
                    f"{path}: a text file has no columns; pass a {'/'.join(FILE_SUFFIXES)} "
                    "file with the columns " + ", ".join(map(repr, cols))
                )
            return cls._collect(
                readers.read_file(path, cols, fmt=fmt), cols, str(path), skip_bad_rows
            )
        if src.kind == "folder":
            raise InputError(
                f"{src.path}: is a folder; pass a {'/'.join(FILE_SUFFIXES)} file or a folder "
                "written by datasets.Dataset.save_to_disk"
            )
        describe = str(src.path) if src.kind == "dataset" else f"hub:{src.hub_id}"
        dataset = readers.load_dataset_source(src, split)
        return cls._collect(
            readers.read_dataset(dataset, cols, describe), cols, describe, skip_bad_rows
        )

    @classmethod
    def _collect(
        cls,
        rows: Iterable[Row | BadRow],
        columns: tuple[str, ...],
        source: str,
        skip_bad_rows: bool,
    ) -> PairDataset:
        good: list[tuple[str, ...]] = []
        skipped: list[BadRow] = []
        for item in rows:
            row: tuple[str, ...] | BadRow
            if isinstance(item, BadRow):
                row = item
            elif item.values is None:  # a blank line is not a row
                continue
            else:
                try:
                    row = _check_fields(item.values, columns, item.where)
                except BadRow as e:
                    row = e
            if isinstance(row, BadRow):
                if not skip_bad_rows:
                    error = readers.MissingColumnError if row.missing else InputError
                    raise error(
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
            raise InputError(f"{source}: no valid rows{detail}")
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
