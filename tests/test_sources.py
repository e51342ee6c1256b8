"""resolve_source: one decision "local file / folder / save_to_disk folder / hub id" for
training text, pairs, search corpora and models, with one error type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from textcl.errors import InputError
from textcl.sources import SourceError, looks_like_path, resolve_source


def test_file_folder_and_saved_dataset(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("x\n")
    src = resolve_source(f)
    assert (src.kind, src.path, src.hub_id, src.is_local) == ("file", f, None, True)
    src = resolve_source(str(tmp_path))
    assert (src.kind, src.path) == ("folder", tmp_path)
    import datasets

    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert resolve_source(tmp_path / "ds").kind == "dataset"
    assert resolve_source(tmp_path / "dd").kind == "dataset"
    # a model folder is a folder for both roles
    assert resolve_source(tmp_path, role="model").kind == "folder"


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.jsonl").write_text("{}\n")
    src = resolve_source("~/c.jsonl")
    assert src.kind == "file" and src.path == tmp_path / "c.jsonl"


@pytest.mark.parametrize("spec", ["owner/name", "bert-base-uncased", "imdb", "a.b/c_d-1"])
def test_hub_ids(spec: str) -> None:
    src = resolve_source(spec)
    assert (src.kind, src.hub_id, src.path, src.is_local) == ("hub", spec, None, False)
    assert resolve_source(spec, role="model").kind == "hub"


@pytest.mark.parametrize(
    "spec",
    [
        "./missing",
        "/abs/missing",
        "~/missing-dir-xyz",
        "data/sub/file",
        "nope.txt",
        "owner/nope.jsonl",
        "corpus.csv.gz",
        "C:\\data\\x",
        "data\\x",
    ],
)
def test_missing_path_like_spec_is_an_error_not_a_hub_call(spec: str) -> None:
    assert looks_like_path(spec)
    with pytest.raises(SourceError, match=r"no such file or folder.*tried: local path") as err:
        resolve_source(spec)
    assert "not tried as a hub id" in str(err.value) and spec.split("/")[-1] in str(err.value)
    assert isinstance(err.value, InputError) and err.value.exit_code == 2


@pytest.mark.parametrize("spec", ["owner/", "-bad", "a b", "owner/na me", "x--/y", "é/ü"])
def test_invalid_hub_id(spec: str) -> None:
    with pytest.raises(SourceError, match="not a hub id"):
        resolve_source(spec)


@pytest.mark.parametrize("spec", ["", "   "])
def test_blank(spec: str) -> None:
    with pytest.raises(SourceError, match="empty path"):
        resolve_source(spec)


def test_not_a_string() -> None:
    with pytest.raises(SourceError, match="expected a path or a hub id"):
        resolve_source(42)  # type: ignore[arg-type]


def test_model_role(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    with pytest.raises(SourceError, match="is a file, not a model folder"):
        resolve_source(f, role="model")
    with pytest.raises(SourceError, match="no such folder"):
        resolve_source(tmp_path / "missing" / "deeper", role="model")


def test_hub_error_names_spec_and_cause() -> None:
    src = resolve_source("owner/ds")
    err = src.hub_error(ConnectionError("offline"))
    assert isinstance(err, SourceError)
    msg = str(err)
    assert msg.startswith("owner/ds: no such file or folder here")
    assert "hub download failed" in msg and "ConnectionError: offline" in msg
    assert "hub dataset id" in msg
    assert "hub model id" in str(resolve_source("owner/m", role="model").hub_error(OSError("x")))


# --------------------------------------------------------------- the four users, one decision
def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the hub must not be called for a path-looking spec")


def test_users_do_not_call_the_hub_for_missing_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import textcl.hub as hub_mod
    from textcl import SentenceEncoder
    from textcl.data import _datasets, pairs, text
    from textcl.search import sources

    monkeypatch.setattr(_datasets, "load_hub_dataset", _never)  # one place for every reader
    monkeypatch.setattr(_datasets, "stream_hub_dataset", _never)
    monkeypatch.setattr(hub_mod, "_hub_snapshot", _never)
    missing = str(tmp_path / "gone" / "x.txt")
    for call in (
        lambda: text.TextCorpus.from_source(missing),
        lambda: pairs.PairDataset.from_source(missing),
        lambda: sources.open_source(missing),
        lambda: SentenceEncoder.from_pretrained(missing),
        lambda: text.TextCorpus.from_source("./data.jsonl"),
        lambda: sources.open_source("corpus.parquet"),
    ):
        with pytest.raises(SourceError, match="no such"):
            call()


def test_users_share_the_hub_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import textcl.hub as hub_mod
    from textcl import SentenceEncoder
    from textcl.data import _datasets, pairs, text
    from textcl.search import sources

    calls: list[str] = []

    def offline(name: str, *rest: Any) -> Any:
        calls.append(name)
        raise ConnectionError("offline")

    monkeypatch.setattr(_datasets, "load_hub_dataset", offline)  # one place for every reader
    monkeypatch.setattr(_datasets, "stream_hub_dataset", offline)
    monkeypatch.setattr(hub_mod, "_hub_snapshot", offline)
    for call in (
        lambda: text.TextCorpus.from_source("owner/a"),
        lambda: pairs.PairDataset.from_source("owner/b"),
        lambda: sources.open_source("owner/c"),
        lambda: SentenceEncoder.from_pretrained("owner/d"),
    ):
        with pytest.raises(SourceError, match=r"hub download failed.*ConnectionError: offline"):
            call()
    assert calls == ["owner/a", "owner/b", "owner/c", "owner/d"]


def test_users_agree_on_saved_dataset_folders(tmp_path: Path) -> None:
    import datasets

    from textcl.data.pairs import PairDataset
    from textcl.data.text import TextCorpus
    from textcl.search.sources import open_source

    datasets.Dataset.from_dict(
        {"text": ["a", "b"], "sent0": ["p", "q"], "sent1": ["r", "s"]}
    ).save_to_disk(str(tmp_path / "ds"))
    assert list(TextCorpus.from_source(tmp_path / "ds")) == ["a", "b"]
    assert list(PairDataset.from_source(tmp_path / "ds", columns=("sent0", "sent1"))) == [
        ("p", "r"),
        ("q", "s"),
    ]
    assert open_source(tmp_path / "ds").kind == "datasets"
    # a plain folder: text files for training text, an error for pairs and search corpora
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hello\n")
    assert list(TextCorpus.from_source(tmp_path / "plain")) == ["hello"]
    with pytest.raises(ValueError, match="is a folder"):
        PairDataset.from_source(tmp_path / "plain")
    with pytest.raises(SourceError, match="not one written by datasets' save_to_disk"):
        open_source(tmp_path / "plain")
