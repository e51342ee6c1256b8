"""Exported model folders at run time: the ``textcl_export.json`` marker and
:class:`ExportedTransformer`, a drop-in for the transformer of a
:class:`~textcl.SentenceEncoder` backed by an ONNX Runtime session or an OpenVINO
compiled model.

:meth:`SentenceEncoder.from_pretrained` calls :func:`load_exported` for a folder holding
``textcl_export.json`` (written by :mod:`textcl.export.exporter`): the encoder keeps its own
tokenization, batching, pooling, head, Dense layers, normalisation and prompts; only the
transformer's forward pass runs in the exported graph. ``onnxruntime`` and ``openvino``
are optional (the ``textcl[onnx]`` / ``textcl[openvino]`` extras) and imported on first use.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from textcl.errors import CorruptFileError, InputError
from textcl.hub import EXPORTED_MARKER, check_tokenizer_files, load_transformer
from textcl.inference import AUTO, resolve_streams, row_slices
from textcl.io import read_json, sha256_file
from textcl.precision import resolve_inference_precision

logger = logging.getLogger(__name__)

EXPORT_CONFIG_NAME = EXPORTED_MARKER
"""The marker of an exported folder (``textcl_export.json``): format, file, quantization,
source fingerprint."""
EXPORT_FORMAT_VERSION = 1
FORMATS: tuple[str, ...] = ("onnx", "openvino")
"""Export formats (``textcl export --format``)."""
FORMAT_FILES: dict[str, str] = {
    "onnx": "onnx/model.onnx",
    "openvino": "openvino/openvino_model.xml",
}
"""Where each format's graph lives inside the model folder: the names
sentence-transformers' ``backend="onnx"`` / ``backend="openvino"`` load by default
(optimum's ``ONNX_WEIGHTS_NAME`` and ``OV_XML_FILE_NAME`` in the backend's sub-folder)."""
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("onnxruntime", "textcl[onnx]"),
    "openvino": ("openvino", "textcl[openvino]"),
}
"""Per format: the module its runtime needs and the extra that installs it."""
MODEL_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
"""Inputs an exported graph may take (in this order); its output is ``last_hidden_state``."""
OUTPUT_NAME = "last_hidden_state"
FLOAT_PRECISIONS: dict[str, tuple[str, ...]] = {"onnx": ("fp32",), "openvino": ("fp32", "bf16")}
"""Per format: the precisions its CPU runtime can run the graph's float parts at (ONNX
Runtime's CPU kernels are float32; OpenVINO takes a bf16 inference precision)."""
OPENVINO_HINTS: dict[str, str] = {"fp32": "f32", "bf16": "bf16"}
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]
"""A compiled graph: numpy inputs by name -> ``last_hidden_state``."""


def runtime_float_precision(fmt: str, precision: str) -> str:
    """The precision format ``fmt``'s runtime runs a graph's float parts at when ``precision``
    is asked: ``precision`` where it can (:data:`FLOAT_PRECISIONS`), else fp32."""
    return precision if precision in FLOAT_PRECISIONS[fmt] else "fp32"


class MissingExtraError(InputError):
    """An optional runtime (onnxruntime, openvino, nncf) is not installed (exit 2)."""


def import_extra(module: str, extra: str, what: str) -> ModuleType:
    """``import module`` or :class:`MissingExtraError` naming ``extra`` (``pip install
    'textcl[onnx]'``) and ``what`` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{what} needs the {module!r} package, which is not installed ({e}): "
            f"pip install '{extra}'"
        ) from None


def runtime_module(fmt: str, what: str) -> ModuleType:
    """The runtime package of format ``fmt`` (onnxruntime or openvino), see :func:`import_extra`."""
    module, extra = EXTRAS[fmt]
    return import_extra(module, extra, what)


@dataclass
class ExportInfo:
    """The content of ``textcl_export.json``.

    ``file``: the graph, relative to the folder; ``sha256``: its digest (for OpenVINO the
    ``.xml`` and ``.bin`` together, see :func:`graph_digest`); ``inputs``: the graph's input
    names; ``quantization``: ``None`` (fp32) or how the int8 graph was made;
    ``quality``: cosine to the fp32 source on held-out sentences; ``source``: the source
    model's path and weights fingerprint; ``padding_idx``: the source's position offset
    (RoBERTa-style models)."""

    format: str
    file: str
    sha256: str
    inputs: list[str]
    quantization: dict[str, Any] | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    padding_idx: int | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    export_format: int = EXPORT_FORMAT_VERSION

    @property
    def precision(self) -> str:
        """``fp32`` or ``int8`` (what the graph computes in)."""
        return "int8" if self.quantization else "fp32"

    @property
    def label(self) -> str:
        """``onnx int8``, ``openvino fp32``, ..."""
        return f"{self.format} {self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> ExportInfo:
        """Parse and check the marker; :class:`CorruptFileError` naming ``where`` and the
        field for anything a writer of ours would not have written."""
        if not isinstance(raw, dict):
            raise CorruptFileError(f"{where}: expected a JSON object")
        version = raw.get("export_format")
        if version != EXPORT_FORMAT_VERSION:
            raise CorruptFileError(
                f"{where}: field 'export_format' is {version!r}; this textcl reads "
                f"{EXPORT_FORMAT_VERSION} (re-export the model with this version)"
            )
        fmt = raw.get("format")
        if fmt not in FORMATS:
            raise CorruptFileError(f"{where}: field 'format' must be one of {FORMATS}, got {fmt!r}")
        file = raw.get("file")
        if not isinstance(file, str) or file != FORMAT_FILES[fmt]:
            raise CorruptFileError(
                f"{where}: field 'file' must be {FORMAT_FILES[fmt]!r} for format {fmt}, got {file!r}"
            )
        digest = raw.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64:
            raise CorruptFileError(f"{where}: field 'sha256' must be a sha256 hex digest")
        inputs = raw.get("inputs")
        if (
            not isinstance(inputs, list)
            or not inputs
            or any(name not in MODEL_INPUTS for name in inputs)
            or inputs[0] != "input_ids"
        ):
            raise CorruptFileError(
                f"{where}: field 'inputs' must list graph inputs among {MODEL_INPUTS}, "
                f"input_ids first; got {inputs!r}"
            )
        quant = raw.get("quantization")
        if quant is not None and not isinstance(quant, dict):
            raise CorruptFileError(f"{where}: field 'quantization' must be an object or null")
        pad = raw.get("padding_idx")
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)):
            raise CorruptFileError(f"{where}: field 'padding_idx' must be an integer or null")
        extra: dict[str, dict[str, Any]] = {}
        for key in ("quality", "source", "versions"):
            value = raw.get(key) or {}
            if not isinstance(value, dict):
                raise CorruptFileError(f"{where}: field {key!r} must be an object")
            extra[key] = value
        return cls(
            format=fmt,
            file=file,
            sha256=digest,
            inputs=list(inputs),
            quantization=quant,
            padding_idx=pad,
            quality=extra["quality"],
            source=extra["source"],
            versions=extra["versions"],
        )


def graph_files(folder: Path, info_file: str) -> list[Path]:
    """The files of a graph: the ``.onnx`` file (plus an external-data file beside it, if
    any), or OpenVINO's ``.xml`` and ``.bin``."""
    main = folder / info_file
    if main.suffix == ".xml":
        return [main, main.with_suffix(".bin")]
    data = main.with_name(main.name + "_data")
    return [main, data] if data.exists() else [main]


def graph_digest(files: list[Path]) -> str:
    """One sha256 over the graph files' names and digests."""
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def is_exported_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a folder written by ``textcl export``."""
    return (Path(folder) / EXPORT_CONFIG_NAME).is_file()


def read_export_info(folder: Path, *, verify: bool = True) -> ExportInfo:
    """The folder's :class:`ExportInfo`; with ``verify`` the graph files must exist and
    match the recorded digest (:class:`CorruptFileError` otherwise)."""
    where = folder / EXPORT_CONFIG_NAME
    info = ExportInfo.from_dict(read_json(where), str(where))
    if verify:
        files = graph_files(folder, info.file)
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise CorruptFileError(f"{where}: the exported graph is missing: {', '.join(missing)}")
        if graph_digest(files) != info.sha256:
            raise CorruptFileError(
                f"{folder / info.file}: the graph does not match the sha256 recorded in "
                f"{where} (damaged or replaced): export the model again"
            )
    return info


class _Embeddings(nn.Module):
    """What textcl asks of a transformer's ``embeddings`` module: ``padding_idx`` (the
    position offset of RoBERTa-style models, see :func:`textcl.tokens.max_positions`)."""

    def __init__(self, padding_idx: int | None) -> None:
        super().__init__()
        self.padding_idx = padding_idx


class _InputEmbeddingsInfo(nn.Module):
    """Stands in for the word-embedding table: its row count (the tokenizer check), no
    weights (an exported graph cannot take ``inputs_embeds``)."""

    def __init__(self, num_embeddings: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings

    def forward(self, ids: Tensor) -> Tensor:
        raise InputError(
            "an exported model cannot embed tokens outside its graph (embedding-level views "
            "such as feature cutoff are for training): use the source model"
        )


class ExportedTransformer(nn.Module):
    """The transformer of an exported folder, as :class:`~textcl.SentenceEncoder` uses it.

    ``forward(input_ids, attention_mask, token_type_ids=None)`` returns an object with
    ``last_hidden_state`` (float32, on the input's device), computed by ONNX Runtime or
    OpenVINO. ``config`` is the source's transformers config. Training is refused (a
    forward pass in training mode with gradients on), as are ``inputs_embeds`` and hidden states of
    every layer. The module has no weights; its one buffer, ``export_digest`` (the graph's
    sha256 as 32 bytes), makes its state dict (and so an in-memory encoder's fingerprint,
    :func:`textcl.search.model.model_weights_hash`) differ per graph."""

    def __init__(
        self,
        folder: Path,
        info: ExportInfo,
        config: Any,
        make_runner: Callable[[str], Runner],
        float_precision: str = "fp32",
    ) -> None:
        super().__init__()
        if float_precision not in FLOAT_PRECISIONS[info.format]:
            raise ValueError(
                f"{info.format} runs its float parts at {FLOAT_PRECISIONS[info.format]}, "
                f"not {float_precision!r}"
            )
        self.folder = folder
        self.info = info
        self.config = config
        self.float_precision = float_precision
        self.embeddings = _Embeddings(info.padding_idx)
        self._word_embeddings = _InputEmbeddingsInfo(int(config.vocab_size))
        self.register_buffer(
            "export_digest",
            torch.tensor(list(bytes.fromhex(info.sha256)), dtype=torch.uint8),
        )
        # SentenceEncoder.device reads the first parameter: one empty, frozen placeholder.
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self._make_runner = make_runner
        self._runner = make_runner(float_precision)
        # Siblings at the other float precision (at_precision), shared by every copy.
        self._siblings: dict[str, ExportedTransformer] = {float_precision: self}
        self._siblings_lock = threading.Lock()
        self.eval()

    def at_precision(self, precision: str) -> ExportedTransformer:
        """This graph with its float parts run at ``precision`` (``fp32``, ``bf16``; what
        :meth:`SentenceEncoder.encode` resolved): OpenVINO compiles the graph again with
        that inference precision (once, kept); ONNX Runtime's CPU kernels are float32 only,
        so an ONNX graph stays at fp32. The int8 parts of an int8 graph are int8 either
        way. ``qint8`` is refused (:class:`InputError`): it quantizes a PyTorch model."""
        if precision == "qint8":
            raise InputError(
                f"{self.folder} is an exported model ({self.info.label}): precision qint8 "
                "quantizes a PyTorch model; an exported graph runs at fp32 or bf16 (int8 "
                "graphs: textcl export --quantize int8)"
            )
        precision = runtime_float_precision(self.info.format, precision)
        with self._siblings_lock:
            twin = self._siblings.get(precision)
            if twin is None:
                twin = ExportedTransformer(
                    self.folder, self.info, self.config, self._make_runner, precision
                )
                twin._siblings, twin._siblings_lock = self._siblings, self._siblings_lock
                self._siblings[precision] = twin
        return twin

    # --- what SentenceEncoder asks of a transformers model
    def get_input_embeddings(self) -> nn.Module:
        return self._word_embeddings

    @property
    def precision(self) -> str:
        """``onnx int8``, ``openvino fp32``, ...: what the graph was exported at."""
        return self.info.label

    @property
    def run_label(self) -> str:
        """What a forward pass runs: the export's label and, for OpenVINO, the precision of
        its float parts (``openvino int8, float parts bf16``)."""
        if len(FLOAT_PRECISIONS[self.info.format]) == 1:
            return self.info.label
        return f"{self.info.label}, float parts {self.float_precision}"

    def __deepcopy__(self, memo: dict[int, Any]) -> ExportedTransformer:
        # The runtime session is immutable and not copyable: a copy shares it (the graph
        # at another float precision comes from at_precision).
        return self

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        raise InputError(
            f"{self.folder} is an exported model ({self.info.label}): copy the folder to "
            "keep it, or export the source model again (textcl export)"
        )

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool | None = False,
        return_dict: bool | None = True,
        **kwargs: Any,
    ) -> Any:
        from transformers.modeling_outputs import BaseModelOutput  # lazy: start-up time

        if torch.is_grad_enabled() and self.training:
            raise InputError(
                f"{self.folder} is an exported model ({self.info.label}): it runs inference "
                "only and cannot be trained; train the source model "
                f"({self.info.source.get('path', 'the folder it was exported from')}) and "
                "export it again"
            )
        if inputs_embeds is not None or input_ids is None:
            raise InputError(
                f"{self.folder}: an exported model takes input_ids, not inputs_embeds "
                "(embedding-level views are for training: use the source model)"
            )
        if output_hidden_states:
            raise InputError(
                f"{self.folder}: an exported model returns the last hidden state only; "
                "pooling over several layers needs the source model"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids
            if token_type_ids is not None
            else torch.zeros_like(input_ids),
        }
        feed = {
            name: np.ascontiguousarray(given[name].detach().cpu().numpy(), dtype=np.int64)
            for name in self.info.inputs
        }
        hidden = torch.from_numpy(np.asarray(self._runner(feed), dtype=np.float32))
        return BaseModelOutput(last_hidden_state=hidden.to(input_ids.device))


def threads() -> int:
    """Intra-op threads of the runtimes: torch's count (``--threads`` / ``OMP_NUM_THREADS``)."""
    return max(1, torch.get_num_threads())


def onnx_runner(path: Path, n_threads: int | None = None, streams: int | None = None) -> Runner:
    """An ONNX Runtime CPU session of ``path`` (all graph optimisations) as
    ``feed -> last_hidden_state``.

    ``streams`` (default: :func:`textcl.inference.resolve_streams` ``"auto"``: 2 from 2
    threads on): each batch is cut into that many row slices, run at the same time from as
    many Python threads on the one session (``session.run`` is thread-safe and releases the
    GIL), each with ``threads // streams`` intra-op threads; rows are independent, so the
    output is the one-stream output. On a 2-core machine this avoids a 2-thread barrier
    after every small kernel (docs/export.md, "How the runtimes are driven")."""
    ort = runtime_module("onnx", "running an ONNX model")
    n = n_threads or threads()
    k = streams or resolve_streams(AUTO, torch.device("cpu"), n)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, n // k)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="textcl-ort") if k > 1 else None

    def one(feed: dict[str, np.ndarray]) -> np.ndarray:
        return session.run([OUTPUT_NAME], feed)[0]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        parts = row_slices(len(feed["input_ids"]), k)
        if pool is None or len(parts) == 1:
            return one(feed)
        slices = [{name: v[a:b] for name, v in feed.items()} for a, b in parts]
        return np.concatenate(list(pool.map(one, slices)))

    return run


def openvino_runner(
    model: Any,
    n_threads: int | None = None,
    streams: int | None = None,
    precision: str = "fp32",
) -> Runner:
    """An OpenVINO CPU compiled model of ``model`` (a path or an ``ov.Model``) as
    ``feed -> last_hidden_state``. ``precision``: the inference precision of what the graph
    computes in float (``fp32``; ``bf16``, where the CPU has native bf16, roughly doubles
    the speed of float matmuls; the int8 parts of an int8 graph stay int8).

    ``streams`` (default as in :func:`onnx_runner`): ``NUM_STREAMS`` CPU streams sharing
    the ``threads``, one infer request each; each batch is cut into that many row slices
    that run at the same time (``start_async``, then ``wait``). Calls from several threads
    take turns (an infer request runs one inference at a time)."""
    ov = runtime_module("openvino", "running an OpenVINO model")
    n = n_threads or threads()
    k = streams or resolve_streams(AUTO, torch.device("cpu"), n)
    core = ov.Core()
    if not isinstance(model, ov.Model):
        model = core.read_model(str(model))
    compiled = core.compile_model(
        model,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": str(n),
            "NUM_STREAMS": str(k),
            "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision],
        },
    )
    requests = [compiled.create_infer_request() for _ in range(k)]
    busy = threading.Lock()  # the requests are this runner's: one batch at a time

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        parts = row_slices(len(feed["input_ids"]), k)
        with busy:
            for req, (a, b) in zip(requests, parts, strict=False):
                req.start_async({name: np.ascontiguousarray(v[a:b]) for name, v in feed.items()})
            outs = []
            for req in requests[: len(parts)]:
                req.wait()
                outs.append(np.array(req.get_output_tensor(0).data, copy=True))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    return run


def load_exported(folder: Path) -> tuple[ExportedTransformer, Any]:
    """The :class:`ExportedTransformer` and tokenizer of an exported folder (its graph
    checked against ``textcl_export.json``)."""
    from transformers import AutoConfig, AutoTokenizer  # lazy: start-up time

    info = read_export_info(folder)
    check_tokenizer_files(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as e:
        raise CorruptFileError(
            f"{folder}: could not load the tokenizer or config of the exported model "
            f"({type(e).__name__}: {e})"
        ) from e
    path = folder / info.file

    def make_runner(precision: str) -> Runner:
        if info.format == "onnx":
            return onnx_runner(path)
        return openvino_runner(path, precision=precision)

    # Compile first what encode's default precision ("auto") runs here; the other on demand.
    first = runtime_float_precision(info.format, resolve_inference_precision(AUTO, "cpu"))
    logger.info("%s: exported model, %s (float parts %s)", folder, info.label, first)
    return ExportedTransformer(folder, info, config, make_runner, first), tokenizer


def load_model(model_dir: Path, model_kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    """The transformer and tokenizer of a model folder: :func:`load_exported` for a folder
    written by ``textcl export`` (``model_kwargs`` do not apply to it: ignored with a
    warning), else :func:`textcl.hub.load_transformer`."""
    if not is_exported_folder(model_dir):
        return load_transformer(model_dir, model_kwargs)
    if model_kwargs:
        logger.warning(
            "%s: an exported model; ignoring transformers loading options %s",
            model_dir,
            sorted(model_kwargs),
        )
    return load_exported(model_dir)
