"""One reader for every input: training text, pairs/triples, encode and search sources.

What a spec *is* (a file, a folder, a ``save_to_disk`` folder or a hub id) is decided by
:func:`textcl.sources.resolve_source`; this module reads it. It owns:

* file formats, chosen by the name (:func:`file_format`): ``.txt``/``.text`` (one text a
  line), ``.jsonl``/``.ndjson`` (one JSON object a line), ``.json`` (JSON lines, or one
  array of objects), ``.csv``, ``.tsv``/``.tab`` (a header row naming the columns, read with
  :mod:`csv`: quoted fields, embedded delimiters and newlines work), ``.parquet``; the text
  formats optionally gzipped (``.txt.gz``, ``.jsonl.gz``, ``.csv.gz``, ...);
* ``datasets`` sources: a ``Dataset`` object, a ``save_to_disk`` folder, a hub dataset id
  (downloaded, or streamed row by row) (:func:`load_dataset_source`, :func:`read_dataset`);
* one meaning of a column name: a column of a table (csv/tsv header, parquet schema,
  dataset features) or a field of a JSON object; a plain text file has no columns (each
  line is the text);
* one set of errors, each naming where: a missing column is a :class:`MissingColumnError`
  listing the columns found; bad UTF-8 names the file and 1-based line; a UTF-8 byte order
  mark at the start of a file is stripped.

Readers yield :class:`Row` records one at a time (never the whole input), or a
:class:`BadRow` for a malformed row (bad JSON, a wrong number of fields, a JSON object
without a requested field): the consumer decides whether that stops it or is skipped and
counted. Values are returned as stored (``None`` for a null, numbers stay numbers):
:func:`text_value` is the shared check that a value is a string.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from textcl.data import _datasets
from textcl.errors import InputError
from textcl.sources import Source

TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".text")
JSONL_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson")
JSON_SUFFIXES: tuple[str, ...] = (".json",)
CSV_SUFFIXES: tuple[str, ...] = (".csv",)
TSV_SUFFIXES: tuple[str, ...] = (".tsv", ".tab")
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet",)
_FORMATS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("txt", TEXT_SUFFIXES),
    ("jsonl", JSONL_SUFFIXES),
    ("json", JSON_SUFFIXES),
    ("csv", CSV_SUFFIXES),
    ("tsv", TSV_SUFFIXES),
    ("parquet", PARQUET_SUFFIXES),
)
FILE_SUFFIXES: tuple[str, ...] = tuple(s for _, suffixes in _FORMATS for s in suffixes)
"""Every readable file suffix (all but ``.parquet`` also with ``.gz``)."""
PARQUET_BATCH_ROWS = 4096
BOM = "\ufeff"


class MissingColumnError(InputError):
    """A requested column (or JSON field) is not in the input; the message names the input
    and lists the columns it has (exit 2)."""


class UnknownFormatError(InputError):
    """A file whose name has none of :data:`FILE_SUFFIXES` (exit 2)."""


class BadRow(InputError):
    """A malformed row: ``where`` (``file:line``, ``file row i`` or ``name: row i``) and the
    reason. For a JSON object without a requested field, ``missing`` names the fields and
    ``found`` lists those it has."""

    def __init__(
        self,
        where: str,
        reason: str,
        *,
        missing: Sequence[str] = (),
        found: Sequence[str] = (),
    ) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason
        self.missing = tuple(missing)
        self.found = tuple(found)


@dataclass(frozen=True)
class Row:
    """One record of an input.

    ``values`` holds the requested columns' values in the requested order (for a text file:
    the line, newline removed), or is ``None`` for a blank line of a JSON-lines file (no
    record). ``key`` is the default id: the 1-based line number for text and JSON-lines
    files, the 0-based row index for tables (csv/tsv, parquet, datasets, a JSON array).
    ``offset`` is the byte offset of a text file's line (after a byte order mark), else -1.
    """

    where: str
    key: str
    values: tuple[Any, ...] | None
    offset: int = -1


def quoted(names: Iterable[Any]) -> str:
    return ", ".join(repr(str(n)) for n in names)


def missing_columns(
    describe: str, wanted: Sequence[str], found: Sequence[Any], container: str, hint: str = ""
) -> MissingColumnError | None:
    """The error for the ``wanted`` columns not in ``found`` (``None`` when all are there):
    ``"<describe>: column(s) 'a' not in the <container> (columns: 'x', 'y')<hint>"``, where
    ``{missing}`` in ``hint`` becomes the missing names."""
    missing = [c for c in wanted if c not in found]
    if not missing:
        return None
    return MissingColumnError(
        f"{describe}: column(s) {quoted(missing)} not in the {container} "
        f"(columns: {quoted(found)}){hint.replace('{missing}', quoted(missing))}"
    )


def text_value(value: Any, name: str, where: str) -> str | None:
    """``value`` if it is a string or ``None`` (a null); else :class:`BadRow`."""
    if value is None or isinstance(value, str):
        return value
    raise BadRow(where, f"field {name!r} is {type(value).__name__}, not a string")


# ------------------------------------------------------------------------------ files
def file_format(path: Path) -> tuple[str, bool]:
    """``(format, gzipped)`` from the file name: format is one of ``txt``, ``jsonl``,
    ``json``, ``csv``, ``tsv``, ``parquet``; raises :class:`UnknownFormatError`."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for fmt, suffixes in _FORMATS:
        if name.endswith(suffixes) and not (gz and fmt == "parquet"):
            return fmt, gz
    raise UnknownFormatError(
        f"{path}: unknown file type; expected one of {', '.join(FILE_SUFFIXES)} "
        "(all but .parquet optionally .gz)"
    )


def _open_binary(path: Path, gz: bool) -> IO[bytes]:
    """``path`` opened for reading bytes (decompressed when ``gz``); an ``OSError`` such as
    permission denied propagates (the CLI reports it with exit 5)."""
    return cast(IO[bytes], gzip.open(path, "rb")) if gz else path.open("rb")


def read_lines(
    path: Path, gz: bool | None = None, digest: Any = None, *, keep_ends: bool = False
) -> Iterator[tuple[int, int, str]]:
    """``(line number, byte offset, line)`` for each line of a text file (1-based line
    numbers; the line without its ``\\n``/``\\r\\n``). Split on ``\\n`` only, so a line may
    hold U+2028 and the like. A UTF-8 byte order mark is stripped (the first offset is
    after it); bad UTF-8 and a damaged gzip stream are :class:`InputError` naming the file
    and line. ``gz`` defaults to the name ending in ``.gz``; ``digest`` (a hashlib object)
    is fed the (decompressed) bytes as they are read; ``keep_ends`` keeps each line's
    ending (for :mod:`csv`, where a quoted field may hold ``\r\n``)."""
    if gz is None:
        gz = path.name.lower().endswith(".gz")
    with _open_binary(path, gz) as fh:
        offset = 0
        lineno = 0
        try:
            for raw in fh:
                lineno += 1
                if digest is not None:
                    digest.update(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(
                        f"{path}:{lineno}: not valid UTF-8 (byte {e.start}: {e.reason})"
                    ) from None
                start = offset
                offset += len(raw)
                if lineno == 1 and line.startswith(BOM):
                    line = line[1:]
                    start += len(BOM.encode("utf-8"))
                yield lineno, start, line if keep_ends else line.rstrip("\r\n")
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # a damaged .gz file
            raise InputError(
                f"{path}:{lineno + 1}: cannot read ({type(e).__name__}: {e})"
            ) from None


def read_file(
    path: Path, columns: Sequence[str] = (), *, fmt: str | None = None, digest: Any = None
) -> Iterator[Row | BadRow]:
    """The rows of one file, in file order (see :class:`Row`); ``columns`` are ignored for a
    text file (its line is the one value). Raises :class:`UnknownFormatError`,
    :class:`MissingColumnError` (a table's header or schema lacks a column) and
    :class:`InputError` (bad UTF-8 with file and line, an empty table file, an unreadable
    parquet file). ``digest`` (a hashlib object) is fed the file's content (decompressed)."""
    gz = path.name.lower().endswith(".gz")
    if fmt is None:
        fmt, gz = file_format(path)
    if fmt == "txt":
        for lineno, offset, line in read_lines(path, gz, digest):
            yield Row(f"{path}:{lineno}", str(lineno), (line,), offset)
    elif fmt in ("jsonl", "json"):
        yield from _json_rows(read_lines(path, gz, digest), path, columns, array_ok=fmt == "json")
    elif fmt in ("csv", "tsv"):
        yield from _csv_rows(
            read_lines(path, gz, digest, keep_ends=True),
            path,
            "," if fmt == "csv" else "\t",
            columns,
        )
    elif fmt == "parquet":
        if digest is not None:
            with _open_binary(path, False) as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
        yield from _parquet_rows(path, columns)
    else:
        raise UnknownFormatError(f"{path}: unknown format {fmt!r}")


def _empty(path: Path) -> InputError:
    return InputError(f"{path}: the file is empty")


def _object_row(record: Any, columns: Sequence[str], where: str, key: str) -> Row | BadRow:
    if not isinstance(record, dict):
        return BadRow(where, f"expected a JSON object, got {type(record).__name__}")
    missing = [c for c in columns if c not in record]
    if missing:
        return BadRow(
            where,
            f"missing field(s) {quoted(missing)} (fields: {quoted(record)})",
            missing=missing,
            found=list(record),
        )
    return Row(where, key, tuple(record[c] for c in columns))


def _json_rows(
    lines: Iterator[tuple[int, int, str]], path: Path, columns: Sequence[str], *, array_ok: bool
) -> Iterator[Row | BadRow]:
    seen = False
    for lineno, _, line in lines:
        if not line.strip():
            if seen or not array_ok:
                yield Row(f"{path}:{lineno}", str(lineno), None)
            continue
        if not seen and array_ok and line.lstrip().startswith("["):  # one array of objects
            text = "\n" * (lineno - 1) + line + "\n" + "\n".join(rest for _, _, rest in lines)
            try:
                records = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(records, list):
                raise InputError(f"{path}: expected a JSON array of objects")
            for i, record in enumerate(records):
                yield _object_row(record, columns, f"{path}: record {i}", str(i))
            return
        seen = True
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield BadRow(where, f"not valid JSON ({e.msg}, column {e.colno})")
            continue
        yield _object_row(record, columns, where, str(lineno))
    if not seen:
        raise _empty(path)


def _csv_rows(
    lines: Iterator[tuple[int, int, str]], path: Path, delimiter: str, columns: Sequence[str]
) -> Iterator[Row | BadRow]:
    # csv.reader counts the lines it takes (line_num): with blank lines before the header,
    # and quoted fields spanning lines, rows still report their line.
    reader = csv.reader((line for _, _, line in lines), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    while header is None:
        try:
            row = next(reader)
        except StopIteration:
            raise _empty(path) from None
        except csv.Error as e:
            raise InputError(f"{path}:{reader.line_num}: malformed header ({e})") from None
        if row and any(f.strip() for f in row):
            header = [h.strip() for h in row]
    error = missing_columns(str(path), columns, header, "header")
    if error is not None:
        raise error
    for c in columns:
        if header.count(c) > 1:
            raise InputError(f"{path}: column {c!r} appears {header.count(c)} times in the header")
    index = [header.index(c) for c in columns]
    line = reader.line_num
    n = 0
    while True:
        start = line + 1  # a quoted field may span lines: report where the row starts
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            line = reader.line_num
            yield BadRow(f"{path}:{start}", f"malformed {delimiter!r}-separated row ({e})")
            continue
        line = reader.line_num
        if not fields:  # a blank line is not a row
            continue
        where = f"{path}:{start}"
        if len(fields) != len(header):
            yield BadRow(where, f"{len(fields)} fields, the header has {len(header)}")
        else:
            yield Row(where, str(n), tuple(fields[i] for i in index))
        n += 1


def parquet_columns(path: Path) -> tuple[list[str], int]:
    """The column names and row count of a parquet file (its footer only)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise InputError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    return list(pf.schema_arrow.names), int(pf.metadata.num_rows)


def _parquet_rows(path: Path, columns: Sequence[str]) -> Iterator[Row | BadRow]:
    import pyarrow.parquet as pq

    names, _ = parquet_columns(path)
    error = missing_columns(str(path), columns, names, "file")
    if error is not None:
        raise error
    wanted = list(dict.fromkeys(columns))
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
        data = batch.to_pydict()
        for j in range(batch.num_rows):
            yield Row(f"{path} row {row}", str(row), tuple(data[c][j] for c in columns))
            row += 1


# ------------------------------------------------------------------------------ datasets
def load_dataset_source(src: Source, split: str, *, streaming: bool = False) -> Any:
    """The ``datasets`` object behind a ``kind="dataset"`` (``save_to_disk`` folder) or
    ``kind="hub"`` source: ``split`` of it; a hub dataset is downloaded, or with
    ``streaming`` streamed (rows arrive as dicts). A hub failure is
    :meth:`Source.hub_error`."""
    if src.kind == "dataset":
        assert src.path is not None
        return _datasets.load_saved_dataset(src.path, split)
    if src.kind != "hub":
        raise ValueError(f"{src.spec}: not a datasets source ({src.kind})")
    try:
        if streaming:
            return iter(_datasets.stream_hub_dataset(str(src.hub_id), split))
        return _datasets.load_hub_dataset(str(src.hub_id), split)
    except Exception as e:  # network, auth, missing repo or split
        raise src.hub_error(e) from e


def read_dataset(
    dataset: Any, columns: Sequence[str], describe: str, *, hint: str = ""
) -> Iterator[Row | BadRow]:
    """The rows of a ``datasets.Dataset`` (or any iterable of dicts with ``column_names``)
    with the 0-based row index as key; a missing column is a :class:`MissingColumnError`
    up front. An iterator without ``column_names`` (a streamed hub dataset) is read row by
    row: a row without a requested column is a :class:`BadRow`."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):  # a DatasetDict
        raise InputError(f"{describe}: holds several splits ({sorted(names)}); pick one")
    if names is not None:
        error = missing_columns(describe, columns, names, "dataset", hint)
        if error is not None:
            raise error
        if hasattr(dataset, "select_columns"):
            dataset = dataset.select_columns(list(dict.fromkeys(columns)))
    elif not isinstance(dataset, Iterator):
        raise TypeError(
            f"source must be a path, a hub id or a datasets.Dataset, got {type(dataset).__name__}"
        )
    for i, record in enumerate(dataset):
        yield _object_row(record, columns, f"{describe}: row {i}", str(i))
