"""Saved encoders are sentence-transformers folders; sentence-transformers folders load in
textcl. Parity is checked against sentence-transformers itself (the oracle), on the tiny
model (fast) and on the real all-MiniLM-L6-v2 with STS sentences (slow)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from textcl import SentenceEncoder

st = pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import (  # noqa: E402
    Dense,
    Normalize,
    Pooling,
    Transformer,
)

HEAD_MODES = ("none", "train", "always")
ST_POOLINGS = ("cls", "mean", "max", "weightedmean", "lasttoken", "mean_sqrt_len_tokens")


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def st_encode(folder: Path, texts: list[str], **kwargs: Any) -> np.ndarray:
    model = SentenceTransformer(str(folder), device="cpu", **kwargs)
    out = model.encode(texts, batch_size=16, convert_to_numpy=True)
    assert isinstance(out, np.ndarray)
    return out


def build_st(
    src: Path, folder: Path, pooling: str, extra: list[Any] | None = None, **kwargs: Any
) -> SentenceTransformer:
    """A sentence-transformers model over ``src`` built and saved by sentence-transformers."""
    transformer = Transformer(str(src), max_seq_length=24)
    dim = transformer.get_embedding_dimension()
    model = SentenceTransformer(
        modules=[transformer, Pooling(dim, pooling), *(extra or [])], device="cpu", **kwargs
    )
    model.save(str(folder))
    return model


# ------------------------------------------------------------------ textcl -> ST (writing)
@pytest.mark.parametrize("head_mode", HEAD_MODES)
@pytest.mark.parametrize("pooling", ST_POOLINGS)
def test_saved_folder_is_a_sentence_transformers_folder(
    tiny_model_dir: Path, tmp_path: Path, sentences: list[str], pooling: str, head_mode: str
) -> None:
    enc = SentenceEncoder.from_pretrained(
        tiny_model_dir, pooling=pooling, head_mode=head_mode, max_length=24, normalize=True
    )
    out = enc.save(tmp_path / "m")
    modules = json.loads((out / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    want = ["Transformer", "Pooling"] + (["Dense"] if head_mode == "always" else []) + ["Normalize"]
    assert kinds == want
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 24
    pool_cfg = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert [k for k, v in pool_cfg.items() if v is True and k != "include_prompt"] == [
        {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens"}.get(
            pooling,
            {
                "max": "pooling_mode_max_tokens",
                "weightedmean": "pooling_mode_weightedmean_tokens",
                "lasttoken": "pooling_mode_lasttoken",
                "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
            }.get(pooling),
        )
    ]
    if head_mode == "always":
        dense_cfg = json.loads((out / "2_Dense" / "config.json").read_text())
        assert dense_cfg["activation_function"] == "torch.nn.modules.activation.Tanh"
    ours = SentenceEncoder.load(out).encode(sentences)
    theirs = st_encode(out, sentences)
    assert min_cosine(ours, theirs) >= 0.9999
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_head_always_parity_needs_the_dense(
    tiny_model_dir: Path, tmp_path: Path, sentences: list[str]
) -> None:
    """Negative control: the same folder without its Dense module gives other vectors, so the
    parity above is not trivial."""
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="cls", head_mode="always")
    out = enc.save(tmp_path / "m")
    modules = json.loads((out / "modules.json").read_text())
    (out / "modules.json").write_text(json.dumps([m for m in modules if "Dense" not in m["type"]]))
    theirs = st_encode(out, sentences)
    assert min_cosine(enc.encode(sentences), theirs) < 0.99


def test_not_normalised_encoder_has_no_normalize_module(
    tiny_model_dir: Path, tmp_path: Path, sentences: list[str]
) -> None:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="max", normalize=False)
    out = enc.save(tmp_path / "m")
    kinds = [m["type"] for m in json.loads((out / "modules.json").read_text())]
    assert not any(k.endswith("Normalize") for k in kinds)
    np.testing.assert_allclose(enc.encode(sentences), st_encode(out, sentences), atol=1e-5)


@pytest.mark.parametrize("pooling", ["first_last_avg", "last2_avg"])
def test_layer_poolings_warn_that_st_cannot_reproduce(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, pooling: str
) -> None:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling=pooling)
    with caplog.at_level(logging.WARNING, logger="textcl.encoder"):
        out = enc.save(tmp_path / "m")
    assert any("will NOT reproduce" in r.getMessage() for r in caplog.records)
    assert "will NOT reproduce" in (out / "README.md").read_text()
    pool_cfg = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pool_cfg["pooling_mode_mean_tokens"] is True
    assert SentenceEncoder.load(out).pooling.strategy == pooling  # textcl_config.json first


def test_save_is_quiet(
    tiny_encoder: SentenceEncoder, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """save prints nothing at all, even with transformers set to show its progress bars and
    info logging, and leaves those settings as it found them."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_info()
    hf_logging.enable_progress_bar()
    try:
        capfd.readouterr()
        out_dir = tiny_encoder.save(tmp_path / "m")
        out, err = capfd.readouterr()
        assert (out, err) == ("", ""), err
        assert hf_logging.get_verbosity() == hf_logging.INFO
        assert hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.set_verbosity(verbosity)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
    assert (out_dir / "model.safetensors").is_file()  # it did save


# ------------------------------------------------------------------ ST -> textcl (reading)
@pytest.mark.parametrize("pooling", ST_POOLINGS)
def test_reads_st_pooling_modes(
    tiny_model_dir: Path, tmp_path: Path, sentences: list[str], pooling: str
) -> None:
    model = build_st(tiny_model_dir, tmp_path / "st", pooling)
    ours = SentenceEncoder.load(tmp_path / "st")
    assert ours.pooling.strategy == pooling and not ours.normalize
    np.testing.assert_allclose(
        ours.encode(sentences), model.encode(sentences, convert_to_numpy=True), atol=1e-5
    )


@pytest.mark.parametrize(
    "activation", [torch.nn.Tanh(), torch.nn.Identity(), torch.nn.ReLU(), torch.nn.GELU()]
)
def test_reads_st_dense_and_normalize(
    tiny_model_dir: Path, tmp_path: Path, sentences: list[str], activation: torch.nn.Module
) -> None:
    dense = [Dense(32, 16, activation_function=activation), Dense(16, 8)]
    model = build_st(tiny_model_dir, tmp_path / "st", "mean", [*dense, Normalize()])
    ours = SentenceEncoder.load(tmp_path / "st")
    assert ours.embedding_dim == 8 and ours.normalize and len(ours.dense) == 2
    want = model.encode(sentences, convert_to_numpy=True)
    got = ours.encode(sentences)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Saved again by textcl: still the same model for textcl and for sentence-transformers.
    again = ours.save(tmp_path / "again")
    np.testing.assert_allclose(SentenceEncoder.load(again).encode(sentences), want, atol=1e-5)
    np.testing.assert_allclose(st_encode(again, sentences), want, atol=1e-5)


def test_truncate_dim_from_encode_and_config(
    tiny_model_dir: Path, tmp_path: Path, sentences: list[str]
) -> None:
    build_st(tiny_model_dir, tmp_path / "st", "mean", [Normalize()])
    want = SentenceTransformer(str(tmp_path / "st"), device="cpu", truncate_dim=8).encode(
        sentences, convert_to_numpy=True
    )
    ours = SentenceEncoder.load(tmp_path / "st")
    got = ours.encode(sentences, truncate_dim=8)
    assert got.shape == (len(sentences), 8)
    # ST normalises before truncating, textcl after (unit vectors at the truncated size).
    assert min_cosine(got, want) >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # truncate_dim written into config_sentence_transformers.json is read too.
    cfg_file = tmp_path / "st" / "config_sentence_transformers.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "truncate_dim": 8}))
    from_cfg = SentenceEncoder.load(tmp_path / "st")
    assert from_cfg.truncate_dim == 8 and from_cfg.embedding_dim == 8
    np.testing.assert_allclose(from_cfg.encode(sentences), got, atol=1e-6)
    # ... and survives a textcl save (written for textcl; ST takes truncate_dim= itself).
    again = from_cfg.save(tmp_path / "again")
    assert SentenceEncoder.load(again).truncate_dim == 8
    with pytest.raises(ValueError, match="truncate_dim"):
        ours.encode(sentences, truncate_dim=0)


def test_prompts_from_st_config(tiny_model_dir: Path, tmp_path: Path, sentences: list[str]) -> None:
    model = build_st(
        tiny_model_dir,
        tmp_path / "st",
        "mean",
        prompts={"query": "query: ", "passage": "passage: "},
        default_prompt_name="query",
    )
    ours = SentenceEncoder.load(tmp_path / "st")
    assert ours.default_prompt_name == "query" and ours.prompts["passage"] == "passage: "
    for kwargs in ({}, {"prompt_name": "passage"}, {"prompt": "say: "}):
        want = model.encode(sentences, convert_to_numpy=True, **kwargs)
        np.testing.assert_allclose(ours.encode(sentences, **kwargs), want, atol=1e-5)
    # Negative control: the prompt does change the vectors.
    plain = model.encode(sentences, convert_to_numpy=True, prompt="")
    assert not np.allclose(ours.encode(sentences), plain, atol=1e-3)
    with pytest.raises(ValueError, match="prompt_name 'nope'"):
        ours.encode(sentences, prompt_name="nope")
    # Prompts survive a textcl save, for textcl and for sentence-transformers.
    again = ours.save(tmp_path / "again")
    want = model.encode(sentences, convert_to_numpy=True)
    np.testing.assert_allclose(SentenceEncoder.load(again).encode(sentences), want, atol=1e-5)
    np.testing.assert_allclose(st_encode(again, sentences), want, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
def test_include_prompt_false_leaves_prompt_out_of_the_pooling(
    tiny_model_dir: Path, tmp_path: Path, sentences: list[str], pooling: str
) -> None:
    transformer = Transformer(str(tiny_model_dir), max_seq_length=24)
    model = SentenceTransformer(
        modules=[transformer, Pooling(32, pooling, include_prompt=False)],
        prompts={"query": "a man is "},
        default_prompt_name="query",
        device="cpu",
    )
    model.save(str(tmp_path / "st"))
    ours = SentenceEncoder.load(tmp_path / "st")
    assert ours.include_prompt is False
    assert ours.prompt_length("a man is ") == 4  # [CLS] a man is
    want = model.encode(sentences, convert_to_numpy=True)
    np.testing.assert_allclose(ours.encode(sentences), want, atol=1e-5)
    # Negative control: pooling the prompt tokens too gives other vectors (the last token
    # is never a prompt token: lasttoken does not change).
    ours.include_prompt = True
    assert np.allclose(ours.encode(sentences), want, atol=1e-4) == (pooling == "lasttoken")
    ours.include_prompt = False
    # Written back by textcl: sentence-transformers and the card's snippets agree.
    again = ours.save(tmp_path / "again")
    assert json.loads((again / "1_Pooling" / "config.json").read_text())["include_prompt"] is False
    np.testing.assert_allclose(st_encode(again, sentences), want, atol=1e-5)
    np.testing.assert_allclose(SentenceEncoder.load(again).encode(sentences), want, atol=1e-5)


def test_exclude_prompt_from_mask_loop_reference() -> None:
    from textcl.tokens import exclude_prompt_from_mask

    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    got = exclude_prompt_from_mask(mask, 2)
    want = mask.clone()
    for row in range(mask.shape[0]):
        real = [i for i in range(mask.shape[1]) if mask[row, i]]
        for i in real[:2]:
            want[row, i] = 0
    assert torch.equal(got, want)


def test_cls_with_left_padding_takes_first_real_token(
    tiny_model_dir: Path, tmp_path: Path, sentences: list[str]
) -> None:
    model = build_st(tiny_model_dir, tmp_path / "st", "cls")
    enc = SentenceEncoder.load(tmp_path / "st")
    enc.tokenizer.padding_side = "left"
    model.tokenizer.padding_side = "left"
    batched = enc.encode(sentences, batch_size=len(sentences))
    np.testing.assert_allclose(batched, model.encode(sentences, convert_to_numpy=True), atol=1e-5)
    # Loop reference: the state of each row's first non-padding token ([CLS]).
    batch = enc.tokenize(sentences)
    mask = batch["attention_mask"]
    assert (mask[:, 0] == 0).any(), "no left padding in the batch"
    enc.eval()
    with torch.no_grad():
        states = enc.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        got = enc(batch)
    want = torch.stack([states[i, int(mask[i].nonzero()[0])] for i in range(len(sentences))])
    torch.testing.assert_close(got, want)
    first = batch["input_ids"][torch.arange(len(sentences)), mask.argmax(1)]
    assert (first == enc.tokenizer.cls_token_id).all()
    assert not torch.allclose(got, states[:, 0])  # position 0 is padding for some rows


def _write_modules(folder: Path, extra: dict[str, Any]) -> None:
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": "x", "path": "9_X", **extra})
    (folder / "modules.json").write_text(json.dumps(modules))


def test_unsupported_st_parts_fail_clearly(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "st"
    build_st(tiny_model_dir, src, "mean")

    def fresh(name: str) -> Path:
        import shutil

        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    layer_norm = fresh("ln")
    _write_modules(layer_norm, {"type": "sentence_transformers.models.LayerNorm"})
    with pytest.raises(ValueError, match=r"module 'x' \(sentence_transformers.models.LayerNorm\)"):
        SentenceEncoder.load(layer_norm)

    custom = fresh("custom")
    _write_modules(custom, {"type": "my_package.MyModule"})
    with pytest.raises(ValueError, match=r"my_package\.MyModule"):
        SentenceEncoder.load(custom)

    combined = fresh("combined")
    pool_file = combined / "1_Pooling" / "config.json"
    cfg = json.loads(pool_file.read_text())
    pool_file.write_text(json.dumps({**cfg, "pooling_mode": ["cls", "mean"]}))
    with pytest.raises(ValueError, match="combined pooling modes"):
        SentenceEncoder.load(combined)
    pool_file.write_text(json.dumps({**cfg, "pooling_mode": "attention"}))
    with pytest.raises(ValueError, match="pooling_mode 'attention' is not supported"):
        SentenceEncoder.load(combined)

    dense = tmp_path / "dense"
    build_st(tiny_model_dir, dense, "mean", [Dense(32, 8)])
    dense_cfg = dense / "2_Dense" / "config.json"
    cfg = json.loads(dense_cfg.read_text())
    dense_cfg.write_text(json.dumps({**cfg, "activation_function": "my.lib.Swish"}))
    with pytest.raises(ValueError, match=r"activation_function 'my\.lib\.Swish'"):
        SentenceEncoder.load(dense)
    dense_cfg.write_text(json.dumps({**cfg, "use_residual": True}))
    with pytest.raises(ValueError, match="use_residual"):
        SentenceEncoder.load(dense)
    dense_cfg.write_text(json.dumps(cfg))
    (dense / "2_Dense" / "model.safetensors").rename(dense / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle weights are not loaded"):
        SentenceEncoder.load(dense)


# ------------------------------------------------------------------ real MiniLM (slow)
def _sts_sentences(sts_dir: Path, n: int = 300) -> list[str]:
    out: list[str] = []
    with (sts_dir / "STSBenchmark" / "sts-dev.csv").open(encoding="utf-8") as f:
        for line in f:
            out.extend(line.rstrip("\n").split("\t")[5:7])
            if len(out) >= n:
                break
    return out[:n]


@pytest.mark.slow
def test_minilm_save_then_sentence_transformers_parity(
    minilm_dir: Path, sts_dir: Path, tmp_path: Path
) -> None:
    texts = _sts_sentences(sts_dir)
    table: dict[str, float] = {}
    for pooling in ("cls", "mean", "max"):
        for head_mode in HEAD_MODES:
            torch.manual_seed(0)
            enc = SentenceEncoder.from_pretrained(minilm_dir, pooling=pooling, head_mode=head_mode)
            out = enc.save(tmp_path / f"{pooling}-{head_mode}")
            ours = SentenceEncoder.load(out).encode(texts, batch_size=32)
            theirs = st_encode(out, texts)
            table[f"{pooling}/{head_mode}"] = min_cosine(ours, theirs)
    print("\nST parity (min cosine over", len(texts), "STS-B dev sentences):")
    for k, v in table.items():
        print(f"  {k:12s} {v:.7f}")
    assert all(v >= 0.9999 for v in table.values()), table


@pytest.mark.slow
def test_minilm_st_built_folders_load_in_textcl(
    minilm_dir: Path, sts_dir: Path, tmp_path: Path
) -> None:
    """Folders built by sentence-transformers itself from MiniLM: Dense, other poolings,
    truncate_dim, prompts; textcl's encodes against sentence-transformers'."""
    texts = _sts_sentences(sts_dir, 200)
    table: dict[str, float] = {}
    cases: list[tuple[str, str, list[Any], dict[str, Any], dict[str, Any]]] = [
        ("weightedmean", "weightedmean", [Normalize()], {}, {}),
        ("lasttoken", "lasttoken", [], {}, {}),
        ("mean_sqrt_len_tokens", "mean_sqrt_len_tokens", [], {}, {}),
        (
            "mean+Dense(GELU)+Dense(Tanh)+Normalize",
            "mean",
            [
                Dense(384, 256, activation_function=torch.nn.GELU()),
                Dense(256, 128),
                Normalize(),
            ],
            {},
            {},
        ),
        ("cls+Dense(Identity)", "cls", [Dense(384, 384, activation_function=None)], {}, {}),
        (
            "mean+prompts(default query)",
            "mean",
            [Normalize()],
            {
                "prompts": {"query": "query: ", "passage": "passage: "},
                "default_prompt_name": "query",
            },
            {},
        ),
        (
            "mean+prompt_name=passage",
            "mean",
            [Normalize()],
            {"prompts": {"passage": "passage: "}},
            {"prompt_name": "passage"},
        ),
        ("mean+truncate_dim=128", "mean", [Normalize()], {}, {"truncate_dim": 128}),
    ]
    for label, pooling, extra, st_kwargs, enc_kwargs in cases:
        torch.manual_seed(0)
        folder = tmp_path / label.replace("+", "_").replace("=", "_")
        transformer = Transformer(str(minilm_dir), max_seq_length=128)
        model = SentenceTransformer(
            modules=[transformer, Pooling(384, pooling), *extra], device="cpu", **st_kwargs
        )
        model.save(str(folder))
        theirs = model.encode(texts, batch_size=32, convert_to_numpy=True, **enc_kwargs)
        ours = SentenceEncoder.load(folder).encode(texts, batch_size=32, **enc_kwargs)
        table[label] = min_cosine(ours, theirs)
    print("\nST-built folders read by textcl (min cosine over", len(texts), "sentences):")
    for k, v in table.items():
        print(f"  {k:40s} {v:.7f}")
    assert all(v >= 0.9999 for v in table.values()), table
