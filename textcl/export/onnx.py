"""ONNX export of a transformer and static int8 quantization with ONNX Runtime.

* :func:`export_onnx`: ``torch.onnx.export`` (the TorchScript exporter, no optimum) of the
  Hugging Face encoder, inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids``
  where the model takes them), output ``last_hidden_state``, dynamic batch and sequence
  axes.
* :func:`quantize_onnx_int8`: ONNX Runtime's ``quantize_static`` in the QDQ format, int8
  weights per output channel, uint8 activations calibrated on in-domain sentences, for the
  MatMuls with a constant weight only (the projections and the feed-forward layers). The
  attention products (Q K^T, attention x V), softmax, LayerNorm and GELU stay float: a
  naive all-node static quantization of a transformer destroys its embeddings (min cosine
  0.11 on all-MiniLM-L6-v2, issue 24), this recipe keeps them (docs/export.md).
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from textcl.errors import InputError
from textcl.export.runtime import MODEL_INPUTS, OUTPUT_NAME, import_extra

DEFAULT_OPSET = 17
"""ONNX opset of :func:`export_onnx` (what ONNX Runtime >= 1.14 and OpenVINO read)."""
SAMPLE_SENTENCES: tuple[str, ...] = (
    "An example sentence to trace the encoder.",
    "A second, shorter one.",
)
"""The sentences the exporter traces the model with (two lengths: a padded batch)."""
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy")


class _LastHidden(nn.Module):
    """The encoder with positional inputs and a plain tensor output (what the exporter
    traces)."""

    def __init__(self, model: nn.Module, inputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = list(inputs)

    def forward(self, *args: Tensor) -> Tensor:
        out = self.model(**dict(zip(self.inputs, args, strict=True)), return_dict=True)
        return out.last_hidden_state


def graph_inputs(model: nn.Module, tokenizer: Any) -> list[str]:
    """The inputs the exported graph takes: ``input_ids``, ``attention_mask`` and
    ``token_type_ids`` when both the tokenizer produces them and ``model.forward`` accepts
    them."""
    params = inspect.signature(model.forward).parameters
    produced = set(getattr(tokenizer, "model_input_names", MODEL_INPUTS))
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in produced and "token_type_ids" in params:
        names.append("token_type_ids")
    missing = [n for n in names if n not in params]
    if missing:
        raise InputError(
            f"{type(model).__name__}.forward takes no {', '.join(missing)}: textcl exports "
            "encoders called as model(input_ids, attention_mask[, token_type_ids])"
        )
    return names


def feeds(
    tokenizer: Any,
    texts: Sequence[str],
    inputs: Sequence[str],
    max_length: int,
    batch_size: int = 16,
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy input batches (int64, padded to the batch's longest) of ``texts`` for a graph
    taking ``inputs``."""
    for a in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[a : a + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        batch: dict[str, np.ndarray] = {}
        for name in inputs:
            value = enc.get(name)
            if value is None:
                value = np.zeros_like(enc["input_ids"])
            batch[name] = np.ascontiguousarray(value, dtype=np.int64)
        yield batch


def export_onnx(
    model: nn.Module, tokenizer: Any, path: Path, *, opset: int = DEFAULT_OPSET
) -> list[str]:
    """Export ``model`` (a Hugging Face encoder in eval mode) to ``path``; returns the
    graph's input names. :class:`InputError` when the exporter cannot take the model."""
    import_extra("onnx", "textcl[onnx]", "exporting to ONNX")
    inputs = graph_inputs(model, tokenizer)
    sample = tokenizer(list(SAMPLE_SENTENCES), padding=True, return_tensors="pt")
    args = tuple(
        sample[name] if name in sample else torch.zeros_like(sample["input_ids"]) for name in inputs
    )
    axes = {0: "batch_size", 1: "sequence_length"}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter's deprecation and tracer notices (the trace is checked
            # against the PyTorch model on real sentences after every export)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHidden(model.eval(), inputs),
                args,
                str(path),
                input_names=inputs,
                output_names=[OUTPUT_NAME],
                dynamic_axes={**{n: axes for n in inputs}, OUTPUT_NAME: axes},
                opset_version=opset,
                dynamo=False,
            )
    except Exception as e:
        raise InputError(
            f"the ONNX exporter cannot take this model ({type(model).__name__}, "
            f"{type(e).__name__}: {str(e)[:300]})"
        ) from e
    return inputs


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over prepared batches."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        self._it = iter(list(batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not called by quantize_static
        raise NotImplementedError


def weight_matmuls(path: Path) -> tuple[list[str], list[str]]:
    """(MatMul nodes with a constant weight, the other MatMul nodes) of the graph."""
    onnx = import_extra("onnx", "textcl[onnx]", "quantizing an ONNX model")
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    weights: list[str] = []
    others: list[str] = []
    for node in graph.node:
        if node.op_type == "MatMul":
            (weights if any(i in constants for i in node.input) else others).append(node.name)
    return weights, others


def quantize_onnx_int8(
    source: Path,
    target: Path,
    calibration: Iterable[dict[str, np.ndarray]],
    *,
    method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool = False,
    keep_float: re.Pattern[str] | None = None,
) -> dict[str, Any]:
    """Static int8 QDQ quantization of the weight MatMuls of ``source`` into ``target``,
    calibrated on ``calibration`` batches, except the nodes whose name ``keep_float``
    matches; returns what was done (for ``textcl_export.json``)."""
    ort_q = import_extra(
        "onnxruntime.quantization", "textcl[onnx]", "quantizing an ONNX model to int8"
    )
    if method not in CALIBRATION_METHODS:
        raise InputError(f"unknown calibration method {method!r}: expected {CALIBRATION_METHODS}")
    weights, others = weight_matmuls(source)
    kept = [n for n in weights if keep_float is not None and keep_float.search(n)]
    weights = [n for n in weights if n not in kept]
    if not weights:
        raise InputError(f"{source}: no MatMul with a constant weight to quantize")
    calibrate = {
        "minmax": ort_q.CalibrationMethod.MinMax,
        "percentile": ort_q.CalibrationMethod.Percentile,
        "entropy": ort_q.CalibrationMethod.Entropy,
    }[method]
    ort_q.quantize_static(
        str(source),
        str(target),
        _Reader(calibration),
        quant_format=ort_q.QuantFormat.QDQ,
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=ort_q.QuantType.QUInt8,
        weight_type=ort_q.QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=weights,
        calibrate_method=calibrate,
        extra_options={"MatMulConstBOnly": True},
    )
    return {
        "method": "static int8 (ONNX Runtime quantize_static)",
        "format": "QDQ",
        "weights": "int8, per channel" if per_channel else "int8, per tensor",
        "activations": "uint8, calibrated " + method,
        "reduce_range": reduce_range,
        "quantized": f"{len(weights)} MatMuls with constant weights (projections, FFN)",
        "kept_float": (
            f"{len(kept)} weight MatMuls matching {keep_float.pattern if keep_float else None!r}, "
            f"{len(others)} attention MatMuls, Softmax, LayerNorm, GELU, embeddings"
        ),
    }


class SmoothedLinear(nn.Module):
    """``linear(x / s)`` with the weight's input columns scaled by ``s`` (the same function):
    SmoothQuant's migration of activation outliers into the weights (Xiao et al. 2023,
    https://arxiv.org/abs/2211.10438), as an explicit ``Mul`` before the ``MatMul`` so that
    it applies to any linear layer, after a LayerNorm or a GELU alike."""

    inv_scale: Tensor

    def __init__(self, linear: nn.Linear, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_scale", (1.0 / scale).to(linear.weight.dtype))
        self.weight = nn.Parameter(linear.weight.detach() * scale[None, :], requires_grad=False)
        self.bias = (
            nn.Parameter(linear.bias.detach(), requires_grad=False)
            if linear.bias is not None
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x * self.inv_scale, self.weight, self.bias)


def smooth_linears(
    model: nn.Module, batches: Iterable[dict[str, np.ndarray]], alpha: float = 0.5
) -> int:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`SmoothedLinear`
    with per-input-channel scales ``s = max|x|^alpha / max|w|^(1 - alpha)`` measured on
    ``batches``; returns how many were smoothed."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"smoothing alpha must be in [0, 1], got {alpha}")
    linears = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    peaks: dict[str, Tensor] = {}

    def hook(name: str) -> Any:
        def record(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            peaks[name] = torch.maximum(peaks[name], x) if name in peaks else x

        return record

    handles = [mod.register_forward_pre_hook(hook(name)) for name, mod in linears]
    try:
        with torch.no_grad():
            for batch in batches:
                model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
    done = 0
    for name, lin in linears:
        act = peaks.get(name)
        if act is None:
            continue
        wmax = lin.weight.detach().abs().amax(0).float().clamp(min=1e-5)
        scale = (act.clamp(min=1e-5) ** alpha / wmax ** (1.0 - alpha)).clamp(1e-3, 1e3)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SmoothedLinear(lin, scale))
        done += 1
    return done
