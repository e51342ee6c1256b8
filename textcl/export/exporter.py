"""``textcl export``: a model folder to an ONNX or OpenVINO model folder, fp32 or static int8.

The output is a complete textcl / sentence-transformers model folder: the transformer's
graph in ``onnx/model.onnx`` or ``openvino/openvino_model.xml`` (the names
sentence-transformers' ``backend="onnx"`` / ``"openvino"`` load), the transformers
``config.json``, the tokenizer, the sentence-transformers modules (pooling, Dense, the head
when applied at inference, Normalize, prompts), ``textcl_config.json``, the model card and
``textcl_export.json`` (format, quantization, measured quality, source fingerprint). No
PyTorch weights are copied: the folder is for inference.

Static int8 (``quantize="int8"``, calibrated on in-domain sentences):

* ONNX: every linear layer is smoothed (SmoothQuant, :func:`textcl.export.onnx.smooth_linears`)
  on the calibration sentences, then ONNX Runtime's ``quantize_static`` (QDQ, per-channel
  int8 weights) quantizes the MatMuls with a constant weight except those kept float by
  ``keep_float`` (default, :data:`KEEP_FLOAT_DEFAULTS`: the feed-forward output projections,
  whose inputs after GELU carry the outliers that break per-tensor activation scales, and
  the first three layers' feed-forward input projections; SmoothQuant alpha 0.8;
  docs/export.md has the sensitivity sweep);
* OpenVINO: NNCF ``quantize`` with ``ModelType.TRANSFORMER`` (its own SmoothQuant, float
  softmax / LayerNorm / GELU) on the calibration sentences, the ``keep_float`` MatMuls
  ignored (default: the feed-forward output projections).

Either way the result is checked against the fp32 source on held-out sentences and the
cosines recorded; an fp32 export that does not reproduce the source is refused.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textcl.data.readers import BadRow, read_file
from textcl.encoder import SentenceEncoder
from textcl.errors import FolderConflictError, InputError
from textcl.export.onnx import DEFAULT_OPSET, export_onnx, feeds, quantize_onnx_int8, smooth_linears
from textcl.export.runtime import (
    EXPORT_CONFIG_NAME,
    FORMAT_FILES,
    FORMATS,
    ExportInfo,
    graph_digest,
    graph_files,
    import_extra,
    is_exported_folder,
    runtime_float_precision,
)
from textcl.hub import WEIGHT_SUFFIXES, model_files_digest, model_folder, quiet_transformers
from textcl.io import (
    LOCK_NAME,
    FolderLock,
    atomic_dir,
    atomic_write_text,
    dumps_json,
    path_overlap,
)
from textcl.model_card import render_model_card
from textcl.pooling import DenseLayer
from textcl.precision import native_bf16
from textcl.st_format import write_model_folder
from textcl.tokens import padding_position_offset
from textcl.version import __version__

logger = logging.getLogger(__name__)

QUANTIZATIONS: tuple[str, ...] = ("int8",)
DEFAULT_CALIBRATION_SIZE = 300
"""Calibration sentences (sentence-transformers' static OpenVINO default: 300 samples)."""
CHECK_SIZE = 256
"""Held-out sentences the export is checked on (after the calibration sentences)."""
FFN_OUTPUT = r"(^|/)layer\.\d+/output/dense/"
"""MatMul node names (regular expression) of the feed-forward output projections of
BERT-style encoders: their inputs, after GELU, carry the outliers that break per-tensor
activation scales (quantizing them: min cosine 0.82 on all-MiniLM-L6-v2)."""
KEEP_FLOAT_DEFAULTS: dict[str, str] = {
    "onnx": FFN_OUTPUT + r"|(^|/)layer\.[0-2]/intermediate/dense/",
    "openvino": FFN_OUTPUT,
}
"""int8: MatMul nodes kept float by default, per format (regular expression on the node
name). ONNX: the feed-forward output projections and the feed-forward input projections of
the first three layers: a sensitivity sweep on all-MiniLM-L6-v2 (docs/export.md) found no
single MatMul that decides the worst sentence, but these groups do (min cosine on 500 STS
sentences 0.9886 -> 0.9949 with SmoothQuant alpha 0.8). OpenVINO (NNCF's own SmoothQuant):
the feed-forward output projections."""
KEEP_FLOAT_DEFAULT = KEEP_FLOAT_DEFAULTS["onnx"]
"""The ONNX default of :data:`KEEP_FLOAT_DEFAULTS` (kept for callers of textcl <= 0.x)."""
SMOOTH_ALPHA_DEFAULT = 0.8
"""ONNX int8: SmoothQuant migration strength (0.5 -> 0.8 raised the worst cosine of the
sweep in docs/export.md)."""
FP32_MIN_COSINE = 0.9999
"""An fp32 export whose embeddings differ more from the source's is refused."""
INT8_MIN_COSINE = 0.99
"""The quality bar of int8 exports; below it the export warns (``min_cosine`` refuses)."""
BUILTIN_CHECK_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar on the stage.",
    "The weather will be sunny and warm tomorrow afternoon.",
    "Stock markets fell sharply after the announcement.",
    "She reads a book in the quiet library.",
    "Two dogs are running through a snowy field.",
    "The committee approved the new budget by a narrow margin.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy.",
)
"""Check sentences of an fp32 export given no calibration file."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the folder and its ``textcl_export.json``."""

    path: Path
    info: ExportInfo


def read_sentences(path: Path, text_column: str, limit: int) -> list[str]:
    """Up to ``limit`` non-empty, distinct texts of a calibration file (any format of
    :mod:`textcl.data.readers`; a ``.txt`` file: one sentence a line)."""
    if not path.is_file():
        raise InputError(f"--calibration {path}: no such file")
    seen: dict[str, None] = {}
    for row in read_file(path, [text_column]):
        if isinstance(row, BadRow):
            raise row
        text = str(row.values[0] or "").strip() if row.values else ""
        if text:
            seen.setdefault(text, None)
            if len(seen) >= limit:
                break
    if not seen:
        raise InputError(f"--calibration {path}: no text (column {text_column!r})")
    return list(seen)


def _check_exportable(encoder: SentenceEncoder, source: Path) -> None:
    if encoder.pooling.needs_hidden_states or encoder.pooling.strategy == "prompt":
        raise InputError(
            f"{source}: pooling {encoder.pooling.strategy!r} needs more than the last hidden "
            "state (several layers, or the prompt template's denoising): textcl export takes "
            "models pooling the last hidden state (mean, cls, max, weightedmean, lasttoken, ...)"
        )


def _prepare_output(output: Path, source: Path, overwrite: bool) -> None:
    clash = path_overlap(output, source)
    if clash:
        raise InputError(f"--output {output}: {clash}")
    if output.exists() and not output.is_dir():
        raise FolderConflictError(f"--output {output} is a file, not a folder")
    entries = [p for p in output.iterdir() if p.name != LOCK_NAME] if output.is_dir() else []
    if entries and not overwrite:
        raise FolderConflictError(
            f"--output {output} is not empty: choose a new folder, or pass --overwrite to "
            "replace an earlier export there"
        )
    if entries and not is_exported_folder(output):
        raise FolderConflictError(
            f"--output {output} holds something other than an exported model (no "
            f"{EXPORT_CONFIG_NAME}): --overwrite replaces earlier exports only; choose another "
            "folder"
        )


def _readme(source: Path, encoder: SentenceEncoder, info: ExportInfo) -> str:
    """The source's model card (or a new one) with a section on the export."""
    card = source / "README.md"
    text = (
        card.read_text(encoding="utf-8")
        if card.is_file()
        else render_model_card(encoder.card_model(), {})
    )
    q = info.quality
    lines = [
        "",
        f"## Exported model ({info.label})",
        "",
        f"Exported by textcl {__version__} (`textcl export --format {info.format}"
        + (" --quantize int8" if info.quantization else "")
        + f"`): the transformer runs as `{info.file}`; tokenization, pooling and the other "
        "modules are the source model's. Load it with `SentenceEncoder.load(folder)` "
        f'or `SentenceTransformer(folder, backend="{info.format}")`.',
        "",
    ]
    if info.quantization:
        lines += [f"- {k}: {v}" for k, v in info.quantization.items() if k != "calibration"]
    if q:
        lines.append(
            f"- cosine to the fp32 source on {q.get('sentences')} held-out sentences: "
            f"min {q.get('min_cosine', float('nan')):.5f}, mean "
            f"{q.get('mean_cosine', float('nan')):.5f}"
        )
        if isinstance(q.get("bf16"), dict):
            lines.append(
                "- the same with the float parts at bf16 (what `auto` runs on CPUs with native "
                f"bf16): min "
                f"{q['bf16'].get('min_cosine', float('nan')):.5f}, mean "
                f"{q['bf16'].get('mean_cosine', float('nan')):.5f}"
            )
    return text.rstrip() + "\n" + "\n".join(lines) + "\n"


def _versions(fmt: str) -> dict[str, Any]:
    out: dict[str, Any] = {"textcl": __version__, "torch": torch.__version__}
    for mod in ("onnxruntime", "onnx") if fmt == "onnx" else ("openvino", "nncf"):
        try:
            out[mod] = import_extra(mod, f"textcl[{fmt}]", "export").__version__
        except InputError:
            out[mod] = None
    return out


def _write_graph(
    encoder: SentenceEncoder,
    tmp: Path,
    work: Path,
    fmt: str,
    calibration: Sequence[str],
    *,
    quantize: str | None,
    opset: int,
    keep_float: str,
    smooth_alpha: float,
) -> tuple[list[str], dict[str, Any] | None]:
    """Write the format's graph under ``tmp``; returns (graph inputs, quantization info)."""
    model, tok = encoder.model, encoder.tokenizer
    max_len = encoder.effective_max_length
    target = tmp / FORMAT_FILES[fmt]
    target.parent.mkdir(parents=True, exist_ok=True)
    fp32 = work / "model.onnx" if (fmt == "openvino" or quantize) else target
    inputs = export_onnx(model, tok, fp32, opset=opset)
    quant: dict[str, Any] | None = None
    if fmt == "onnx" and quantize:
        smoothed = copy.deepcopy(model)
        n = smooth_linears(smoothed, feeds(tok, calibration, inputs, max_len), smooth_alpha)
        export_onnx(smoothed, tok, work / "smoothed.onnx", opset=opset)
        quant = quantize_onnx_int8(
            work / "smoothed.onnx",
            target,
            feeds(tok, calibration, inputs, max_len),
            keep_float=re.compile(keep_float) if keep_float else None,
        )
        quant["smoothquant"] = f"alpha {smooth_alpha} on {n} linear layers"
    elif fmt == "openvino":
        ov = import_extra("openvino", "textcl[openvino]", "exporting to OpenVINO")
        ov_model = ov.convert_model(str(fp32))
        if quantize:
            nncf = import_extra("nncf", "textcl[openvino]", "quantizing an OpenVINO model")
            items = list(feeds(tok, calibration, inputs, max_len, batch_size=1))
            ignored = (
                nncf.IgnoredScope(patterns=[f".*(?:{keep_float}).*"], validate=False)
                if keep_float
                else None
            )
            ov_model = nncf.quantize(
                ov_model,
                nncf.Dataset(items),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(items),
                ignored_scope=ignored,
            )
            quant = {
                "method": "static int8 (NNCF quantize, ModelType.TRANSFORMER)",
                "weights": "int8, per channel (NNCF)",
                "activations": "int8, calibrated",
                "kept_float": f"MatMuls matching {keep_float!r} and what NNCF's transformer "
                "preset keeps float (softmax, LayerNorm, GELU, ...), with its SmoothQuant",
            }
        ov.save_model(ov_model, str(target), compress_to_fp16=False)
    return inputs, quant


def _quality(
    source: SentenceEncoder, exported: SentenceEncoder, sentences: Sequence[str]
) -> dict[str, Any]:
    """Cosine of the exported embeddings to the source's (fp32) on ``sentences``: with the
    graph's float parts at fp32, and (``bf16`` key) at bf16 where the format can run them so
    and this CPU has native bf16 (``precision="auto"`` then picks it)."""
    a = np.asarray(
        source.encode(list(sentences), precision="fp32", normalize=True, show_progress=False)
    )
    out: dict[str, Any] = {"sentences": len(sentences)}
    bf16 = runtime_float_precision(exported.model.info.format, "bf16") == "bf16"
    for precision in ("fp32", "bf16") if bf16 and native_bf16("cpu") else ("fp32",):
        b = exported.encode(
            list(sentences), precision=precision, normalize=True, show_progress=False
        )
        cos = (a * np.asarray(b)).sum(1)
        figures = {
            "min_cosine": round(float(cos.min()), 6),
            "mean_cosine": round(float(cos.mean()), 6),
        }
        if precision == "fp32":
            out.update(figures)
        else:
            out[precision] = figures
    return out


def _worst_cosine(quality: dict[str, Any]) -> float:
    """The lowest min cosine of :func:`_quality`'s figures (fp32 and bf16, where measured)."""
    bf16 = quality.get("bf16") or {}
    return min(float(quality["min_cosine"]), float(bf16.get("min_cosine", 1.0)))


def export_model(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    fmt: str = "onnx",
    *,
    quantize: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    text_column: str = "text",
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    keep_float: str | None = None,
    smooth_alpha: float = SMOOTH_ALPHA_DEFAULT,
    min_cosine: float | None = None,
) -> ExportResult:
    """Export ``model`` (a model folder or hub id) to the folder ``output``; see the module
    doc. ``calibration``: a text file (or any table format, column ``text_column``) of
    in-domain sentences: the first ``calibration_size`` calibrate the int8 graph, the next
    :data:`CHECK_SIZE` check it. ``min_cosine``: refuse (no folder written) when the
    exported embeddings' minimum cosine to the source's is lower. ``keep_float``: MatMul
    node names kept float in int8 (a regular expression; ``""``: none; default: the
    format's :data:`KEEP_FLOAT_DEFAULTS`). The folder is written
    atomically under a lock; an existing non-empty ``output`` needs ``overwrite`` and must
    be an earlier export."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if keep_float is None:
        keep_float = KEEP_FLOAT_DEFAULTS[fmt]
    try:
        re.compile(keep_float)
    except re.error as e:
        raise InputError(f"--keep-float {keep_float!r} is not a regular expression: {e}") from e
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InputError(f"--quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if quantize and calibration is None:
        raise InputError(
            "--quantize int8 needs --calibration FILE: a few hundred in-domain sentences "
            "(static int8 is calibrated on the text the model will encode)"
        )
    if isinstance(calibration_size, bool) or calibration_size < 1:
        raise InputError(f"--calibration-size must be a positive integer, got {calibration_size}")
    if not 7 <= opset <= 25:
        raise InputError(f"--opset {opset}: expected an ONNX opset between 7 and 25")
    import_extra(*(("onnx", "textcl[onnx]") if fmt == "onnx" else ("openvino", "textcl[openvino]")), f"textcl export --format {fmt}")  # fmt: skip
    source = model_folder(model)
    if is_exported_folder(source):
        raise InputError(
            f"{source} is already an exported model ({EXPORT_CONFIG_NAME}): export the "
            "PyTorch model it came from"
        )
    out = Path(output)
    _prepare_output(out, source, overwrite)
    sentences: list[str] = []
    if calibration is not None:
        sentences = read_sentences(Path(calibration), text_column, calibration_size + CHECK_SIZE)
    calib = sentences[:calibration_size]
    check = sentences[calibration_size:] or sentences or list(BUILTIN_CHECK_SENTENCES)
    with quiet_transformers():
        encoder = SentenceEncoder.from_pretrained(source, attn_implementation="eager")
    encoder.eval()
    _check_exportable(encoder, source)
    created = not out.exists()
    try:
        with FolderLock(out, what="export folder"):
            info = _export_locked(
                encoder, source, out, fmt, calib, check, sentences[calibration_size:] != [],
                quantize=quantize, calibration=calibration, opset=opset, overwrite=overwrite,
                keep_float=keep_float, smooth_alpha=smooth_alpha, min_cosine=min_cosine,
            )  # fmt: skip
    except BaseException:
        if created and out.is_dir() and [p.name for p in out.iterdir()] == [LOCK_NAME]:
            shutil.rmtree(out, ignore_errors=True)  # nothing of ours to keep
        raise
    logger.info(
        "%s: exported %s (%s); cosine to the source: min %.5f, mean %.5f",
        out,
        source,
        info.label,
        info.quality["min_cosine"],
        info.quality["mean_cosine"],
    )
    return ExportResult(out, info)


def _write_modules(encoder: SentenceEncoder, folder: Path) -> None:
    write_model_folder(
        folder,
        encoder.config,
        max_length=encoder.effective_max_length,
        hidden_size=encoder.hidden_size,
        head=encoder.head,
        dense=[layer for layer in encoder.dense if isinstance(layer, DenseLayer)],
    )


def _write_info(folder: Path, info: ExportInfo) -> None:
    atomic_write_text(folder / EXPORT_CONFIG_NAME, dumps_json(info.to_dict()))


def _check_quality(info: ExportInfo, min_cosine: float | None) -> None:
    """fp32 exports must reproduce the source (at fp32); ``min_cosine`` and the int8 bar
    hold for every float precision measured (:func:`_worst_cosine`)."""
    low = float(info.quality["min_cosine"])
    if info.quantization is None and low < FP32_MIN_COSINE:
        raise InputError(
            f"the {info.format} export does not reproduce the model (fp32, min cosine "
            f"{low:.5f} < {FP32_MIN_COSINE}): the exporter cannot take this model"
        )
    low = _worst_cosine(info.quality)
    if min_cosine is not None and low < min_cosine:
        raise InputError(
            f"the {info.label} export reaches min cosine {low:.5f} to the source, below "
            f"--min-cosine {min_cosine}: nothing written (more or more typical calibration "
            "sentences, or the fp32 export)"
        )
    if info.quantization is not None and low < INT8_MIN_COSINE:
        logger.warning(
            "%s export: min cosine %.5f to the source is below %.2f on the check sentences",
            info.label,
            low,
            INT8_MIN_COSINE,
        )


def _export_locked(
    encoder: SentenceEncoder,
    source: Path,
    out: Path,
    fmt: str,
    calib: list[str],
    check: list[str],
    held_out: bool,
    *,
    quantize: str | None,
    calibration: str | os.PathLike[str] | None,
    opset: int,
    overwrite: bool,
    keep_float: str,
    smooth_alpha: float,
    min_cosine: float | None,
) -> ExportInfo:
    """:func:`export_model`'s work once the output folder's lock is held."""
    _prepare_output(out, source, overwrite)  # again, now that we hold the lock
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by killed exports
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(out) as tmp:
        work = tmp / ".work"
        work.mkdir()
        inputs, quant = _write_graph(
            encoder,
            tmp,
            work,
            fmt,
            calib,
            quantize=quantize,
            opset=opset,
            keep_float=keep_float,
            smooth_alpha=smooth_alpha,
        )
        shutil.rmtree(work)
        if quant is not None:
            quant["calibration"] = {
                "file": str(calibration),
                "sha256": hashlib.sha256("\n".join(calib).encode()).hexdigest(),
                "sentences": len(calib),
            }
        with quiet_transformers():
            encoder.model.config.save_pretrained(tmp)
            encoder.tokenizer.save_pretrained(tmp)
        _write_modules(encoder, tmp)
        info = ExportInfo(
            format=fmt,
            file=FORMAT_FILES[fmt],
            sha256=graph_digest(graph_files(tmp, FORMAT_FILES[fmt])),
            inputs=inputs,
            quantization=quant,
            source={
                "path": str(source),
                "weights_fingerprint": model_files_digest(source, WEIGHT_SUFFIXES),
            },
            padding_idx=padding_position_offset(encoder.model),
            versions=_versions(fmt),
        )
        _write_info(tmp, info)
        exported = SentenceEncoder.from_pretrained(tmp)
        info.quality = {
            **_quality(encoder, exported, check),
            "held_out": held_out,
        }
        del exported
        _check_quality(info, min_cosine)
        _write_info(tmp, info)
        atomic_write_text(tmp / "README.md", _readme(source, encoder, info))
    return info
