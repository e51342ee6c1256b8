"""Corpora for ``textcl encode``: any input :mod:`textcl.data.readers` reads, as ``(id, text)``.

A :class:`CorpusSource` is opened once (:func:`open_source`: what the spec is, which format,
which columns) and then read forward: :meth:`CorpusSource.scan` reads the whole input once
to fingerprint it (``checksum``), count its rows and check every record (UTF-8, JSON,
fields, types) before anything is written; :meth:`CorpusSource.records` reads it again,
one record at a time (never the whole corpus), to encode it. A streamed hub dataset is read
once only: it is checked while encoding.

Inputs: ``.txt`` (one text a line), ``.jsonl``/``.json``, ``.csv``/``.tsv`` (those
optionally ``.gz``), ``.parquet``, a ``save_to_disk`` folder, or a hub dataset id
(streamed). ``text`` may be blank or ``None``: :func:`textcl.search.encode_corpus` skips
blank texts and counts them. Default ids: the 1-based line number for text and JSON-lines
files, the 0-based row index for tables (csv/tsv, parquet, datasets); ``id_column`` picks
a column instead.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textcl.data import readers
from textcl.errors import InputError
from textcl.sources import SourceError, resolve_source

Record = tuple[str, str | None]
"""``(id, text)``; ``text`` is ``None`` for a null value in a table or a blank JSON line."""

_COLUMN_HINT = "; no column {missing}: choose the columns with --text-column / --id-column"


@dataclass
class CorpusSource:
    """A corpus to read: what it is (``kind``: a file format, ``datasets`` or ``hub``),
    where, and its identity (``checksum``, set by :meth:`scan` for local sources)."""

    kind: str
    path: str
    checksum: str
    text_column: str = "text"
    id_column: str | None = None
    split: str | None = None
    rows: int | None = None
    """Number of source rows (lines for text files) once known, else ``None``."""
    count: int | None = None
    """Number of non-blank texts, once :meth:`scan` has read the source."""
    stat: tuple[int, int, int] | None = None
    """``(size, mtime_ns, inode)`` of a corpus file when :meth:`scan` started reading it
    (``None`` for datasets and hub sources): :meth:`check_unchanged` compares it."""
    _dataset: Any = field(default=None, repr=False)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.text_column,) + ((self.id_column,) if self.id_column else ())

    def describe(self) -> dict[str, Any]:
        """The manifest's ``source`` entry."""
        return {
            "kind": self.kind,
            "path": self.path,
            "checksum": self.checksum,
            "text_column": self.text_column,
            "id_column": self.id_column,
            "split": self.split,
            "rows": self.rows,
        }

    def scan(self) -> int:
        """Read the whole source once, forward: its checksum (sha256 of a file's content),
        its row count, and a check of every record (UTF-8, JSON, fields, types) before
        anything is written; returns the number of non-blank texts. A streamed hub dataset
        is not read twice: it returns -1 and is checked while encoding.

        Raises InputError naming the file and line (or row) of the first bad record, or
        for a source with no non-blank text.
        """
        if self.kind == "hub":
            return -1
        if self.count is not None:
            return self.count
        digest = hashlib.sha256() if self.kind not in ("datasets",) else None
        if self.kind != "datasets":
            self.stat = self._file_stat()
        count = 0
        rows = 0
        for _, text in self.records(digest=digest):
            rows += 1
            if text is not None and text.strip():
                count += 1
        if digest is not None:
            self.checksum = "sha256:" + digest.hexdigest()
        self.rows = rows
        if count == 0:
            raise InputError(
                f"{self.path}: empty corpus, no non-blank text in column/field "
                f"{self.text_column!r} ({rows} rows read); nothing to encode"
            )
        self.count = count
        return count

    validate = scan
    """The old name of :meth:`scan`."""

    def _file_stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise InputError(
                f"{self.path}: the corpus file was removed while it was being encoded; the "
                "index is left unfinished"
            ) from None
        return st.st_size, st.st_mtime_ns, st.st_ino

    def check_unchanged(self, digest: Any = None) -> None:
        """Raise :class:`~textcl.errors.InputError` naming the file when the corpus file is
        no longer the one :meth:`scan` read: another size, modification time or inode, or
        (``digest``: a hashlib object fed the whole file by a later read) other content
        than :attr:`checksum`. Datasets and hub sources are not checked."""
        if self.stat is None:
            return
        changed = self._file_stat() != self.stat
        if not changed and digest is not None:
            changed = "sha256:" + digest.hexdigest() != self.checksum
        if changed:
            raise InputError(
                f"{self.path}: the corpus file changed while it was being encoded (its size, "
                "modification time or content differ from when encoding started); the index "
                "is left unfinished, never marked complete: rerun `textcl encode` once the "
                "file is final (with --overwrite if its content changed)"
            )

    def records(self, digest: Any = None) -> Iterator[Record]:
        """Yield ``(id, text)`` in source order (``digest``: a hashlib object fed the
        file's content on the way)."""
        if self.kind in ("datasets", "hub"):
            rows = readers.read_dataset(self._dataset, self.columns, self.path)
        else:
            rows = readers.read_file(Path(self.path), self.columns, fmt=self.kind, digest=digest)
        for row in rows:
            yield self._record(row)

    def _record(self, row: readers.Row | readers.BadRow) -> Record:
        if isinstance(row, readers.BadRow):
            if row.missing:
                raise readers.MissingColumnError(
                    f"{row.where}: no field {', '.join(map(repr, row.missing))} (fields: "
                    f"{', '.join(map(str, row.found))}); choose the text field with "
                    "--text-column"
                )
            raise row
        if self.kind == "txt":
            return row.key, row.values[0] if row.values else None
        if row.values is None:  # a blank line: no record, counted as skipped
            return row.key, None
        text = readers.text_value(row.values[0], self.text_column, row.where)
        if self.id_column is None:
            return row.key, text
        rid = row.values[1]
        if rid is None:
            raise InputError(f"{row.where}: no id field {self.id_column!r} (null)")
        return str(rid), text


def open_source(
    source: str | os.PathLike[str],
    *,
    text_column: str = "text",
    id_column: str | None = None,
    split: str = "train",
    scan: bool = True,
) -> CorpusSource:
    """Identify a corpus; with ``scan`` (the default) also read it once to compute its
    checksum (sha256 of a file's content, or the dataset's fingerprint; a hub dataset is
    identified by ``hub:name@split``) and check it (:meth:`CorpusSource.scan`).

    What ``source`` is, is decided by :func:`textcl.sources.resolve_source`. Raises
    :class:`~textcl.sources.SourceError` for a missing local path or a hub id that does not
    load, and :class:`~textcl.errors.InputError` for an unsupported file type or a missing
    column (:class:`~textcl.data.readers.MissingColumnError`, listing the columns found).
    """
    corpus = _open(source, text_column, id_column, split)
    if scan:
        corpus.scan()
    return corpus


def _open(
    source: str | os.PathLike[str], text_column: str, id_column: str | None, split: str
) -> CorpusSource:
    src = resolve_source(source, role="data")
    if src.kind == "file":
        path = src.path
        assert path is not None
        try:
            fmt, _ = readers.file_format(path)
        except readers.UnknownFormatError:
            raise readers.UnknownFormatError(
                f"{path}: unsupported corpus file type {path.suffix.lower()!r} (expected "
                f"{', '.join(readers.FILE_SUFFIXES)}, optionally .gz, a saved datasets folder "
                "or a hub dataset id)"
            ) from None
        corpus = CorpusSource(
            kind=fmt,
            path=str(path.resolve()),
            checksum="",
            text_column=text_column,
            id_column=id_column,
        )
        if fmt == "parquet":  # the footer: columns and rows, without reading the data
            names, corpus.rows = readers.parquet_columns(path)
            _check_columns(str(path), corpus.columns, names, "file")
        return corpus
    if src.kind == "folder":
        raise SourceError(
            f"{src.path}: a folder, but not one written by datasets' save_to_disk (it has none "
            "of dataset_info.json, dataset_dict.json, state.json); pass a corpus file "
            f"({', '.join(readers.FILE_SUFFIXES)})"
        )
    if src.kind == "dataset":
        assert src.path is not None
        try:
            ds = readers.load_dataset_source(src, split)
        except InputError:
            raise
        except ValueError as e:  # no such split
            raise InputError(str(e)) from None
        except Exception as e:
            raise InputError(
                f"{src.path}: a folder, but not one written by datasets' save_to_disk "
                f"({type(e).__name__}: {e})"
            ) from e
        corpus = CorpusSource(
            kind="datasets",
            path=str(src.path.resolve()),
            checksum=f"fingerprint:{ds._fingerprint}",
            text_column=text_column,
            id_column=id_column,
            split=split,
            rows=len(ds),
            _dataset=ds,
        )
        _check_columns(str(src.path), corpus.columns, list(ds.column_names), "dataset")
        return corpus
    spec = str(src.hub_id)
    return CorpusSource(
        kind="hub",
        path=spec,
        checksum=f"hub:{spec}@{split}",
        text_column=text_column,
        id_column=id_column,
        split=split,
        _dataset=readers.load_dataset_source(src, split, streaming=True),
    )


def _check_columns(describe: str, wanted: tuple[str, ...], found: list[str], where: str) -> None:
    error = readers.missing_columns(describe, wanted, found, where, _COLUMN_HINT)
    if error is not None:
        raise error
