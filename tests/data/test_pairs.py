"""PairDataset: pairs/triples from CSV/TSV/JSONL/datasets, malformed rows, oracle round trips."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textcl.data import _datasets
from textcl.data.pairs import PairDataset, check_columns
from textcl.sources import SourceError

COLS = ("sent0", "sent1", "hard_neg")
NLI_TRIPLES = "nli/snli_dev_triples_sent0_sent1_hardneg.csv"

# Sentences with commas, quotes, tabs, newlines and non-ASCII; never blank after strip.
sentence = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00")
    | st.sampled_from([",", '"', "\t", "\n", "\r", " ", "é", "字", "\u2028", "\x85"]),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() != "")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


# ----------------------------------------------------------------------------- round trips
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(sentence, sentence, sentence), min_size=1, max_size=8),
    delimiter=st.sampled_from([",", "\t"]),
)
def test_csv_and_tsv_round_trip(
    tmp_path: Path, rows: list[tuple[str, ...]], delimiter: str
) -> None:
    """Whatever csv.writer writes (quoting, embedded delimiters/newlines) reads back."""
    path = tmp_path / ("t.csv" if delimiter == "," else "t.tsv")
    # an extra column before and between, header in another order than `columns`
    header = ["id", "hard_neg", "sent0", "label", "sent1"]
    _write_csv(path, header, [[i, r[2], r[0], "x", r[1]] for i, r in enumerate(rows)], delimiter)
    data = PairDataset.from_source(path)
    assert len(data) == len(rows) and data.n_skipped == 0
    assert data.columns == COLS and data.source == str(path)
    assert [data[i] for i in range(len(data))] == [tuple(s.strip() for s in r) for r in rows]
    # the same file read as pairs
    two = PairDataset.from_source(path, columns=("sent1", "sent0"))
    assert list(two) == [(r[1].strip(), r[0].strip()) for r in rows]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.tuples(sentence, sentence), min_size=1, max_size=8), form=st.integers(0, 2))
def test_json_forms_round_trip(tmp_path: Path, rows: list[tuple[str, str]], form: int) -> None:
    records = [{"a": a, "p": p, "extra": 1} for a, p in rows]
    if form == 0:
        text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n"
        path = _write(tmp_path / "t.jsonl", text)
    elif form == 1:
        path = _write(tmp_path / "t.json", json.dumps(records, indent=1))
    else:
        path = tmp_path / "t.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write("\n\n".join(json.dumps(r) for r in records))  # blank lines are not rows
    data = PairDataset.from_source(path, columns=["a", "p"])
    assert list(data) == [(a.strip(), p.strip()) for a, p in rows]
    assert not data.has_hard_negatives


def test_gzip_csv_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8-sig", newline="") as fh:
        fh.write('sent0,sent1\n"a, b",c\n')
    assert list(PairDataset.from_source(path, columns="sent0,sent1")) == [("a, b", "c")]


def test_shared_nli_triples_match_csv_dictreader(tmp_path: Path) -> None:
    root = os.environ.get("TEXTCL_DATA") or str(Path(__file__).parents[3] / "shared" / "data")
    path = Path(root) / NLI_TRIPLES
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path, encoding="utf-8", newline="") as fh:
        oracle = [tuple(r[c].strip() for c in COLS) for r in csv.DictReader(fh)]
    data = PairDataset.from_source(path)
    assert len(data) == len(oracle) == 2954
    assert list(data) == oracle
    assert data.column("hard_neg") == [r[2] for r in oracle]


# ----------------------------------------------------------------------------- malformed rows
CSV_TEXT = (
    "sent0,sent1,hard_neg\n"  # line 1
    'a1,"p1, with comma",n1\n'  # line 2: good
    'a2,"p2\nspans two lines",n2\n'  # lines 3-4: good
    "a3,p3\n"  # line 5: 2 fields
    "a4,,n4\n"  # line 6: empty field
    "\n"  # line 7: blank, not a row
    "a5,p5,n5,extra\n"  # line 8: 4 fields
    "a6,   ,n6\n"  # line 9: blank field
    "a7,p7,n7\n"  # line 10: good
)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (CSV_TEXT, 5, "2 fields, the header has 3"),
        ("sent0,sent1,hard_neg\na,b,c\n\n" + 'a,"b\nb",c\n' + "x,,z\n", 6, "'sent1' is empty"),
        ('sent0,sent1,hard_neg\na,b,c\n"a"x,b,c\n', 3, "malformed"),
    ],
)
def test_bad_csv_row_names_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match="skip_bad_rows") as err:
        PairDataset.from_source(path)
    assert f"{path}:{line}:" in str(err.value)
    assert reason in str(err.value)


def test_skip_bad_rows_counts_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "bad.csv", CSV_TEXT)
    with caplog.at_level(logging.WARNING, logger="textcl.data.pairs"):
        data = PairDataset.from_source(path, skip_bad_rows=True)
    assert list(data) == [
        ("a1", "p1, with comma", "n1"),
        ("a2", "p2\nspans two lines", "n2"),
        ("a7", "p7", "n7"),
    ]
    assert data.n_skipped == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 4 malformed row(s) of 7" in warnings[0] and str(path) in warnings[0]
    assert f"{path}:5:" in warnings[0]  # the first skipped row


def test_tsv_quoting_and_bad_rows(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tsv", 'sent0\tsent1\n"a\tb"\tc\nonly_one\n')
    with pytest.raises(ValueError, match=r"t\.tsv:3: 1 fields, the header has 2"):
        PairDataset.from_source(path, columns=("sent0", "sent1"))
    data = PairDataset.from_source(path, columns=("sent0", "sent1"), skip_bad_rows=True)
    assert list(data) == [("a\tb", "c")] and data.n_skipped == 1


JSONL_LINES = [
    '{"sent0": "a", "sent1": "b", "hard_neg": "c"}',  # 1 good
    '{"sent0": "a", "sent1": "b"}',  # 2 missing field
    '{"sent0": "a", "sent1": null, "hard_neg": "c"}',  # 3 null
    '{"sent0": "a", "sent1": 5, "hard_neg": "c"}',  # 4 not a string
    '{"sent0": "a", "sent1": "b", "hard_neg": "c"',  # 5 bad JSON
    '["a", "b", "c"]',  # 6 not an object
    "",  # 7 blank
    '{"sent0": " d ", "sent1": "e", "hard_neg": "f"}',  # 8 good
]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (2, "missing field(s) 'hard_neg'"),
        (3, "'sent1' is missing (null)"),
        (4, "'sent1' is int, not a string"),
        (5, "not valid JSON"),
        (6, "expected a JSON object, got list"),
    ],
)
def test_bad_jsonl_rows(tmp_path: Path, line: int, reason: str) -> None:
    # the bad line under test is the first bad one: keep lines 1..line and the good last one
    lines = [JSONL_LINES[0], JSONL_LINES[line - 1]]
    path = _write(tmp_path / "t.jsonl", "\n".join(lines))
    with pytest.raises(ValueError) as err:
        PairDataset.from_source(path)
    assert f"{path}:2: " in str(err.value) and reason in str(err.value)


def test_bad_jsonl_rows_skipped_and_counted(tmp_path: Path) -> None:
    full = _write(tmp_path / "full.jsonl", "\n".join(JSONL_LINES))
    data = PairDataset.from_source(full, skip_bad_rows=True)
    assert list(data) == [("a", "b", "c"), ("d", "e", "f")] and data.n_skipped == 5
    with pytest.raises(ValueError, match=r"full\.jsonl:2: missing field"):
        PairDataset.from_source(full)


# ----------------------------------------------------------------------------- file errors
def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.csv"):
        PairDataset.from_source(tmp_path / "nope.csv")
    with pytest.raises(SourceError, match=r"nope\.jsonl"):
        PairDataset.from_source("nope.jsonl")
    odd = _write(tmp_path / "t.xlsx", "sent0,sent1\na,b\n")
    with pytest.raises(ValueError, match=r"t\.xlsx: unknown file type"):
        PairDataset.from_source(odd)
    with pytest.raises(ValueError, match="is a folder"):
        PairDataset.from_source(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", "\ufeff".encode()])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"e\.csv: the file is empty"):
        PairDataset.from_source(path)


def test_header_only_and_all_bad(tmp_path: Path) -> None:
    path = _write(tmp_path / "h.csv", "sent0,sent1,hard_neg\n")
    with pytest.raises(ValueError, match=r"h\.csv: no valid rows$"):
        PairDataset.from_source(path)
    bad = _write(tmp_path / "b.csv", "sent0,sent1,hard_neg\na,b\n,,\n")
    with pytest.raises(ValueError, match=r"no valid rows \(2 malformed, skipped"):
        PairDataset.from_source(bad, skip_bad_rows=True)


def test_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("sent0,sent1\na,b\nc,d\ncaf\xe9,e\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv:4: not valid UTF-8"):
        PairDataset.from_source(path, columns=("sent0", "sent1"))


def test_missing_column_in_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "sentence1,sentence2\na,b\n")
    with pytest.raises(ValueError, match=r"p\.csv: column\(s\) 'sent0', 'sent1', 'hard_neg' not"):
        PairDataset.from_source(path)
    dup = _write(tmp_path / "d.csv", "sent0,sent1,sent0\na,b,c\n")
    with pytest.raises(ValueError, match="'sent0' appears 2 times"):
        PairDataset.from_source(dup, columns=("sent0", "sent1"))


@pytest.mark.parametrize(
    "columns", [("a",), ("a", "b", "c", "d"), ("a", "a"), ("a", ""), "a", ("a", 1)]
)
def test_bad_columns(columns: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="columns"):
        check_columns(columns)


def test_columns_string_form() -> None:
    assert check_columns("sent0, sent1 ,hard_neg") == COLS


# ----------------------------------------------------------------------------- datasets
def test_from_datasets_dataset_and_saved_folder(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict(
        {"sent0": ["a", "b", "c"], "sent1": ["x", None, "z"], "hard_neg": ["1", "2", "3"]}
    )
    with pytest.raises(ValueError, match=r"Dataset: row 1: field 'sent1' is missing"):
        PairDataset.from_source(ds)
    data = PairDataset.from_source(ds, skip_bad_rows=True)
    assert list(data) == [("a", "x", "1"), ("c", "z", "3")] and data.n_skipped == 1
    with pytest.raises(ValueError, match=r"column\(s\) 'other' not in the dataset"):
        PairDataset.from_source(ds, columns=("sent0", "other"))

    ok = datasets.Dataset.from_dict({"q": ["a", "b"], "d": ["x", "y"]})
    datasets.DatasetDict({"train": ok, "dev": ok.select([0])}).save_to_disk(tmp_path / "dd")
    assert list(PairDataset.from_source(tmp_path / "dd", columns=("q", "d"))) == [
        ("a", "x"),
        ("b", "y"),
    ]
    assert len(PairDataset.from_source(tmp_path / "dd", columns=("q", "d"), split="dev")) == 1
    with pytest.raises(ValueError, match="no split 'test'"):
        PairDataset.from_source(tmp_path / "dd", columns=("q", "d"), split="test")


def test_from_hub_id(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[str, str]] = []

    def fake(name: str, split: str) -> Any:
        calls.append((name, split))
        return datasets.Dataset.from_dict({"sent0": ["a"], "sent1": ["b"], "hard_neg": ["c"]})

    monkeypatch.setattr(_datasets, "load_hub_dataset", fake)
    data = PairDataset.from_source("owner/nli-triples")
    assert list(data) == [("a", "b", "c")] and data.source == "hub:owner/nli-triples"
    assert calls == [("owner/nli-triples", "train")]

    def offline(name: str, split: str) -> Any:
        raise ConnectionError("offline")

    monkeypatch.setattr(_datasets, "load_hub_dataset", offline)
    with pytest.raises(SourceError, match=r"owner/other: no such file.*ConnectionError"):
        PairDataset.from_source("owner/other")


def test_not_a_source() -> None:
    with pytest.raises(TypeError, match=r"datasets\.Dataset"):
        PairDataset.from_source(42)  # type: ignore[arg-type]
