"""``textcl export``: ONNX / OpenVINO folders, fp32 and static int8, loaded by
``SentenceEncoder.load``; the oracle is the fp32 PyTorch source encoder.

Fast tests use the tiny random BERT (one export per format and precision, module-scoped);
the ``slow`` ones export the real all-MiniLM-L6-v2 and hold int8 to the quality bar on
held-out STS sentences."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.export_peers import cpu_has_bf16
from tests.helpers import TINY_SENTENCES, build_tiny_bert, build_tiny_tokenizer
from textcl import SentenceEncoder
from textcl.cli import main
from textcl.errors import CorruptFileError, FolderConflictError, InputError
from textcl.export.exporter import export_model
from textcl.export.runtime import (
    EXPORT_CONFIG_NAME,
    ExportedTransformer,
    MissingExtraError,
    read_export_info,
)
from textcl.precision import QInt8DeprecationWarning, resolve_inference_precision
from textcl.search.model import model_weights_hash

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

PROMPTS = {"query": "query: ", "doc": "passage: "}
CASES = [("onnx", None), ("onnx", "int8"), ("openvino", None), ("openvino", "int8")]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny textcl model folder (normalising, with prompts and a default prompt, an
    inference-time head) and a calibration file."""
    root = tmp_path_factory.mktemp("export-src")
    tok = build_tiny_tokenizer()
    encoder = SentenceEncoder(
        build_tiny_bert(len(tok), seed=0),
        tok,
        pooling="mean",
        head_mode="always",
        normalize=True,
        prompts=PROMPTS,
        default_prompt_name="doc",
    )
    encoder.save(root / "model", card={"model_name": "tiny export source"})
    cal = root / "calibration.txt"
    cal.write_text("\n".join(f"{s} {i}" for i in range(4) for s in TINY_SENTENCES) + "\n")
    return root / "model", cal


@pytest.fixture(scope="module")
def exports(
    source: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str | None], Path]:
    model, cal = source
    root = tmp_path_factory.mktemp("exports")
    torch.set_num_threads(1)
    out = {}
    for fmt, quant in CASES:
        path = root / f"{fmt}-{quant}"
        export_model(model, path, fmt, quantize=quant, calibration=cal, calibration_size=16)
        out[(fmt, quant)] = path
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(("fmt", "quant"), CASES)
def test_round_trip_matches_the_source(
    exports: dict[Any, Path], source: tuple[Path, Path], fmt: str, quant: str | None
) -> None:
    ref = SentenceEncoder.load(source[0])
    enc = SentenceEncoder.load(exports[(fmt, quant)])
    assert isinstance(enc.model, ExportedTransformer)
    assert enc.model.precision == f"{fmt} {'int8' if quant else 'fp32'}"
    texts = list(TINY_SENTENCES)
    a, b = ref.encode(texts, precision="fp32"), enc.encode(texts)
    cos = cosines(a, b)
    assert cos.min() >= (0.9999 if quant is None else 0.99)
    if quant is None:
        np.testing.assert_allclose(b, a, atol=2e-5)
    else:  # negative control: int8 is not the fp32 graph
        assert not np.allclose(b, a, atol=1e-7)
    # prompts and normalisation are the source's (applied by textcl around the graph)
    for name in PROMPTS:
        np.testing.assert_allclose(
            enc.encode(texts, prompt_name=name),
            ref.encode(texts, prompt_name=name),
            atol=2e-5 if quant is None else 0.1,
        )
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


def test_metadata_and_layout(exports: dict[Any, Path], source: tuple[Path, Path]) -> None:
    ref = SentenceEncoder.load(source[0])
    for (fmt, quant), path in exports.items():
        enc = SentenceEncoder.load(path)
        assert enc.config == ref.config
        assert enc.embedding_dim == ref.embedding_dim
        assert enc.head is not None and enc.head_mode == "always"
        torch.testing.assert_close(enc.head.state_dict(), ref.head.state_dict())
        graph = path / ("onnx/model.onnx" if fmt == "onnx" else "openvino/openvino_model.xml")
        assert graph.is_file()
        assert not list(path.glob("*.safetensors"))[1:]  # the head only, no transformer
        modules = json.loads((path / "modules.json").read_text())
        assert [m["type"].rsplit(".", 1)[1] for m in modules] == [
            "Transformer",
            "Pooling",
            "Dense",
            "Normalize",
        ]
        st_cfg = json.loads((path / "config_sentence_transformers.json").read_text())
        assert st_cfg["prompts"] == PROMPTS and st_cfg["default_prompt_name"] == "doc"
        card = (path / "README.md").read_text()
        assert "tiny export source" in card and "## Exported model" in card
        info = read_export_info(path)
        assert info.format == fmt and (info.quantization is None) == (quant is None)
        assert info.source["path"] == str(source[0])
        assert info.quality["min_cosine"] >= (0.9999 if quant is None else 0.99)
    onnx_int8 = read_export_info(exports[("onnx", "int8")]).quantization
    assert onnx_int8 is not None and onnx_int8["format"] == "QDQ"
    # one fingerprint per graph (search indexes tell the exports apart)
    hashes = {model_weights_hash(str(p)) for p in exports.values()}
    assert len(hashes) == len(exports)
    loaded = {model_weights_hash(SentenceEncoder.load(p)) for p in exports.values()}
    assert len(loaded) == len(exports)


def test_damaged_or_crafted_folders_are_refused(exports: dict[Any, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(exports[("onnx", None)], copy)
    SentenceEncoder.load(copy)  # intact copy loads
    graph = copy / "onnx" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CorruptFileError, match="does not match the sha256"):
        SentenceEncoder.load(copy)
    marker = copy / EXPORT_CONFIG_NAME
    raw = json.loads(marker.read_text())
    for field, value in (("format", "tensorrt"), ("file", "../../etc/x.onnx"), ("inputs", [])):
        marker.write_text(json.dumps({**raw, field: value}))
        with pytest.raises(CorruptFileError, match=field):
            SentenceEncoder.load(copy)


def test_training_an_exported_model_is_refused(exports: dict[Any, Path]) -> None:
    enc = SentenceEncoder.load(exports[("onnx", None)])
    batch = enc.tokenize(["a sentence"])
    enc.train()
    with pytest.raises(InputError, match="cannot be trained"):
        enc(batch)
    with pytest.raises(InputError, match="export"):
        enc.save(exports[("onnx", None)].parent / "resaved")
    enc.eval()
    with torch.no_grad():
        assert enc(batch).shape == (1, enc.embedding_dim)


@pytest.mark.parametrize(("fmt", "module"), [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_missing_extra_names_it(
    exports: dict[Any, Path], monkeypatch: pytest.MonkeyPatch, fmt: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=rf"textcl\[{fmt}\]"):
        SentenceEncoder.load(exports[(fmt, None)])


def test_missing_extra_on_export(
    source: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match=r"textcl\[onnx\]"):
        export_model(source[0], tmp_path / "o", "onnx")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_refusals(
    source: tuple[Path, Path], exports: dict[Any, Path], tmp_path: Path, tiny_model_dir: Path
) -> None:
    model = source[0]
    with pytest.raises(InputError, match="--calibration"):
        export_model(model, tmp_path / "a", "onnx", quantize="int8")
    with pytest.raises(InputError, match="--format"):
        export_model(model, tmp_path / "a", "tflite")
    with pytest.raises(InputError, match="already an exported model"):
        export_model(exports[("onnx", None)], tmp_path / "a", "onnx")
    layered = tmp_path / "layered"
    SentenceEncoder.from_pretrained(tiny_model_dir, pooling="first_last_avg").save(layered)
    with pytest.raises(InputError, match="first_last_avg"):
        export_model(layered, tmp_path / "b", "onnx")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FolderConflictError, match="not empty"):
        export_model(model, busy, "onnx")
    with pytest.raises(FolderConflictError, match="something other"):
        export_model(model, busy, "onnx", overwrite=True)
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="output"):
        export_model(model, model / "inside", "onnx")
    with pytest.raises(InputError, match="not a regular expression"):
        export_model(
            model, tmp_path / "a", "onnx", quantize="int8", calibration=source[1], keep_float="("
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_int8_keep_float_defaults_per_format(exports: dict[Any, Path]) -> None:
    """ONNX int8 keeps the FFN output projections and the first three layers' FFN input
    projections float; the count of int8 MatMuls is the oracle's (the node names of the
    fp32 graph filtered by the default); OpenVINO's default is the FFN outputs only."""
    import re

    from textcl.export.exporter import KEEP_FLOAT_DEFAULTS, SMOOTH_ALPHA_DEFAULT
    from textcl.export.onnx import weight_matmuls

    assert SMOOTH_ALPHA_DEFAULT == 0.8
    assert KEEP_FLOAT_DEFAULTS["openvino"] == r"(^|/)layer\.\d+/output/dense/"
    weights, _ = weight_matmuls(exports[("onnx", None)] / "onnx" / "model.onnx")
    kept = [n for n in weights if re.search(KEEP_FLOAT_DEFAULTS["onnx"], n)]
    assert any("/intermediate/dense/" in n for n in kept)  # the new default reaches them
    assert any("/output/dense/" in n and "attention" not in n for n in kept)
    info = read_export_info(exports[("onnx", "int8")])
    assert info.quantization is not None
    assert info.quantization["quantized"].startswith(f"{len(weights) - len(kept)} MatMuls")
    assert "alpha 0.8" in info.quantization["smoothquant"]
    ov = read_export_info(exports[("openvino", "int8")]).quantization
    assert ov is not None and repr(KEEP_FLOAT_DEFAULTS["openvino"]) in ov["kept_float"]


def test_cli_export_overwrite_and_encode(source: tuple[Path, Path], tmp_path: Path) -> None:
    model = source[0]
    out = tmp_path / "exp"
    assert main(["export", "--model", str(model), "--output", str(out)]) == 0
    assert main(["export", "--model", str(model), "--output", str(out)]) == 4  # not empty
    assert (
        main(
            [
                "export",
                "--model",
                str(model),
                "--output",
                str(out),
                "--overwrite",
                "--min-cosine",
                "1.01",
            ]
        )
        == 2
    )
    assert read_export_info(out).format == "onnx"  # the refused export left the old one
    assert main(["export", "--model", str(model), "--output", str(out), "--overwrite"]) == 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TINY_SENTENCES) + "\n")
    index = tmp_path / "index"
    assert main(["encode", "--model", str(out), "--input", str(corpus), "--output", str(index),
                 "--no-progress"]) == 0  # fmt: skip
    vectors = np.load(index / "shard-00000.npy")
    ref = SentenceEncoder.load(model).encode(list(TINY_SENTENCES), precision="fp32")
    np.testing.assert_allclose(vectors[: len(ref)], ref, atol=2e-5)


def test_qint8_is_deprecated() -> None:
    with pytest.warns(QInt8DeprecationWarning, match="textcl export"):
        assert resolve_inference_precision("qint8", "cpu") == "qint8"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_inference_precision("fp32", "cpu")


# ---------------------------------------------------------------------- real MiniLM


@pytest.fixture(scope="module")
def minilm_exports(
    minilm_dir: Path, sts_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[Any, Path], list[str]]:
    from benchmarks.encode_throughput import sts_sentences

    pool = sts_sentences(sts_dir, "stsb")
    pick = np.random.default_rng(1).permutation(len(pool))
    cal_sents = [pool[i] for i in pick[:300]]
    held_out = [pool[i] for i in pick[1000:1400]]
    root = tmp_path_factory.mktemp("minilm-exports")
    cal = root / "calibration.txt"
    cal.write_text("\n".join(cal_sents) + "\n")
    torch.set_num_threads(2)
    out = {}
    for fmt, quant in CASES:
        out[(fmt, quant)] = root / f"{fmt}-{quant}"
        export_model(minilm_dir, out[(fmt, quant)], fmt, quantize=quant, calibration=cal)
    return out, held_out


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "quant"), CASES)
def test_minilm_quality_bar(
    minilm_exports: tuple[dict[Any, Path], list[str]],
    minilm_dir: Path,
    fmt: str,
    quant: str | None,
) -> None:
    paths, held_out = minilm_exports
    ref = SentenceEncoder.load(minilm_dir).encode(held_out, precision="fp32")
    got = SentenceEncoder.load(paths[(fmt, quant)]).encode(held_out)
    cos = cosines(ref, got)
    assert cos.min() >= (0.9999 if quant is None else 0.99), (cos.min(), cos.mean())


@pytest.mark.slow
def test_sentence_transformers_backends(minilm_exports: tuple[dict[Any, Path], list[str]]) -> None:
    """sentence-transformers loads the folders with backend="onnx"/"openvino" where optimum
    is installed (it is not installable beside transformers 5: docs/export.md)."""
    pytest.importorskip("optimum.onnxruntime", reason="optimum-onnx needs transformers < 4.58")
    from sentence_transformers import SentenceTransformer

    paths, held_out = minilm_exports
    for fmt in ("onnx", "openvino"):
        st = SentenceTransformer(str(paths[(fmt, None)]), backend=fmt, device="cpu")
        ours = SentenceEncoder.load(paths[(fmt, None)]).encode(held_out[:50])
        np.testing.assert_allclose(st.encode(held_out[:50]), ours, atol=1e-4)


def test_hub_snapshot_of_an_export_keeps_its_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub download skips other frameworks' onnx/ and openvino/ folders, except for an
    exported model (whose graph is the model)."""
    import huggingface_hub

    from textcl import hub

    calls: list[Any] = []

    def fake(name: str, ignore_patterns: Any = None) -> str:
        calls.append(ignore_patterns)
        folder = tmp_path / name.replace("/", "--")
        folder.mkdir(exist_ok=True)
        if name.endswith("exported"):
            (folder / EXPORT_CONFIG_NAME).write_text("{}")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    hub._hub_snapshot("org/plain")
    assert len(calls) == 1 and "onnx/*" in calls[0]
    calls.clear()
    hub._hub_snapshot("org/exported")
    assert len(calls) == 2 and calls[1] is None


@pytest.mark.parametrize(("fmt", "quant"), CASES)
def test_runtime_streams_give_the_one_stream_output(
    exports: dict[Any, Path], fmt: str, quant: str | None
) -> None:
    """The runners cut a batch into row slices run side by side (2 streams): the hidden
    states equal those of one stream (the oracle) for odd, even and one-row batches."""
    from textcl.export.runtime import onnx_runner, openvino_runner, row_slices

    assert row_slices(5, 2) in ([(0, 2), (2, 5)], [(0, 3), (3, 5)])
    assert row_slices(1, 2) == [(0, 1)] and row_slices(4, 8) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    folder = exports[(fmt, quant)]
    info = read_export_info(folder)
    make = onnx_runner if fmt == "onnx" else openvino_runner
    one = make(folder / info.file, n_threads=2, streams=1)
    two = make(folder / info.file, n_threads=2, streams=2)
    enc = SentenceEncoder.load(folder)
    for rows in (7, 4, 1):
        batch = enc.tokenizer(list(TINY_SENTENCES)[:rows], padding=True, return_tensors="np")
        feed = {n: np.asarray(batch[n], dtype=np.int64) for n in info.inputs if n in batch}
        feed.update({n: np.zeros_like(feed["input_ids"]) for n in info.inputs if n not in feed})
        a, b = one(feed), two(feed)
        assert a.shape == b.shape == (*feed["input_ids"].shape, a.shape[-1])
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_openvino_runner_serves_concurrent_callers(exports: dict[Any, Path]) -> None:
    """Several threads calling one OpenVINO runner at once (the naive server over an exported
    model): each gets its own batch's output, as run alone (the oracle). Before, two calls
    started the same infer requests at once."""
    from textcl.export.runtime import openvino_runner

    folder = exports[("openvino", None)]
    info = read_export_info(folder)
    run = openvino_runner(folder / info.file, n_threads=2, streams=2)
    enc = SentenceEncoder.load(folder)
    feeds = []
    for rows in (7, 5, 3, 6):
        batch = enc.tokenizer(list(TINY_SENTENCES)[-rows:], padding=True, return_tensors="np")
        feed = {n: np.asarray(batch[n], dtype=np.int64) for n in info.inputs if n in batch}
        feed.update({n: np.zeros_like(feed["input_ids"]) for n in info.inputs if n not in feed})
        feeds.append(feed)
    alone = [run(f) for f in feeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(5):
            together = list(pool.map(run, feeds))
            for a, b in zip(alone, together, strict=True):
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::textcl.precision.EmulatedBF16Warning")
@pytest.mark.parametrize("quant", [None, "int8"])
def test_openvino_float_parts_follow_the_precision(
    exports: dict[Any, Path], source: tuple[Path, Path], quant: str | None
) -> None:
    """``encode(precision="bf16")`` runs an OpenVINO graph's float parts at bf16 (a second
    compiled model, kept): close to the fp32 run (the oracle) and, where the CPU has bf16,
    not equal to it (the negative control: the hint reached the runtime); ``fp32`` is the
    loaded model itself; ``auto`` follows :func:`native_bf16` (fp32 under this suite)."""
    enc = SentenceEncoder.load(exports[("openvino", quant)])
    model = enc.model
    assert isinstance(model, ExportedTransformer)
    assert model.at_precision("fp32") is model and model.float_precision == "fp32"
    twin = model.at_precision("bf16")
    assert twin is model.at_precision("bf16") and twin.at_precision("fp32") is model
    assert twin.float_precision == "bf16" and twin.precision == model.precision
    texts = list(TINY_SENTENCES)
    a = enc.encode(texts, precision="fp32")
    assert enc.last_precision == f"openvino {quant or 'fp32'}, float parts fp32"
    b = enc.encode(texts, precision="bf16")
    assert enc.last_precision == f"openvino {quant or 'fp32'}, float parts bf16"
    assert cosines(a, b).min() >= 0.995
    if cpu_has_bf16():  # OpenVINO's own probe: the hint reaches bf16 kernels
        assert not np.allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(enc.encode(texts), a)  # auto: fp32 here (TEXTCL_CPU_BF16=0)
    # the state dict (fingerprint) is the graph's, whatever the float precision
    torch.testing.assert_close(twin.state_dict(), model.state_dict())


@pytest.mark.filterwarnings("ignore::textcl.precision.EmulatedBF16Warning")
def test_onnx_float_parts_stay_fp32_and_qint8_is_refused(exports: dict[Any, Path]) -> None:
    """ONNX Runtime's CPU kernels are float32: bf16 runs the same graph (the fp32 output,
    exactly); qint8 quantizes PyTorch models and is refused for any export."""
    enc = SentenceEncoder.load(exports[("onnx", "int8")])
    assert isinstance(enc.model, ExportedTransformer)
    assert enc.model.at_precision("bf16") is enc.model
    texts = list(TINY_SENTENCES)
    a = enc.encode(texts, precision="fp32")
    np.testing.assert_array_equal(enc.encode(texts, precision="bf16"), a)
    assert enc.last_precision == "onnx int8"
    for fmt in ("onnx", "openvino"):
        other = SentenceEncoder.load(exports[(fmt, "int8")])
        with pytest.warns(QInt8DeprecationWarning), pytest.raises(InputError, match="qint8"):
            other.encode(texts, precision="qint8")


def test_export_checks_quality_at_bf16_where_native(
    source: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Where the CPU has native bf16 (``auto`` then runs OpenVINO's float parts at bf16), the
    export measures that too, records it and holds ``--min-cosine`` to the worse figure;
    without it, fp32 only."""
    model, cal = source
    monkeypatch.setenv("TEXTCL_CPU_BF16", "1")
    out = tmp_path / "ov"
    export_model(model, out, "openvino", calibration=cal, calibration_size=16)
    q = read_export_info(out).quality
    assert q["min_cosine"] >= 0.9999 and 0.99 <= q["bf16"]["min_cosine"] <= 1.0
    assert "float parts at bf16 (what `auto` runs" in (out / "README.md").read_text()
    low, high = q["bf16"]["min_cosine"], q["min_cosine"]
    if low < high:  # a bar between the two figures refuses the export
        with pytest.raises(InputError, match="min cosine"):
            export_model(
                model, tmp_path / "refused", "openvino", calibration=cal,
                calibration_size=16, min_cosine=(low + high) / 2,
            )  # fmt: skip
    assert not (tmp_path / "refused").exists()
    cli_out = tmp_path / "cli"
    argv = ["export", "--model", str(model), "--output", str(cli_out), "--format", "openvino",
            "--calibration", str(cal), "--calibration-size", "16"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert "float parts at bf16, as precision auto runs them here: min" in capsys.readouterr().out
    monkeypatch.setenv("TEXTCL_CPU_BF16", "0")
    export_model(model, tmp_path / "ov0", "openvino", calibration=cal, calibration_size=16)
    assert "bf16" not in read_export_info(tmp_path / "ov0").quality
    onnx = tmp_path / "onnx"
    monkeypatch.setenv("TEXTCL_CPU_BF16", "1")
    export_model(model, onnx, "onnx", calibration=cal, calibration_size=16)
    assert "bf16" not in read_export_info(onnx).quality  # ONNX Runtime runs fp32 only


def test_load_compiles_what_auto_runs(
    exports: dict[Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading compiles the float precision ``encode``'s default (``auto``) resolves to on
    this CPU, so a default encode compiles nothing more; the other one comes on demand."""
    monkeypatch.setenv("TEXTCL_CPU_BF16", "1")
    ov_model = SentenceEncoder.load(exports[("openvino", "int8")]).model
    onnx_model = SentenceEncoder.load(exports[("onnx", "int8")]).model
    assert isinstance(ov_model, ExportedTransformer) and ov_model.float_precision == "bf16"
    assert ov_model.at_precision("bf16") is ov_model
    assert ov_model.at_precision("fp32").float_precision == "fp32"
    assert isinstance(onnx_model, ExportedTransformer) and onnx_model.float_precision == "fp32"
    monkeypatch.setenv("TEXTCL_CPU_BF16", "0")
    assert SentenceEncoder.load(exports[("openvino", "int8")]).model.float_precision == "fp32"


def test_exported_models_build_batches_serially_by_default(
    exports: dict[Any, Path], source: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prefetch=None`` (the default) builds the next batch in a thread for PyTorch models
    and not for exported ones (their runtime keeps every core busy); an explicit value wins.
    The embeddings are the same either way."""
    import textcl.inference as inference

    seen: list[bool] = []
    real = inference._batches

    def spy(make: Any, bounds: Any, prefetch: bool) -> Any:
        seen.append(prefetch)
        return real(make, bounds, prefetch)

    monkeypatch.setattr(inference, "_batches", spy)
    texts = list(TINY_SENTENCES) * 3
    exported = SentenceEncoder.load(exports[("openvino", "int8")])
    a = exported.encode(texts, batch_size=4)
    b = exported.encode(texts, batch_size=4, prefetch=True)
    SentenceEncoder.load(source[0]).encode(texts, batch_size=4)
    assert seen == [False, True, True]
    np.testing.assert_array_equal(a, b)
