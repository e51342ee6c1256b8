"""Raw-text training data: one sentence per line streamed from disk, or a text column.

A :class:`TextCorpus` of plain text files scans its files once, checking every line (UTF-8, blank lines) and
recording only byte offsets and a 64-bit hash per sentence; the text itself stays on disk
and is read back by seeking when a batch needs it. So a corpus of millions of lines costs
16 bytes per line of memory, and a bad file fails before training starts, naming the file
and line.

:func:`plan_epoch` turns a corpus into the batches of one epoch: a seeded permutation in
which a sentence whose exact duplicate is already in the current batch is deferred to a
later batch (duplicates inside a batch are false negatives for in-batch contrastive loss).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from textcl.data import readers
from textcl.data.readers import TEXT_SUFFIXES
from textcl.errors import InputError
from textcl.sources import resolve_source


def text_hash64(text: str) -> int:
    """64-bit hash of a sentence (blake2b, little-endian): equal text, equal hash. Used to
    keep exact duplicates out of one batch and to fingerprint training data."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


_hash64 = text_hash64  # old private name, kept until every caller uses text_hash64


def _string_features(column: str) -> Any:
    import datasets

    return datasets.Features({column: datasets.Value("string")})


class TextCorpus:
    """Sentences from text files (one per line, blank lines skipped) or a text column (of a
    jsonl/csv/tsv/parquet file or a ``datasets`` source; null and blank values skipped).

    Build with :meth:`from_source`. ``len(corpus)`` is the number of sentences and
    ``corpus[i]`` reads sentence ``i`` (leading/trailing whitespace stripped).
    """

    def __init__(self) -> None:
        self.files: list[Path] = []
        self._file_index = array("H")
        self._offsets = array("q")
        self._hashes = array("Q")
        self._handles: dict[int, BinaryIO] = {}
        self._dataset: Any = None
        self._rows = array("q")
        self._column = "text"
        self.n_blank = 0
        self.source = ""

    # ------------------------------------------------------------------ building
    @classmethod
    def from_source(
        cls,
        source: str | os.PathLike[str] | Any,
        text_column: str = "text",
        split: str = "train",
        streaming: bool = False,
    ) -> TextCorpus:
        """A corpus from a file, a folder of ``.txt`` files, a ``datasets.Dataset``, a
        folder written by ``Dataset.save_to_disk``, or a Hugging Face hub dataset id.

        Which of those ``source`` is, is decided by :func:`textcl.sources.resolve_source`;
        files are read by :mod:`textcl.data.readers`. A plain text file (``.txt``, or any
        name that is not another readable format) is one sentence a line, streamed from
        disk; a ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` file (optionally
        ``.gz``, not parquet), a ``.txt.gz`` file and every ``datasets`` source give the
        ``text_column`` (``--text-column``), held in memory. With ``streaming=True`` a hub
        dataset is streamed (``datasets`` streaming, as ``textcl encode`` reads hub
        corpora): only the ``text_column`` of ``split`` is read, row by row, instead of
        downloading the dataset files first.

        Raises :class:`~textcl.sources.SourceError` for a missing path or a hub id that does
        not load, :class:`~textcl.data.readers.MissingColumnError` for a missing text column
        (listing the columns found), and ``ValueError`` (:class:`~textcl.errors.InputError`)
        for an empty corpus, a file that is not UTF-8 (with file and line) or a malformed
        row.
        """
        corpus = cls()
        if not isinstance(source, (str, os.PathLike)):
            corpus._scan_dataset(source, text_column, describe=type(source).__name__)
            return corpus
        src = resolve_source(source, role="data")
        if src.kind == "file":
            path = src.path
            assert path is not None
            try:
                fmt, gz = readers.file_format(path)
            except readers.UnknownFormatError:  # any other name: one sentence a line
                fmt, gz = "txt", False
            if fmt == "txt" and not gz:
                corpus._scan_files([path])
            else:
                rows = readers.read_file(path, (text_column,), fmt=fmt)
                corpus._scan_rows(rows, text_column, str(path))
        elif src.kind == "folder":
            path = src.path
            assert path is not None
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not files:
                raise InputError(f"{path}: folder holds no text files ({', '.join(TEXT_SUFFIXES)})")
            corpus._scan_files(files)
        elif src.kind == "dataset":
            assert src.path is not None
            dataset = readers.load_dataset_source(src, split)
            corpus._scan_dataset(dataset, text_column, str(src.path))
        else:
            describe = f"hub:{src.hub_id}"
            dataset = readers.load_dataset_source(src, split, streaming=streaming)
            if streaming:
                corpus._scan_rows(
                    readers.read_dataset(dataset, (text_column,), describe), text_column, describe
                )
            else:
                corpus._scan_dataset(dataset, text_column, describe)
        return corpus

    def _scan_files(self, files: Sequence[Path]) -> None:
        if len(files) > 65535:
            raise InputError(f"too many files ({len(files)}); at most 65535 per corpus")
        self.files = list(files)
        self.source = (
            str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
        )
        for fi, path in enumerate(files):
            n_before = len(self._offsets)
            for _, offset, line in readers.read_lines(path, gz=False):
                text = line.strip()
                if text:
                    self._file_index.append(fi)
                    self._offsets.append(offset)
                    self._hashes.append(text_hash64(text))
                else:
                    self.n_blank += 1
            if len(self._offsets) == n_before and len(files) == 1:
                raise InputError(f"{path}: no sentences (the file is empty or blank)")
        if not self._offsets:
            raise InputError(f"{self.source}: no sentences (all files are empty or blank)")

    def _scan_rows(
        self, rows: Iterable[readers.Row | readers.BadRow], column: str, describe: str
    ) -> None:
        """Read ``column`` of reader rows (a file or a streamed dataset) into an in-memory
        dataset; the first malformed row is an error."""
        import datasets

        values: list[str | None] = []
        for row in rows:
            if isinstance(row, readers.BadRow):
                if row.missing:
                    raise readers.MissingColumnError(
                        f"{row.where} has no text column {column!r} (columns: "
                        f"{readers.quoted(row.found)}); pass text_column (--text-column)"
                    )
                raise row
            if row.values is None:  # a blank line of a JSON-lines file
                self.n_blank += 1
                continue
            value = row.values[0]
            if value is not None and not isinstance(value, str):
                raise InputError(
                    f"{row.where} column {column!r} is {type(value).__name__}, not a string"
                )
            values.append(value)
        if not values:
            raise InputError(f"{describe}: no sentences in column {column!r}")
        self._scan_dataset(
            datasets.Dataset.from_dict({column: values}, features=_string_features(column)),
            column,
            describe,
        )

    def _scan_dataset(self, dataset: Any, column: str, describe: str) -> None:
        names = getattr(dataset, "column_names", None)
        if names is None or isinstance(names, dict):
            raise InputError(
                f"{describe}: not a dataset with columns (got {type(dataset).__name__}); "
                "pass a datasets.Dataset or one split of a DatasetDict"
            )
        error = readers.missing_columns(
            describe,
            (column,),
            names,
            "dataset",
            f"; no text column {column!r}, pass text_column (--text-column)",
        )
        if error is not None:
            raise error
        self._dataset = dataset
        self._column = column
        self.source = describe
        for row, value in enumerate(dataset[column]):
            if value is None:
                self.n_blank += 1
                continue
            if not isinstance(value, str):
                raise InputError(
                    f"{describe}: row {row} column {column!r} is {type(value).__name__}, "
                    "not a string"
                )
            text = value.strip()
            if text:
                self._rows.append(row)
                self._hashes.append(text_hash64(text))
            else:
                self.n_blank += 1
        if not self._rows:
            raise InputError(f"{describe}: no sentences in column {column!r}")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._rows) if self._dataset is not None else len(self._offsets)

    @property
    def hashes(self) -> np.ndarray:
        """``(N,)`` uint64 hash of each sentence (equal text, equal hash)."""
        return np.frombuffer(self._hashes, dtype=np.uint64)

    def __getitem__(self, i: int) -> str:
        if self._dataset is not None:
            value: str = self._dataset[int(self._rows[i])][self._column]
            return value.strip()
        fi = self._file_index[i]
        fh = self._handles.get(fi)
        if fh is None:
            fh = self._handles[fi] = open(self.files[fi], "rb")  # noqa: SIM115 (cached)
        fh.seek(self._offsets[i])
        return fh.readline().decode("utf-8").strip()

    def texts(self, indices: Sequence[int]) -> list[str]:
        return [self[int(i)] for i in indices]

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def __repr__(self) -> str:
        return f"TextCorpus({self.source!r}, sentences={len(self)})"


def plan_epoch(
    hashes: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    drop_last: bool = False,
    order: np.ndarray | None = None,
) -> list[list[int]]:
    """The batches of one epoch: indices in a seeded random order, no duplicate text inside
    a batch.

    Args:
        hashes: ``(N,)`` one hash per item; items with equal hashes never share a batch.
        batch_size: items per batch (>= 2: a contrastive batch needs negatives).
        seed, epoch: the permutation is a function of both (reshuffled each epoch).
        drop_last: drop every batch smaller than ``batch_size`` (the last one, and those
            that deferred duplicates left short): then every batch is full.
        order: the item order to fill batches from (a permutation, e.g.
            :func:`textcl.train.batches.length_grouped_order`); default: seeded random.

    Returns a list of batches (lists of item indices). Each item appears exactly once,
    except that batches of a single item are dropped (they have no negatives) and, with
    ``drop_last``, every incomplete batch. A deferred duplicate joins the first later
    batch that does not contain its text.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 for in-batch negatives, got {batch_size}")
    if order is None:
        order = np.random.default_rng([seed, epoch]).permutation(len(hashes))
    batches: list[list[int]] = []
    pending: deque[int] = deque()
    current: list[int] = []
    seen: set[int] = set()

    def take(i: int) -> bool:
        h = int(hashes[i])
        if h in seen:
            return False
        seen.add(h)
        current.append(i)
        return True

    def flush() -> None:
        batches.append(current.copy())
        current.clear()
        seen.clear()

    for i in order:
        # Deferred items get the first chance at each new batch.
        for _ in range(len(pending)):
            if len(current) >= batch_size:
                break
            j = pending.popleft()
            if not take(j):
                pending.append(j)
        if len(current) < batch_size and not take(int(i)):
            pending.append(int(i))
        if len(current) >= batch_size:
            flush()
    while pending:
        for _ in range(len(pending)):
            j = pending.popleft()
            if not take(j):
                pending.append(j)
            if len(current) >= batch_size:
                flush()
        if pending and current:
            flush()  # what is left duplicates this batch's texts: start a new batch
    if current:
        flush()
    if drop_last:
        # Deferred duplicates can leave short batches before the end (e.g. 4,4,3,2,4):
        # with drop_last every batch is full (torchrun splits each evenly over ranks).
        return [b for b in batches if len(b) == batch_size]
    return [b for b in batches if len(b) >= 2]
