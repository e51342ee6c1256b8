"""Streaming corpus readers: ``.txt``, ``.jsonl``, ``.parquet``, a saved ``datasets`` folder,
or a Hugging Face hub dataset id.

Every reader yields ``(id, text)`` pairs one record at a time (never the whole corpus) and
``text`` may be blank: :func:`textcl.search.encode_corpus` skips blank texts and counts them.
Default ids: the 1-based line number for ``.txt`` / ``.jsonl``, the 0-based row index for
parquet and datasets; ``id_column`` picks a column instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textcl.errors import InputError
from textcl.sources import SourceError, resolve_source

Record = tuple[str, str | None]
"""``(id, text)``; ``text`` is ``None`` for a null value in a table."""

PARQUET_BATCH_ROWS = 4096


@dataclass
class CorpusSource:
    """A corpus to stream: what it is (``kind``), where, and its identity (``checksum``)."""

    kind: str
    path: str
    checksum: str
    text_column: str = "text"
    id_column: str | None = None
    split: str | None = None
    rows: int | None = None
    """Number of source rows (lines for text files) when known cheaply, else ``None``."""
    _dataset: Any = field(default=None, repr=False)

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

    def validate(self) -> int:
        """Read the whole source once and check every record (UTF-8, JSON, fields, types)
        before anything is written; returns the number of non-blank texts. A streamed hub
        dataset is not read twice: it is checked while encoding.

        Raises InputError naming the file and line (or row) of the first bad record, or
        for a source with no non-blank text.
        """
        if self.kind == "hub":
            return -1
        count = 0
        rows = 0
        for _, text in self.records():
            rows += 1
            if text is not None and text.strip():
                count += 1
        if count == 0:
            raise InputError(
                f"{self.path}: empty corpus, no non-blank text in column/field "
                f"{self.text_column!r} ({rows} rows read); nothing to encode"
            )
        return count

    def records(self) -> Iterator[Record]:
        """Yield ``(id, text)`` in source order."""
        if self.kind == "txt":
            return _txt_records(Path(self.path))
        if self.kind == "jsonl":
            return _jsonl_records(Path(self.path), self.text_column, self.id_column)
        if self.kind == "parquet":
            return _parquet_records(Path(self.path), self.text_column, self.id_column)
        if self.kind in ("datasets", "hub"):
            return _dataset_records(self._dataset, self.path, self.text_column, self.id_column)
        raise ValueError(f"unknown source kind {self.kind!r}")


def _hash_and_count_lines(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    lines = 0
    last = b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return "sha256:" + h.hexdigest(), lines


def open_source(
    source: str | os.PathLike[str],
    *,
    text_column: str = "text",
    id_column: str | None = None,
    split: str = "train",
) -> CorpusSource:
    """Identify a corpus and compute its checksum (sha256 of the file, or the dataset's
    fingerprint; a hub dataset is identified by ``hub:name@split``).

    What ``source`` is, is decided by :func:`textcl.sources.resolve_source`. Raises
    :class:`~textcl.sources.SourceError` for a missing local path or a hub id that does not
    load, and ``ValueError`` for an unsupported file type or a missing column.
    """
    src = resolve_source(source, role="data")
    if src.kind == "file":
        path = src.path
        assert path is not None
        suffix = path.suffix.lower()
        kinds = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
        if suffix not in kinds:
            raise ValueError(
                f"{path}: unsupported corpus file type {suffix!r} "
                "(expected .txt, .jsonl, .parquet, a saved datasets folder or a hub dataset id)"
            )
        kind = kinds[suffix]
        if kind == "parquet":
            checksum, _ = _hash_and_count_lines(path)
            rows = _parquet_check_columns(path, text_column, id_column)
        else:
            checksum, rows = _hash_and_count_lines(path)
        return CorpusSource(
            kind=kind,
            path=str(path.resolve()),
            checksum=checksum,
            text_column=text_column,
            id_column=id_column,
            rows=rows,
        )
    if src.kind == "folder":
        raise SourceError(
            f"{src.path}: a folder, but not one written by datasets' save_to_disk (it has none "
            "of dataset_info.json, dataset_dict.json, state.json); pass a .txt, .jsonl or "
            ".parquet file"
        )
    if src.kind == "dataset":
        assert src.path is not None
        return _open_saved_dataset(src.path, text_column, id_column, split)
    spec = str(src.hub_id)
    try:
        dataset = _load_hub_dataset(spec, split)
    except Exception as e:  # network, auth, missing repo or split
        raise src.hub_error(e) from e
    return CorpusSource(
        kind="hub",
        path=spec,
        checksum=f"hub:{spec}@{split}",
        text_column=text_column,
        id_column=id_column,
        split=split,
        _dataset=dataset,
    )


def _load_hub_dataset(name: str, split: str) -> Any:
    """Stream a hub dataset (the only function that touches the network)."""
    from textcl.data._datasets import stream_hub_dataset

    return stream_hub_dataset(name, split)


def _open_saved_dataset(
    path: Path, text_column: str, id_column: str | None, split: str
) -> CorpusSource:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise ValueError(
            f"{path}: a folder, but not one written by datasets' save_to_disk "
            f"({type(e).__name__}: {e})"
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"{path}: no split {split!r} (has {', '.join(ds)})")
        ds = ds[split]
    columns = list(ds.column_names)
    for col in (text_column, id_column):
        if col is not None and col not in columns:
            raise ValueError(f"{path}: no column {col!r} (columns: {', '.join(columns)})")
    return CorpusSource(
        kind="datasets",
        path=str(path.resolve()),
        checksum=f"fingerprint:{ds._fingerprint}",
        text_column=text_column,
        id_column=id_column,
        split=split,
        rows=len(ds),
        _dataset=ds,
    )


def _txt_records(path: Path) -> Iterator[Record]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark
            yield str(lineno), line.rstrip("\r\n")


def _jsonl_records(path: Path, text_column: str, id_column: str | None) -> Iterator[Record]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                yield str(lineno), None  # a blank line: no record, counted as skipped
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield _row_record(obj, text_column, id_column, where, default_id=str(lineno))


def _row_record(
    row: dict[str, Any], text_column: str, id_column: str | None, where: str, default_id: str
) -> Record:
    if text_column not in row:
        raise InputError(
            f"{where}: no field {text_column!r} (fields: {', '.join(map(str, row))}); "
            "choose the text field with --text-column"
        )
    text = row[text_column]
    if text is not None and not isinstance(text, str):
        raise InputError(f"{where}: field {text_column!r} is {type(text).__name__}, not a string")
    if id_column is None:
        return default_id, text
    if id_column not in row or row[id_column] is None:
        raise InputError(f"{where}: no id field {id_column!r}")
    return str(row[id_column]), text


def _parquet_check_columns(path: Path, text_column: str, id_column: str | None) -> int:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise InputError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    names = pf.schema_arrow.names
    for col in (text_column, id_column):
        if col is not None and col not in names:
            raise InputError(f"{path}: no column {col!r} (columns: {', '.join(names)})")
    return int(pf.metadata.num_rows)


def _parquet_records(path: Path, text_column: str, id_column: str | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    columns = [text_column] + ([id_column] if id_column else [])
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        data = batch.to_pydict()
        texts = data[text_column]
        ids = data[id_column] if id_column else None
        for j, text in enumerate(texts):
            where = f"{path} row {row}"
            if text is not None and not isinstance(text, str):
                raise InputError(f"{where}: column {text_column!r} is not a string column")
            if ids is not None and ids[j] is None:
                raise InputError(f"{where}: null id in column {id_column!r}")
            yield (str(ids[j]) if ids is not None else str(row)), text
            row += 1


def _dataset_records(
    dataset: Any, name: str, text_column: str, id_column: str | None
) -> Iterator[Record]:
    for row_index, row in enumerate(dataset):
        yield _row_record(row, text_column, id_column, f"{name} row {row_index}", str(row_index))
