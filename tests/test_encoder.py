from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from textcl import POOLING_STRATEGIES, SentenceEncoder


def test_encode_shape_dtype_and_order(tiny_encoder: SentenceEncoder, sentences: list[str]) -> None:
    emb = tiny_encoder.encode(sentences, batch_size=3)
    assert isinstance(emb, np.ndarray)
    assert emb.shape == (len(sentences), 32) and emb.dtype == np.float32
    # Each sentence alone gives the same vector: order restored, padding masked out.
    for i in (0, 5, len(sentences) - 1):
        alone = tiny_encoder.encode([sentences[i]])
        np.testing.assert_allclose(emb[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", POOLING_STRATEGIES)
def test_padding_never_changes_a_vector(
    tiny_model_dir: Path, sentences: list[str], strategy: str
) -> None:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling=strategy)
    batched = enc.encode(sentences, batch_size=len(sentences), output="torch")
    for i, s in enumerate(sentences):
        single = enc.encode([s], output="torch")
        torch.testing.assert_close(batched[i], single[0], rtol=1e-5, atol=1e-5)


def test_encode_output_options(tiny_encoder: SentenceEncoder, sentences: list[str]) -> None:
    t = tiny_encoder.encode(sentences[:4], output="torch", normalize=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    torch.testing.assert_close(t.norm(dim=1), torch.ones(4))
    one = tiny_encoder.encode("A single sentence.")
    assert one.shape == (32,)


def test_encode_restores_training_mode(tiny_encoder: SentenceEncoder, sentences: list[str]) -> None:
    tiny_encoder.train()
    tiny_encoder.encode(sentences[:2])
    assert tiny_encoder.training and tiny_encoder.model.training
    tiny_encoder.eval()
    tiny_encoder.encode(sentences[:2])
    assert not tiny_encoder.training


def test_encode_is_deterministic_in_train_mode(
    tiny_encoder: SentenceEncoder, sentences: list[str]
) -> None:
    tiny_encoder.train()  # dropout must be off inside encode
    a = tiny_encoder.encode(sentences[:5])
    b = tiny_encoder.encode(sentences[:5])
    np.testing.assert_array_equal(a, b)


def test_empty_strings_are_valid(tiny_encoder: SentenceEncoder) -> None:
    emb = tiny_encoder.encode(["", "hello", ""])
    assert emb.shape == (3, 32) and np.isfinite(emb).all()
    np.testing.assert_allclose(emb[0], emb[2], rtol=1e-6)


def test_bad_inputs(tiny_encoder: SentenceEncoder) -> None:
    with pytest.raises(ValueError, match="empty"):
        tiny_encoder.encode([])
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tiny_encoder.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list of strings"):
        tiny_encoder.encode(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        tiny_encoder.encode(["a"], batch_size=0)


def test_unknown_pooling_and_not_a_model_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown pooling 'average'"):
        SentenceEncoder.from_pretrained(tiny_model_dir, pooling="average")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a model folder"):
        SentenceEncoder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        SentenceEncoder.from_pretrained(tmp_path / "missing" / "deeper")
    with pytest.raises(ValueError, match="is a file"):
        SentenceEncoder.from_pretrained(tmp_path / "notes.txt")


def test_hub_path_is_used_for_ids(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    import textcl.hub as hub_module

    seen: list[str] = []

    def fake_snapshot(name: str) -> Path:
        seen.append(name)
        return tiny_model_dir

    monkeypatch.setattr(hub_module, "_hub_snapshot", fake_snapshot)
    enc = SentenceEncoder.from_pretrained("someone/tiny-bert", pooling="cls")
    assert seen == ["someone/tiny-bert"] and enc.pooling.strategy == "cls"

    def offline(name: str) -> Path:
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub_module, "_hub_snapshot", offline)
    with pytest.raises(ValueError, match="hub download failed"):
        SentenceEncoder.from_pretrained("someone/other")


def test_tokenizer_model_mismatch(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import build_tiny_bert

    small = build_tiny_bert(vocab_size=10)
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        SentenceEncoder(small, tiny_tokenizer)


@pytest.mark.parametrize("head_mode", ["none", "train", "always"])
def test_save_load_roundtrip_bit_identical(
    tiny_model_dir: Path, tmp_path: Path, sentences: list[str], head_mode: str
) -> None:
    enc = SentenceEncoder.from_pretrained(
        tiny_model_dir, pooling="cls", head_mode=head_mode, max_length=24, normalize=True
    )
    out = enc.save(tmp_path / "saved")
    cfg = json.loads((out / "textcl_config.json").read_text())
    assert cfg["pooling"] == "cls" and cfg["head_mode"] == head_mode and cfg["max_length"] == 24
    back = SentenceEncoder.load(out)
    assert back.config == enc.config
    np.testing.assert_array_equal(enc.encode(sentences), back.encode(sentences))
    # Saving over an existing folder replaces it.
    enc.save(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_saved_folder_loads_with_plain_transformers(
    tiny_encoder: SentenceEncoder, tmp_path: Path
) -> None:
    from transformers import AutoModel, AutoTokenizer

    out = tiny_encoder.save(tmp_path / "m")
    model = AutoModel.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok(["The cat sat on the mat."], return_tensors="pt")
    with torch.no_grad():
        ours = tiny_encoder.model.eval()(**batch).last_hidden_state
        theirs = model.eval()(**batch).last_hidden_state
    torch.testing.assert_close(ours, theirs)


def test_head_applies_only_in_training_for_train_mode(
    tiny_model_dir: Path, sentences: list[str]
) -> None:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="cls", head_mode="train")
    batch = enc.tokenize(sentences[:3])
    enc.eval()
    with torch.no_grad():
        raw = enc(batch)
        assert enc.head is not None
        # Independent computation of SimCSE's MLP: tanh(W x + b).
        dense = enc.head.dense
        expected = torch.tanh(raw @ dense.weight.T + dense.bias)
        torch.testing.assert_close(enc.head(raw), expected)
        assert not torch.allclose(expected, raw)  # the head does change the vectors
        enc.model.eval()
        enc.train()
        enc.model.eval()  # no dropout, only the head differs
        headed = enc(batch)
    torch.testing.assert_close(headed, expected)


def test_tokenize_marks_special_tokens_and_padding(tiny_encoder: SentenceEncoder) -> None:
    batch = tiny_encoder.tokenize(["hello", "a man is playing a guitar"])
    special = batch["special_tokens_mask"].bool()
    ids = batch["input_ids"]
    tok = tiny_encoder.tokenizer
    assert special[ids == tok.cls_token_id].all() and special[ids == tok.sep_token_id].all()
    assert special[batch["attention_mask"] == 0].all()
    assert not special[
        (ids != tok.cls_token_id) & (ids != tok.sep_token_id) & (batch["attention_mask"] == 1)
    ].any()


def test_embedding_mask_of_ones_changes_nothing(
    tiny_encoder: SentenceEncoder, sentences: list[str]
) -> None:
    tiny_encoder.eval()
    batch = tiny_encoder.tokenize(sentences[:4])
    with torch.no_grad():
        plain = tiny_encoder(batch)
        masked = tiny_encoder({**batch, "embedding_mask": torch.ones(1, 1, 32)})
    torch.testing.assert_close(plain, masked)


@pytest.mark.slow
def test_matches_sentence_transformers_on_stsb(minilm_dir: Path, sts_dir: Path) -> None:
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    sentences: list[str] = []
    with (sts_dir / "STSBenchmark" / "sts-test.csv").open(encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            sentences.extend(cols[5:7])
    enc = SentenceEncoder.from_pretrained(minilm_dir)
    assert enc.pooling.strategy == "mean" and enc.normalize and enc.max_length == 256
    ours = enc.encode(sentences, batch_size=64)
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    theirs = st.encode(sentences, batch_size=64, convert_to_numpy=True)
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cos.min() >= 0.9999, cos.min()


def test_encode_accepts_any_sequence_of_strings(
    tiny_encoder: SentenceEncoder, sentences: list[str]
) -> None:
    want = tiny_encoder.encode(sentences[:4])
    for given in (
        tuple(sentences[:4]),
        np.array(sentences[:4]),
        (s for s in sentences[:4]),
        iter(sentences[:4]),
    ):
        np.testing.assert_array_equal(tiny_encoder.encode(given), want)
    with pytest.raises(TypeError, match="1-D array"):
        tiny_encoder.encode(np.array([sentences[:2], sentences[2:4]]))
    with pytest.raises(TypeError, match="list of strings"):
        tiny_encoder.encode({"a": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        tiny_encoder.encode(s for s in [])


def test_encode_sentence_transformers_keywords(
    tiny_encoder: SentenceEncoder, sentences: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    base = tiny_encoder.encode(sentences[:5])
    t = tiny_encoder.encode(sentences[:5], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), base)
    assert isinstance(tiny_encoder.encode(sentences[:5], convert_to_numpy=False), torch.Tensor)
    n = tiny_encoder.encode(
        sentences[:5], normalize_embeddings=True, show_progress_bar=False, batch_size=2
    )
    np.testing.assert_allclose(n, base / np.linalg.norm(base, axis=1, keepdims=True), rtol=1e-5)
    # truncate_dim keeps the first dimensions, then normalises.
    tr = tiny_encoder.encode(sentences[:5], truncate_dim=7, normalize_embeddings=True)
    cut = base[:, :7]
    np.testing.assert_allclose(tr, cut / np.linalg.norm(cut, axis=1, keepdims=True), rtol=1e-5)
    # A prompt is text prepended to each sentence.
    p = tiny_encoder.encode(sentences[:5], prompt="the ")
    np.testing.assert_array_equal(p, tiny_encoder.encode(["the " + s for s in sentences[:5]]))
    assert tiny_encoder.encode(sentences[:2], precision="float32").dtype == np.float32
    with pytest.raises(ValueError, match="quantise"):
        tiny_encoder.encode(sentences[:2], precision="int8")
    with pytest.raises(ValueError, match="output_value"):
        tiny_encoder.encode(sentences[:2], output_value="token_embeddings")
    with pytest.raises(ValueError, match="prompt_name"):
        tiny_encoder.encode(sentences[:2], prompt_name="query")
    # MTEB's extra keywords are ignored, with a debug line naming them.
    with caplog.at_level(logging.DEBUG, logger="textcl.encoder"):
        m = tiny_encoder.encode(sentences[:5], task_name="STS12", prompt_type="query")
    np.testing.assert_array_equal(m, base)
    assert any(
        "prompt_type" in r.getMessage() and "task_name" in r.getMessage() for r in caplog.records
    )


def test_progress_bar_only_when_asked_or_logging_at_info(
    tiny_encoder: SentenceEncoder,
    sentences: list[str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """sentence-transformers' convention: library calls draw no bar unless the caller asks
    or the ``textcl`` logger is at INFO (then from SHOW_PROGRESS_MIN_BATCHES batches on)."""
    from textcl.encoder import SHOW_PROGRESS_MIN_BATCHES
    from textcl.evaluation.sts import encode_unique

    texts = [f"{s} {i}" for i, s in enumerate(sentences * SHOW_PROGRESS_MIN_BATCHES)]
    texts = texts[: SHOW_PROGRESS_MIN_BATCHES + 3]

    def bar_drawn(**kwargs: Any) -> bool:
        capsys.readouterr()
        tiny_encoder.encode(texts, batch_size=1, precision="fp32", **kwargs)
        return "encode" in capsys.readouterr().err

    with caplog.at_level(logging.WARNING, logger="textcl"):
        assert not bar_drawn()
        assert bar_drawn(show_progress=True)
        assert bar_drawn(show_progress_bar=True)
        capsys.readouterr()
        encode_unique(tiny_encoder, texts, batch_size=1)  # a library caller: no bar
        assert "encode" not in capsys.readouterr().err
        encode_unique(tiny_encoder, texts, batch_size=1, show_progress=True)
        assert "encode" in capsys.readouterr().err
    with caplog.at_level(logging.INFO, logger="textcl"):
        assert bar_drawn()
        assert not bar_drawn(show_progress=False)
        capsys.readouterr()
        tiny_encoder.encode(texts[:3], batch_size=1, precision="fp32")  # few batches: no bar
        assert "encode" not in capsys.readouterr().err
