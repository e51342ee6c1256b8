"""encode_corpus -> search round trips, resume after a crash, and the error cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import textcl.search.encode as enc_mod
from tests.helpers import CORPUS, build_tiny_bert
from textcl import SentenceEncoder
from textcl.errors import CorruptFileError
from textcl.search import EmbeddingIndex, Manifest, encode_corpus, exact_search, search
from textcl.sources import SourceError


def _index_files(folder: Path) -> dict[str, bytes]:
    """Every file of an index except the timing log and the lock file."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in ("encode_log.jsonl", ".textcl.lock")
    }


def test_round_trip_each_sentence_is_its_own_top_hit(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    m = encode_corpus(
        tiny_model_dir, corpus_txt, out, shard_size=5, batch_size=4, show_progress=False
    )
    assert m.complete and m.count == len(CORPUS) and m.skipped == 2
    assert [s.rows for s in m.shards] == [5, 5, 5, 5, 3]
    assert m.dimension == 32 and m.normalized and m.dtype == "float32"
    assert m.source["checksum"].startswith("sha256:") and m.source["rows"] == len(CORPUS) + 2

    results = search(out, list(CORPUS), top_k=3)
    lines = corpus_txt.read_text(encoding="utf-8").split("\n")
    for sentence, hits in zip(CORPUS, results, strict=True):
        assert len(hits) == 3
        assert hits[0].text == sentence
        assert lines[int(hits[0].id) - 1] == sentence  # id = 1-based line number
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    # The stored vectors are the encoder's own (normalised) embeddings, in corpus order.
    idx = EmbeddingIndex(out, verify=True)
    stored = np.concatenate([np.asarray(s) for s in idx.shards])
    want = SentenceEncoder.from_pretrained(tiny_model_dir).encode(list(CORPUS), normalize=True)
    np.testing.assert_allclose(stored, want, atol=1e-5)
    # Search equals exact_search over the stored matrix (the oracle).
    q = SentenceEncoder.from_pretrained(tiny_model_dir).encode(["a dog in a field"], normalize=True)
    s, i = exact_search(q, stored, top_k=4)
    hits = search(idx, "a dog in a field", top_k=4)[0]
    assert [h.index for h in hits] == i[0].tolist()
    np.testing.assert_allclose([h.score for h in hits], s[0], atol=1e-5)


def test_float16_shards(tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path) -> None:
    m = encode_corpus(
        tiny_model_dir,
        corpus_txt,
        tmp_path / "idx16",
        dtype="float16",
        shard_size=10,
        show_progress=False,
    )
    idx = EmbeddingIndex(tmp_path / "idx16")
    assert m.dtype == "float16" and all(s.dtype == np.float16 for s in idx.shards)
    hits = search(idx, list(CORPUS[:4]), top_k=1)
    assert [h[0].text for h in hits] == list(CORPUS[:4])


class Crash(RuntimeError):
    pass


def test_resume_after_crash_gives_identical_shards(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = tmp_path / "clean"
    encode_corpus(
        tiny_model_dir, corpus_txt, clean, shard_size=4, batch_size=3, show_progress=False
    )

    crashed = tmp_path / "crashed"
    real_write = enc_mod.atomic_write_bytes
    written: list[str] = []

    def flaky_write(path: Path, data: bytes) -> None:
        # Die in the middle of shard 3: its .npy is on disk, its texts and manifest entry not.
        if path.name == "shard-00003.jsonl":
            raise Crash("simulated crash")
        written.append(path.name)
        real_write(path, data)

    monkeypatch.setattr(enc_mod, "atomic_write_bytes", flaky_write)
    with pytest.raises(Crash):
        encode_corpus(
            tiny_model_dir, corpus_txt, crashed, shard_size=4, batch_size=3, show_progress=False
        )
    monkeypatch.setattr(enc_mod, "atomic_write_bytes", real_write)
    partial = Manifest.load(crashed)
    assert not partial.complete and len(partial.shards) == 3
    assert (crashed / "shard-00003.npy").exists()  # the orphan of the crashed shard
    with pytest.raises(ValueError, match="incomplete"):
        EmbeddingIndex(crashed)

    encoded: list[int] = []
    real_shard = enc_mod.write_shard

    def counting_shard(*args: Any, **kwargs: Any) -> Any:
        encoded.append(args[3])
        return real_shard(*args, **kwargs)

    monkeypatch.setattr(enc_mod, "write_shard", counting_shard)
    encode_corpus(
        tiny_model_dir, corpus_txt, crashed, shard_size=4, batch_size=3, show_progress=False
    )
    assert encoded == [3, 4, 5]  # shards 0-2 were not encoded again
    assert _index_files(crashed) == _index_files(clean)


def test_finished_job_rerun_is_a_noop(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "idx"
    first = encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".textcl.lock"}

    def no_load(*a: Any, **k: Any) -> None:
        raise AssertionError("a finished job must not load the model")

    monkeypatch.setattr(enc_mod, "load_encoder", no_load)
    again = encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
    assert again == first
    assert {
        p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".textcl.lock"
    } == before


def test_other_settings_on_existing_index_error_unless_overwrite(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
    with pytest.raises(ValueError, match="shard_size"):
        encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=5, show_progress=False)
    corpus_txt.write_text("Only one new line.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="checksum"):
        encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=8, show_progress=False)
    m = encode_corpus(
        tiny_model_dir, corpus_txt, out, shard_size=8, overwrite=True, show_progress=False
    )
    assert m.count == 1 and sorted(p.name for p in out.glob("shard-*[0-9].npy")) == [
        "shard-00000.npy"
    ]


def test_empty_corpus(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_text("\n   \n\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty corpus"):
        encode_corpus(tiny_model_dir, path, tmp_path / "idx", show_progress=False)
    assert not (tmp_path / "idx" / "manifest.json").exists()
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty corpus"):
        encode_corpus(
            tiny_model_dir, tmp_path / "empty.txt", tmp_path / "idx2", show_progress=False
        )


def test_missing_corpus_and_bad_type(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope.txt"):
        encode_corpus(tiny_model_dir, tmp_path / "nope.txt", tmp_path / "idx")
    (tmp_path / "c.xlsx").write_text("a\n", encoding="utf-8")  # (.csv is a corpus now)
    with pytest.raises(ValueError, match="unsupported corpus file type"):
        encode_corpus(tiny_model_dir, tmp_path / "c.xlsx", tmp_path / "idx")


@pytest.fixture
def built(tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path) -> Path:
    out = tmp_path / "built"
    encode_corpus(tiny_model_dir, corpus_txt, out, shard_size=10, show_progress=False)
    return out


def test_dimension_and_model_mismatch(built: Path, tiny_tokenizer: Any, tmp_path: Path) -> None:
    wide = build_tiny_bert(len(tiny_tokenizer), seed=0, hidden_size=48)
    with pytest.raises(ValueError, match=r"dimension mismatch.*48.*32"):
        search(built, "a cat", model=SentenceEncoder(wide, tiny_tokenizer))
    other = build_tiny_bert(len(tiny_tokenizer), seed=1)  # same shape, other weights
    with pytest.raises(ValueError, match="model mismatch"):
        search(built, "a cat", model=SentenceEncoder(other, tiny_tokenizer))
    same = SentenceEncoder(build_tiny_bert(len(tiny_tokenizer), seed=0), tiny_tokenizer)
    assert search(built, CORPUS[0], model=same, top_k=1)[0][0].text == CORPUS[0]


def test_corrupt_manifest(built: Path) -> None:
    path = built / "manifest.json"
    good = path.read_text(encoding="utf-8")
    path.write_text(good[:-20], encoding="utf-8")
    with pytest.raises(CorruptFileError, match=r"manifest\.json: index manifest is not valid JSON"):
        search(built, "a cat")
    data = json.loads(good)
    del data["dimension"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing field.*dimension"):
        EmbeddingIndex(built)
    data = json.loads(good)
    data["count"] += 1
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="count"):
        EmbeddingIndex(built)
    data = json.loads(good)
    data["dimension"] = 64
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="manifest lists"):
        EmbeddingIndex(built)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest.json"):
        EmbeddingIndex(built)


def test_missing_and_tampered_shards(built: Path) -> None:
    texts = built / "shard-00001.jsonl"
    good = texts.read_bytes()
    texts.write_bytes(good.replace(b"a", b"b"))  # same size: only the sha256 tells
    EmbeddingIndex(built)  # sizes and shapes still fine
    with pytest.raises(CorruptFileError, match=r"shard-00001\.jsonl: shard 1 texts file's sha256"):
        EmbeddingIndex(built, verify=True)
    texts.write_bytes(b"tampered\n")  # another size: found on every open
    with pytest.raises(
        CorruptFileError, match=r"shard-00001\.jsonl: shard 1 texts file has 9 bytes"
    ):
        EmbeddingIndex(built)
    texts.write_bytes(good)
    (built / "shard-00002.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard-00002.npy"):
        search(built, "a cat")
    with pytest.raises(FileNotFoundError, match="no such index folder"):
        EmbeddingIndex(built / "absent")


def test_jsonl_parquet_and_datasets_sources(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [{"doc": f"d{i}", "body": s} for i, s in enumerate(CORPUS[:9])]
    rows[4]["body"] = None  # a null text is skipped
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    m = encode_corpus(
        tiny_model_dir,
        jsonl,
        tmp_path / "j",
        text_column="body",
        id_column="doc",
        shard_size=4,
        show_progress=False,
    )
    assert m.count == 8 and m.skipped == 1
    hit = search(tmp_path / "j", CORPUS[6], top_k=1)[0][0]
    assert (hit.id, hit.text) == ("d6", CORPUS[6])
    with pytest.raises(ValueError, match=r"c.jsonl:1: no field 'text'"):
        encode_corpus(tiny_model_dir, jsonl, tmp_path / "j2", show_progress=False)

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": list(CORPUS[:6])}), tmp_path / "c.parquet")
    m = encode_corpus(tiny_model_dir, tmp_path / "c.parquet", tmp_path / "p", show_progress=False)
    assert m.count == 6
    hit = search(tmp_path / "p", CORPUS[3], top_k=1)[0][0]
    assert (hit.id, hit.text) == ("3", CORPUS[3])  # 0-based row index

    import datasets

    datasets.Dataset.from_dict({"sentence": list(CORPUS[:5])}).save_to_disk(tmp_path / "ds")
    m = encode_corpus(
        tiny_model_dir, tmp_path / "ds", tmp_path / "d", text_column="sentence", show_progress=False
    )
    assert m.count == 5 and m.source["kind"] == "datasets"
    with pytest.raises(ValueError, match="no column 'text'"):
        encode_corpus(tiny_model_dir, tmp_path / "ds", tmp_path / "d2", show_progress=False)


@pytest.mark.gpu
def test_encode_on_cuda_with_bf16_autocast(
    tiny_model_dir: Path, corpus_txt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cuda"
    m = encode_corpus(
        tiny_model_dir,
        corpus_txt,
        out,
        device="cuda",
        precision="bf16",
        shard_size=10,
        show_progress=False,
    )
    assert m.count == len(CORPUS)
    cpu = encode_corpus(
        tiny_model_dir,
        corpus_txt,
        tmp_path / "cpu",
        device="cpu",
        shard_size=10,
        show_progress=False,
    )
    a = np.concatenate([np.asarray(s) for s in EmbeddingIndex(out).shards])
    b = np.concatenate([np.asarray(s) for s in EmbeddingIndex(tmp_path / "cpu").shards])
    assert cpu.count == m.count
    assert float(((a * b).sum(1)).min()) > 0.99  # bf16 autocast vs fp32, both normalised


def test_csv_gz_source_and_options_object(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A .csv.gz corpus (new: the shared reader) with text and id columns; the options
    object gives the same index as the keyword front door, and a resume no-op."""
    import gzip

    from textcl.data.readers import MissingColumnError
    from textcl.search import EncodeOptions, encode_corpus_with

    lines = ["doc,body"] + [f'd{i},"{s}"' for i, s in enumerate(CORPUS[:7])]
    src = tmp_path / "c.csv.gz"
    src.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    m = encode_corpus(
        tiny_model_dir,
        src,
        tmp_path / "a",
        text_column="body",
        id_column="doc",
        shard_size=3,
        show_progress=False,
    )
    assert m.count == 7 and m.source["kind"] == "csv" and m.source["rows"] == 7
    hit = search(tmp_path / "a", CORPUS[5], top_k=1)[0][0]
    assert (hit.id, hit.text) == ("d5", CORPUS[5])
    opts = EncodeOptions(text_column="body", id_column="doc", shard_size=3, show_progress=False)
    again = encode_corpus_with(tiny_model_dir, src, tmp_path / "a", opts)
    assert again == m
    with pytest.raises(MissingColumnError, match=r"c\.csv\.gz: column\(s\) 'text'.*'doc', 'body'"):
        encode_corpus(tiny_model_dir, src, tmp_path / "b", show_progress=False)
    with pytest.raises(ValueError, match="dtype"):
        EncodeOptions(dtype="int4").check()
