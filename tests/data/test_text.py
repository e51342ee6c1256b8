"""TextCorpus (streamed text files, checks before training) and plan_epoch (batching)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textcl.data.text import TextCorpus, plan_epoch
from textcl.sources import SourceError


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_reads_lines_skips_blank_and_strips(tmp_path: Path) -> None:
    f = write(tmp_path / "a.txt", "  first line \n\n   \nsecond\r\nthird\nünïcödé ✓\n")
    corpus = TextCorpus.from_source(f)
    assert len(corpus) == 4
    assert list(corpus) == ["first line", "second", "third", "ünïcödé ✓"]
    assert corpus[3] == "ünïcödé ✓" and corpus[0] == "first line"
    assert corpus.n_blank == 2


def test_last_line_without_newline(tmp_path: Path) -> None:
    corpus = TextCorpus.from_source(write(tmp_path / "a.txt", "one\ntwo"))
    assert list(corpus) == ["one", "two"]


def test_folder_of_files_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", "b1\nb2\n")
    write(tmp_path / "a.txt", "a1\n")
    write(tmp_path / "notes.md", "ignored\n")
    corpus = TextCorpus.from_source(tmp_path)
    assert list(corpus) == ["a1", "b1", "b2"]


def test_hashes_equal_for_equal_text(tmp_path: Path) -> None:
    corpus = TextCorpus.from_source(write(tmp_path / "a.txt", "x\ny\n x \n"))
    h = corpus.hashes
    assert h.dtype == np.uint64 and h[0] == h[2] and h[0] != h[1]


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.txt: no such file or folder"):
        TextCorpus.from_source(tmp_path / "nope.txt")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"empty\.txt: no sentences"):
        TextCorpus.from_source(write(tmp_path / "empty.txt", "\n  \n"))


def test_non_utf8_names_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "latin.txt", "ok\nfine\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.txt:3: not valid UTF-8"):
        TextCorpus.from_source(f)


def test_datasets_source(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", "", "b", None, " c "], "id": [1, 2, 3, 4, 5]})
    corpus = TextCorpus.from_source(ds)
    assert list(corpus) == ["a", "b", "c"]
    ds.save_to_disk(str(tmp_path / "saved"))
    assert list(TextCorpus.from_source(tmp_path / "saved")) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="no text column 'sentence'"):
        TextCorpus.from_source(ds, text_column="sentence")


def test_hub_dataset_path_is_used_for_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from textcl.data import _datasets

    calls = []

    def fake(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        return datasets.Dataset.from_dict({"text": ["x", "y"]})

    monkeypatch.setattr(_datasets, "load_hub_dataset", fake)
    assert list(TextCorpus.from_source("owner/wiki1m")) == ["x", "y"]
    assert calls == [("owner/wiki1m", "train")]


def _check_plan(hashes: np.ndarray, batches: list[list[int]], batch_size: int) -> None:
    seen = Counter(i for b in batches for i in b)
    assert all(c == 1 for c in seen.values()), "an item appears twice"
    for b in batches:
        assert 2 <= len(b) <= batch_size
        assert len({int(hashes[i]) for i in b}) == len(b), "duplicate text inside a batch"


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(0, 12), min_size=2, max_size=80),
    batch_size=st.integers(2, 9),
    seed=st.integers(0, 5),
)
def test_plan_epoch_properties(values: list[int], batch_size: int, seed: int) -> None:
    hashes = np.array(values, dtype=np.uint64)
    batches = plan_epoch(hashes, batch_size, seed=seed, epoch=0)
    _check_plan(hashes, batches, batch_size)
    # Only items that cannot be placed (lone leftovers) are dropped.
    placed = sum(len(b) for b in batches)
    assert placed >= len(values) - max(Counter(values).values())


def test_plan_epoch_covers_distinct_items_and_reshuffles() -> None:
    hashes = np.arange(100, dtype=np.uint64)
    e0 = plan_epoch(hashes, 10, seed=1, epoch=0)
    e1 = plan_epoch(hashes, 10, seed=1, epoch=1)
    assert sorted(i for b in e0 for i in b) == list(range(100))
    assert e0 != e1
    assert e0 == plan_epoch(hashes, 10, seed=1, epoch=0)
    assert len(plan_epoch(np.arange(25, dtype=np.uint64), 10, 0, 0, drop_last=True)) == 2


def test_plan_epoch_rejects_batch_of_one() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        plan_epoch(np.arange(4, dtype=np.uint64), 1, 0, 0)


def test_hub_dataset_streaming(monkeypatch: pytest.MonkeyPatch) -> None:
    """streaming=True reads a hub dataset row by row through datasets streaming (mocked
    here): no download of the dataset files, same sentences as a local source."""
    from typing import Any

    from textcl.data import _datasets

    calls: list[tuple[str, str]] = []
    rows = [{"text": "a", "n": 1}, {"text": " "}, {"text": None}, {"text": " b "}, {"text": "a"}]

    def fake_stream(name: str, split: str) -> Any:
        calls.append((name, split))
        return (dict(r) for r in rows)  # a one-pass iterable, as an IterableDataset

    def no_download(name: str, split: str) -> Any:
        raise AssertionError("streaming must not download the dataset")

    monkeypatch.setattr(_datasets, "stream_hub_dataset", fake_stream)
    monkeypatch.setattr(_datasets, "load_hub_dataset", no_download)
    corpus = TextCorpus.from_source("owner/wiki1m", split="dev", streaming=True)
    assert list(corpus) == ["a", "b", "a"] and corpus.n_blank == 2
    assert calls == [("owner/wiki1m", "dev")] and corpus.source == "hub:owner/wiki1m"
    h = corpus.hashes
    assert h[0] == h[2] != h[1]
    with pytest.raises(SourceError, match="no such file"):
        TextCorpus.from_source("./local.txt", streaming=True)  # paths never go to the hub

    rows.append({"body": "x"})
    with pytest.raises(ValueError, match=r"hub:owner/wiki1m: row 5 has no text column 'text'"):
        TextCorpus.from_source("owner/wiki1m", streaming=True)
    rows[-1] = {"text": 3}
    with pytest.raises(ValueError, match=r"row 5 column 'text' is int"):
        TextCorpus.from_source("owner/wiki1m", streaming=True)

    def offline(name: str, split: str) -> Any:
        raise ConnectionError("offline")

    monkeypatch.setattr(_datasets, "stream_hub_dataset", offline)
    with pytest.raises(SourceError, match=r"owner/x: no such file.*hub download failed"):
        TextCorpus.from_source("owner/x", streaming=True)
