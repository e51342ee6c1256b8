"""ONNX Runtime and OpenVINO peers for ``encode_throughput.py --peers`` (the ``bench`` extra).

sentence-transformers' own ``backend="onnx"`` / ``backend="openvino"`` go through optimum /
optimum-intel: optimum-onnx 0.1 pins ``transformers<4.58`` and optimum-intel 2.x needs
optimum-onnx; neither installs beside textcl's transformers 5 (docs/export.md).
These peers run the same runtimes on the same graph without optimum, as those backends do:

* the Hugging Face encoder exported once to ONNX (textcl's ``textcl.export.onnx.export_onnx``:
  ``torch.onnx.export``, TorchScript exporter, opset 17, dynamic batch and length; output
  ``last_hidden_state``);
* ``ort fp32``: an ONNX Runtime CPU session of that file (all graph optimisations);
* ``ort int8``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, per tensor, the
  setting of sentence-transformers' ``export_dynamic_quantized_onnx_model(..., "avx512_vnni")``);
* ``openvino bf16 hint``: the ONNX file compiled by OpenVINO with
  ``INFERENCE_PRECISION_HINT=bf16`` (OpenVINO keeps f32 where the CPU has no bf16 units);
* ``openvino int8``: NNCF post-training static quantization (``ModelType.TRANSFORMER``, the
  setting of sentence-transformers' ``export_static_quantized_openvino_model``) calibrated on
  the benchmark's first sentences.

Every peer tokenizes with the model's fast tokenizer, batches as sentence-transformers does
(sentences sorted by character length, ``batch_size`` per batch, padded to the longest), then
mean-pools over the attention mask and L2-normalises (all-MiniLM-L6-v2's modules). The
thread count follows torch's. A peer whose package is missing is skipped with the reason.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

EncodeFn = Callable[[list[str]], np.ndarray]


def export_onnx(model_dir: Path, path: Path, max_length: int) -> None:
    """Export the Hugging Face encoder under ``model_dir`` to ``path`` (fp32, opset 17)
    with textcl's exporter (:func:`textcl.export.onnx.export_onnx`)."""
    from transformers import AutoModel, AutoTokenizer

    from textcl.export.onnx import export_onnx as export_graph

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    export_graph(model, tok, path)


def _batches(
    tok: Any, texts: list[str], batch_size: int, max_length: int
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(positions in ``texts``, numpy inputs) per batch, longest sentences first."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for a in range(0, len(texts), batch_size):
        idx = order[a : a + batch_size]
        enc = tok(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        yield idx, {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over real tokens, then L2 normalisation (float32)."""
    m = mask[..., None].astype(np.float32)
    v = (hidden.astype(np.float32) * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)


def _encoder(
    tok: Any, run: Callable[[dict[str, np.ndarray]], np.ndarray], batch_size: int, max_length: int
) -> EncodeFn:
    def encode(texts: list[str]) -> np.ndarray:
        out: np.ndarray | None = None
        for idx, inputs in _batches(tok, texts, batch_size, max_length):
            vec = _pool(run(inputs), inputs["attention_mask"])
            if out is None:
                out = np.empty((len(texts), vec.shape[1]), dtype=np.float32)
            out[idx] = vec
        assert out is not None
        return out

    return encode


def runtime_peers(
    model_dir: Path, calibration: list[str], batch_size: int, max_length: int = 256
) -> list[tuple[str, EncodeFn]]:
    """The ONNX Runtime / OpenVINO contenders that can run here (missing ones print why)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix="textcl-peers-"))
    onnx_path, int8_path = tmp / "model.onnx", tmp / "model_qint8.onnx"
    out: list[tuple[str, EncodeFn]] = []

    def attempt(
        name: str, make: Callable[[], Callable[[dict[str, np.ndarray]], np.ndarray]]
    ) -> None:
        try:
            out.append((name, _encoder(tok, make(), batch_size, max_length)))
        except Exception as e:  # optional peers: report and go on
            print(f"skipped {name}: {type(e).__name__}: {str(e)[:200]}")

    try:
        export_onnx(model_dir, onnx_path, max_length)
    except Exception as e:
        print(f"skipped the ONNX / OpenVINO peers: export failed: {type(e).__name__}: {e}")
        return out

    def ort_session(path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda inputs: sess.run(["last_hidden_state"], inputs)[0]

    def ort_int8() -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
        return ort_session(int8_path)

    def ov_compiled(model: Any, config: dict[str, str]) -> Any:
        import openvino as ov

        compiled = ov.Core().compile_model(
            model, "CPU", {"INFERENCE_NUM_THREADS": str(threads), **config}
        )
        request = compiled.create_infer_request()
        return lambda inputs: request.infer(inputs)[compiled.output(0)]

    def ov_bf16() -> Any:
        import openvino as ov

        return ov_compiled(
            ov.Core().read_model(str(onnx_path)), {"INFERENCE_PRECISION_HINT": "bf16"}
        )

    def ov_int8() -> Any:
        import nncf
        import openvino as ov

        items = [inputs for _, inputs in _batches(tok, calibration[:300], 1, max_length)]
        quantized = nncf.quantize(
            ov.Core().read_model(str(onnx_path)),
            nncf.Dataset(items),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(items),
        )
        return ov_compiled(quantized, {})

    attempt("ort fp32", lambda: ort_session(onnx_path))
    attempt("ort int8", ort_int8)
    attempt("openvino bf16 hint", ov_bf16)
    attempt("openvino int8", ov_int8)
    return out
