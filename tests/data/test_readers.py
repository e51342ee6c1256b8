"""One reader for every input: each format gives the same texts to every consumer (training
text, pairs, search corpora), one meaning of a column, one set of errors (missing column
listing the columns found, bad UTF-8 with file and line, a byte order mark stripped)."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from textcl.data import readers
from textcl.data.pairs import PairDataset
from textcl.data.readers import MissingColumnError
from textcl.data.text import TextCorpus, text_hash64
from textcl.errors import InputError
from textcl.search.sources import open_source

TEXTS = ["the cat sat", "a dog, barking", 'quoted "word" here', "café au lait", "字 and \u2028 too"]
OTHER = [f"other {i}" for i in range(len(TEXTS))]


def _table_csv(delimiter: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(["id", "body", "other"])
    for i, (t, o) in enumerate(zip(TEXTS, OTHER, strict=True)):
        w.writerow([f"d{i}", t, o])
    return buf.getvalue()


def _jsonl() -> str:
    return "".join(
        json.dumps({"id": f"d{i}", "body": t, "other": o}, ensure_ascii=False) + "\n"
        for i, (t, o) in enumerate(zip(TEXTS, OTHER, strict=True))
    )


def _write(path: Path, text: str) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def make_source(kind: str, tmp_path: Path) -> Path:
    """The same corpus (column ``body``, plus ``id`` and ``other``) in format ``kind``."""
    if kind in ("txt", "txt.gz"):
        return _write(tmp_path / f"c.{kind}", "\n".join(TEXTS) + "\n")
    if kind in ("jsonl", "jsonl.gz"):
        return _write(tmp_path / f"c.{kind}", _jsonl())
    if kind == "json":
        records = [
            {"id": f"d{i}", "body": t, "other": o}
            for i, (t, o) in enumerate(zip(TEXTS, OTHER, strict=True))
        ]
        return _write(tmp_path / "c.json", json.dumps(records, ensure_ascii=False, indent=1))
    if kind in ("csv", "csv.gz"):
        return _write(tmp_path / f"c.{kind}", _table_csv(","))
    if kind in ("tsv", "tsv.gz"):
        return _write(tmp_path / f"c.{kind}", _table_csv("\t"))
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = [f"d{i}" for i in range(len(TEXTS))]
        pq.write_table(pa.table({"id": ids, "body": TEXTS, "other": OTHER}), tmp_path / "c.parquet")
        return tmp_path / "c.parquet"
    if kind == "saved":
        import datasets

        ids = [f"d{i}" for i in range(len(TEXTS))]
        datasets.Dataset.from_dict({"id": ids, "body": TEXTS, "other": OTHER}).save_to_disk(
            str(tmp_path / "saved")
        )
        return tmp_path / "saved"
    raise AssertionError(kind)


TABLES = ["jsonl", "jsonl.gz", "json", "csv", "csv.gz", "tsv", "tsv.gz", "parquet", "saved"]
ALL = ["txt", "txt.gz", *TABLES]


# ------------------------------------------------------------------ every format, every user
@pytest.mark.parametrize("kind", ALL)
def test_training_text_reads_the_text_column(kind: str, tmp_path: Path) -> None:
    """Unsupervised training text: a table gives its text column (not its raw lines)."""
    corpus = TextCorpus.from_source(make_source(kind, tmp_path), text_column="body")
    assert list(corpus) == TEXTS
    assert len(set(corpus.hashes.tolist())) == len(TEXTS)


@pytest.mark.parametrize("kind", ALL)
def test_search_corpus_reads_the_same_texts(kind: str, tmp_path: Path) -> None:
    src = open_source(make_source(kind, tmp_path), text_column="body")
    assert [t for _, t in src.records()] == TEXTS
    assert src.count == len(TEXTS) and src.rows == len(TEXTS)
    assert src.checksum.startswith(("sha256:", "fingerprint:"))
    if kind in TABLES:  # ids from a column
        src = open_source(make_source(kind, tmp_path), text_column="body", id_column="id")
        assert [i for i, _ in src.records()] == [f"d{i}" for i in range(len(TEXTS))]


@pytest.mark.parametrize("kind", TABLES)
def test_pairs_read_the_same_columns(kind: str, tmp_path: Path) -> None:
    data = PairDataset.from_source(make_source(kind, tmp_path), columns=("body", "other"))
    assert list(data) == [(t.strip(), o) for t, o in zip(TEXTS, OTHER, strict=True)]


def test_gz_checksum_is_of_the_content(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    plain = open_source(make_source("jsonl", tmp_path / "a"), text_column="body")
    packed = open_source(make_source("jsonl.gz", tmp_path), text_column="body")
    assert plain.checksum == packed.checksum


def test_training_text_column_default_is_text(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", '{"text": "hello", "n": 1}\n\n{"text": " world "}\n')
    corpus = TextCorpus.from_source(path)
    assert list(corpus) == ["hello", "world"] and corpus.n_blank == 1


# ------------------------------------------------------------------ a missing column
USERS: dict[str, Callable[[Path], Any]] = {
    "training text": lambda p: TextCorpus.from_source(p, text_column="sentence"),
    "pairs": lambda p: PairDataset.from_source(p, columns=("sentence", "body")),
    "search": lambda p: open_source(p, text_column="sentence"),
}


@pytest.mark.parametrize("user", sorted(USERS))
@pytest.mark.parametrize("kind", TABLES)
def test_missing_column_lists_the_columns_found(kind: str, user: str, tmp_path: Path) -> None:
    path = make_source(kind, tmp_path)
    with pytest.raises(MissingColumnError) as err:
        USERS[user](path)
    msg = str(err.value)
    assert path.name in msg and "'sentence'" in msg
    for found in ("id", "body", "other"):
        assert found in msg, msg
    assert isinstance(err.value, InputError)


# ------------------------------------------------------------------ byte order mark
@pytest.mark.parametrize("kind", ["txt", "txt.gz", "jsonl", "csv", "tsv.gz"])
def test_bom_is_stripped(kind: str, tmp_path: Path) -> None:
    path = make_source(kind, tmp_path)
    data = path.read_bytes()
    if kind.endswith(".gz"):
        path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + gzip.decompress(data)))
    else:
        path.write_bytes(b"\xef\xbb\xbf" + data)
    corpus = TextCorpus.from_source(path, text_column="body")
    assert corpus[0] == TEXTS[0] and list(corpus) == TEXTS
    assert corpus.hashes[0] == text_hash64(TEXTS[0])
    assert next(open_source(path, text_column="body").records())[1] == TEXTS[0]
    if not kind.startswith("txt"):  # the first column's name has no BOM either
        src = open_source(path, text_column="body", id_column="id")
        assert next(src.records()) == ("d0", TEXTS[0])


def test_bom_line_offset_reads_back(tmp_path: Path) -> None:
    """A plain text file is read back from disk by offset: the first sentence has no BOM."""
    path = tmp_path / "b.txt"
    path.write_bytes("\ufeffhello\nworld\n".encode())
    corpus = TextCorpus.from_source(path)
    assert corpus.texts([0, 1]) == ["hello", "world"]
    assert [line for _, _, line in readers.read_lines(path)] == ["hello", "world"]


# ------------------------------------------------------------------ bad UTF-8
@pytest.mark.parametrize(
    ("kind", "user"),
    [
        (kind, user)
        for kind in ("txt", "txt.gz", "jsonl", "jsonl.gz", "csv", "tsv")
        for user in ("training text", "search", "pairs")
        if not (user == "pairs" and kind.startswith("txt"))  # pairs need columns
    ],
)
def test_bad_utf8_names_file_and_line(kind: str, user: str, tmp_path: Path) -> None:
    path = make_source(kind, tmp_path)
    data = gzip.decompress(path.read_bytes()) if kind.endswith(".gz") else path.read_bytes()
    lines = data.split(b"\n")
    n = next(i for i, line in enumerate(lines) if "café".encode() in line)
    lines[n] = lines[n].replace("café".encode(), b"caf\xe9")
    data = b"\n".join(lines)
    path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
    call = {
        "training text": lambda: TextCorpus.from_source(path, text_column="body"),
        "search": lambda: open_source(path, text_column="body"),
        "pairs": lambda: PairDataset.from_source(path, columns=("body", "other")),
    }[user]
    with pytest.raises(InputError, match=rf"{path.name}:{n + 1}: not valid UTF-8"):
        call()


def test_damaged_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.txt.gz"
    path.write_bytes(b"not gzip at all\n")
    with pytest.raises(InputError, match=r"c\.txt\.gz:1: cannot read"):
        list(readers.read_lines(path))


def test_binary_queries_file_names_file_and_line(tmp_path: Path) -> None:
    from textcl.commands.search import read_queries

    path = tmp_path / "q.txt"
    path.write_bytes(b"\xef\xbb\xbffirst query\n\nsecond\n\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match=r"q\.txt:4: not valid UTF-8"):
        read_queries(str(path))
    path.write_bytes(b"\xef\xbb\xbffirst query\n\nsecond\n")
    assert read_queries(str(path)) == ["first query", "second"]


def test_unknown_file_type(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.xlsx", "a\n")
    with pytest.raises(readers.UnknownFormatError, match=r"c\.xlsx: unknown file type"):
        readers.file_format(path)
    assert readers.file_format(Path("x.CSV.gz")) == ("csv", True)
    assert TextCorpus.from_source(path).texts([0]) == ["a"]  # any other name: lines
