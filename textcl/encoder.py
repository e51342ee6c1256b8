"""SentenceEncoder: a Hugging Face encoder + tokenizer + pooling (+ optional head)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Required, TypedDict, cast, overload

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from textcl.io import read_json
from textcl.pooling import (
    HEAD_MODES,
    POOLING_STRATEGIES,
    ST_POOLING_MODES,
    DenseLayer,
    Pooling,
    ProjectionHead,
    check_head_mode,
    check_pooling_name,
    dense_activation,
)

logger = logging.getLogger(__name__)


class TokenBatch(TypedDict, total=False):
    """A padded token batch, as :meth:`SentenceEncoder.tokenize` returns and views map.

    ``input_ids`` and ``attention_mask`` ``(B, L)`` always; ``token_type_ids`` and
    ``position_ids`` ``(B, L)`` are passed to the model; ``special_tokens_mask`` ``(B, L)``
    (1 for special tokens and padding) is read by views, never passed to the model;
    ``embedding_mask`` (a float multiplier broadcastable to ``(B, L, H)``, set by cutoff
    views) scales the word embeddings, which the model then gets as ``inputs_embeds``;
    ``pooling_mask`` ``(B, L)``, when present, replaces ``attention_mask`` for the pooling
    only (prompt tokens left out with ``include_prompt=False``).
    """

    input_ids: Required[Tensor]
    attention_mask: Required[Tensor]
    token_type_ids: Tensor
    position_ids: Tensor
    special_tokens_mask: Tensor
    embedding_mask: Tensor
    pooling_mask: Tensor


def as_token_batch(tensors: Mapping[str, Tensor]) -> TokenBatch:
    """``tensors`` typed as a :class:`TokenBatch` (a new dict; keys are not checked)."""
    return cast(TokenBatch, dict(tensors))


def batch_tensors(batch: TokenBatch) -> dict[str, Tensor]:
    """``batch`` typed as a plain ``dict[str, Tensor]`` (the same object), for code that
    walks its keys generically (slicing, moving, per-token keys)."""
    return cast(dict[str, Tensor], batch)


def padding_position_offset(model: Any) -> int | None:
    """``padding_idx`` of models that number positions from ``padding_idx + 1`` and give
    padding the position ``padding_idx`` (RoBERTa, XLM-R, CamemBERT, MPNet, ...: their
    embeddings module has a ``padding_idx``); ``None`` for models counting from 0 (BERT)."""
    idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return idx if isinstance(idx, int) and not isinstance(idx, bool) else None


def max_positions(model: Any) -> int | None:
    """Longest sequence ``model``'s position embeddings allow: ``max_position_embeddings``,
    less the ``padding_idx + 1`` reserved slots of RoBERTa-style models (None: unknown)."""
    pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(pos, int) or pos <= 0:
        return None
    idx = padding_position_offset(model)
    return pos - (idx + 1 if idx is not None else 0)


def padded_position_ids(input_ids: Tensor, padding_idx: int) -> Tensor:
    """The position ids a RoBERTa-style model derives from ``input_ids``: real tokens
    ``padding_idx + 1, +2, ...`` in order, padding ``padding_idx`` (either padding side)."""
    real = input_ids.ne(padding_idx).long()
    return torch.cumsum(real, dim=1) * real + padding_idx


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> TokenBatch:
    """Tokenize, truncate to ``max_length`` and pad ``texts`` into a :data:`TokenBatch` with
    ``special_tokens_mask`` (1 for special tokens and padding). Needs only the tokenizer,
    so DataLoader workers can run it."""
    texts = check_texts(texts)
    enc = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    batch = as_token_batch({k: v for k, v in enc.items() if isinstance(v, Tensor)})
    # Padding counts as "special" for views: neither may be altered.
    batch["special_tokens_mask"] = (
        batch["special_tokens_mask"].bool() | ~batch["attention_mask"].bool()
    ).long()
    return batch


MODEL_INPUT_KEYS: tuple[str, ...] = ("attention_mask", "token_type_ids", "position_ids")

TEXTCL_CONFIG_NAME = "textcl_config.json"
HEAD_WEIGHTS_NAME = "textcl_head.safetensors"
SHOW_PROGRESS_MIN_BATCHES = 32
"""``encode`` shows a progress bar by default only from this many batches on."""

Output = Literal["numpy", "torch"]
Precision = Literal["fp32", "bf16", "fp16"]

IGNORED_ENCODE_KWARGS_LOG = "encode(): ignoring keyword argument(s) %s (not used by textcl)"
"""Debug line for unknown keywords MTEB / sentence-transformers callers pass."""


@dataclass
class EncoderConfig:
    """How a :class:`SentenceEncoder` turns token states into sentence vectors.

    Saved as ``textcl_config.json`` beside the model weights.
    """

    pooling: str = "mean"
    head_mode: str = "none"
    max_length: int | None = None
    normalize: bool = False
    truncate_dim: int | None = None
    """Keep the first ``truncate_dim`` dimensions (Matryoshka); normalisation comes after."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Named prompts prepended to the text (``encode(prompt_name=...)``)."""
    default_prompt_name: str | None = None
    """The prompt used when ``encode`` gets neither ``prompt`` nor ``prompt_name``."""
    include_prompt: bool = True
    """Whether prompt tokens take part in the pooling (sentence-transformers'
    ``Pooling(include_prompt=...)``); ``False``: the model sees them, the pooling does not."""
    prompt_template: str | None = None
    """``prompt`` pooling (PromptBERT): the template, with ``[X]`` for the sentence and
    ``[MASK]`` for the mask token (default :data:`textcl.prompt.DEFAULT_PROMPT_TEMPLATE`)."""
    prompt_denoise: bool = True
    """``prompt`` pooling: subtract the template-only ``[MASK]`` state (template denoising) at
    inference (PromptBERT's supervised recipe; its unsupervised one denoises in training only)."""

    def __post_init__(self) -> None:
        check_pooling_name(self.pooling)
        if self.pooling == "prompt":
            from textcl.prompt import DEFAULT_PROMPT_TEMPLATE, check_template

            if self.prompt_template is None:
                self.prompt_template = DEFAULT_PROMPT_TEMPLATE
            check_template(self.prompt_template)
        elif self.prompt_template is not None:
            raise ValueError(
                f"prompt_template is set but pooling is {self.pooling!r}: it needs pooling 'prompt'"
            )
        if not isinstance(self.prompt_denoise, bool):
            raise ValueError(f"prompt_denoise must be true or false, got {self.prompt_denoise!r}")
        check_head_mode(self.head_mode)
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < 2
        ):
            raise ValueError(f"max_length must be an integer >= 2 or None, got {self.max_length!r}")
        if self.truncate_dim is not None and (
            isinstance(self.truncate_dim, bool)
            or not isinstance(self.truncate_dim, int)
            or self.truncate_dim < 1
        ):
            raise ValueError(
                f"truncate_dim must be a positive integer or None, got {self.truncate_dim!r}"
            )
        if not isinstance(self.prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.prompts.items()
        ):
            raise ValueError(f"prompts must map names to strings, got {self.prompts!r:.200}")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default_prompt_name {self.default_prompt_name!r} is not one of the prompts "
                f"{sorted(self.prompts)}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> EncoderConfig:
        known = {
            "pooling",
            "head_mode",
            "max_length",
            "normalize",
            "truncate_dim",
            "prompts",
            "default_prompt_name",
            "include_prompt",
            "prompt_template",
            "prompt_denoise",
        }
        unknown = set(data) - known - {"textcl_version", "format", "dense_modules"}
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def check_texts(texts: object, what: str = "texts") -> list[str]:
    """Validate sentences given as any iterable of strings (list, tuple, 1-D numpy array of
    str, generator, ...); return them as a list.

    Raises ``ValueError`` for an empty input and ``TypeError`` naming the first non-string
    item (or the input itself when it is a string, bytes, a mapping or not iterable).
    Empty strings are valid sentences.
    """
    if isinstance(texts, str | bytes | Mapping) or not isinstance(texts, Iterable):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}")
    if isinstance(texts, np.ndarray) and texts.ndim != 1:
        raise TypeError(f"{what} must be a 1-D array of strings, got shape {texts.shape}")
    out = list(texts)
    if len(out) == 0:
        raise ValueError(f"{what} is empty: nothing to encode")
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, not str: {t!r:.80}")
        if type(t) is not str:  # numpy.str_ and other subclasses: plain str for tokenizers
            out[i] = str(t)
    return out


def exclude_prompt_from_mask(attention_mask: Tensor, prompt_length: int) -> Tensor:
    """A copy of ``attention_mask`` ``(B, L)`` with each row's first ``prompt_length`` real
    tokens set to 0 (left padding is skipped): the pooling mask when prompt tokens are not
    pooled (``include_prompt=False``)."""
    present = attention_mask.bool()
    rank = present.long().cumsum(dim=1)  # 1..n over real tokens
    return (present & (rank > prompt_length)).to(attention_mask.dtype)


def autocast_context(device: torch.device, precision: str) -> Any:
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32 / CPU fp16)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}: expected fp32, bf16 or fp16")
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type != "cuda" and precision == "fp16":
        raise ValueError("fp16 autocast needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "qint8")
"""Inference precisions of :meth:`SentenceEncoder.encode` (``float32`` is an alias of fp32)."""
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""``/proc/cpuinfo`` flags of CPUs with native bf16 matrix instructions."""
CPU_BF16_ENV = "TEXTCL_CPU_BF16"
"""Environment variable overriding the CPU bf16 probe of :func:`native_bf16` (``0`` or ``1``)."""


def _cpuinfo_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def _torch_cpu_bf16() -> bool:
    """torch's own CPU probes (private helpers, looked up defensively): AMX tiles or
    AVX512-BF16."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is None:
            continue
        try:
            if fn():
                return True
        except Exception:  # a probe that fails means "unknown", not "no"
            continue
    return False


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bf16 matrix products natively (so bf16 is faster than fp32).

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AMX-BF16 or AVX512-BF16, from torch's CPU
    probes or the ``/proc/cpuinfo`` flags :data:`BF16_CPU_FLAGS`. Without them torch emulates
    bf16 on CPU, which is slower than fp32. Other devices: False.

    The environment variable :data:`CPU_BF16_ENV` (``TEXTCL_CPU_BF16``) overrides the CPU probe:
    ``0`` treats the CPU as having no native bf16 (``auto`` then stays fp32, e.g. for results
    that must not depend on the machine), ``1`` as having it.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{CPU_BF16_ENV}={forced!r}: expected 0 or 1 (or unset)")
        return forced == "1"
    return _torch_cpu_bf16() or bool(_cpuinfo_flags() & set(BF16_CPU_FLAGS))


class EmulatedBF16Warning(UserWarning):
    """bf16 was asked for on a CPU where torch emulates it (slower than fp32)."""


def warn_if_emulated_bf16(precision: str, device: str | torch.device) -> None:
    """Warn when ``precision`` is an explicit ``bf16`` on a CPU without native bf16.

    torch then emulates bf16 matrix products, which is many times slower than fp32 (training
    steps 18-33x slower on 2-core CPUs without AMX / AVX512-BF16, benchmarks/RESULTS.md);
    ``auto`` never picks it there. Python's default warning filter shows it once per process
    for inference and once for training.
    """
    dev = torch.device(device)
    if precision == "bf16" and dev.type == "cpu" and not native_bf16(dev):
        warnings.warn(
            "precision bf16 on a CPU without native bf16 (no AMX / AVX512-BF16): torch "
            "emulates it, many times slower than fp32 (benchmarks/RESULTS.md); use precision "
            "auto or fp32 on this CPU",
            EmulatedBF16Warning,
            stacklevel=2,
        )


def resolve_inference_precision(precision: str | None, device: str | torch.device) -> str:
    """The precision :meth:`SentenceEncoder.encode` runs at on ``device``.

    ``auto`` (or None): bf16 where :func:`native_bf16` (CPUs with AMX/AVX512-BF16, CUDA GPUs
    with bf16), fp32 elsewhere. ``fp16`` needs CUDA; ``qint8`` (dynamic int8 quantization of
    the linear layers; the embeddings are still float32) runs on CPU only.
    sentence-transformers' ``int8``/``uint8``/``binary``/``ubinary`` (quantised *embeddings*)
    are refused.
    """
    p = "fp32" if precision == "float32" else (precision or "auto")
    if p not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)} (textcl "
            "does not quantise embeddings: sentence-transformers' int8/uint8/binary/ubinary "
            "are not supported; qint8 computes float32 embeddings with int8 linear layers)"
        )
    dev = torch.device(device)
    if p == "auto":
        return "bf16" if native_bf16(dev) else "fp32"
    if p == "fp16" and dev.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if p == "qint8" and dev.type != "cpu":
        raise ValueError("precision qint8 (dynamic int8 quantization) runs on CPU only")
    warn_if_emulated_bf16(p, dev)
    return p


def batch_bounds(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
) -> list[tuple[int, int]]:
    """Split sentences sorted longest first into ``[start, stop)`` batches.

    Each batch has at most ``batch_size`` sentences and, with ``max_tokens``, at most
    ``max_tokens`` padded tokens (``size * lengths[start]``, the first being the longest);
    a single sentence longer than ``max_tokens`` forms a batch of its own.
    """
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    bounds: list[tuple[int, int]] = []
    start, n = 0, len(lengths)
    while start < n:
        size = batch_size
        if max_tokens is not None:
            size = min(size, max(1, max_tokens // max(1, lengths[start])))
        stop = min(n, start + size)
        bounds.append((start, stop))
        start = stop
    return bounds


def _is_sentence_transformers_folder(path: Path) -> bool:
    return (path / "modules.json").is_file()


ST_MODULE_PREFIXES: tuple[str, ...] = (
    "sentence_transformers.models.",
    "sentence_transformers.base.modules.",
    "sentence_transformers.sentence_transformer.modules.",
)
"""Module type prefixes of sentence-transformers' own modules (v2 to v6 layouts)."""


@dataclass
class STFolder:
    """What textcl reads from a sentence-transformers folder."""

    model_dir: Path
    settings: dict[str, Any]
    dense: list[DenseLayer]


def _st_module_kind(kind: str) -> str | None:
    if any(kind.startswith(p) for p in ST_MODULE_PREFIXES):
        return kind.rsplit(".", 1)[-1]
    return None


def _sentence_transformers_settings(path: Path) -> STFolder:
    """Read a sentence-transformers folder: its transformer subfolder, the EncoderConfig
    fields it implies (pooling, ``max_seq_length``, Normalize, prompts, ``truncate_dim``) and
    its ``Dense`` modules, in order.

    Supported modules: Transformer, Pooling (one mode), Dense, Dropout (a no-op at
    inference) and a final Normalize. Anything else raises ``ValueError`` naming the module.
    """
    modules_file = path / "modules.json"
    modules = read_json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{modules_file}: expected a list of modules")
    model_dir = path
    settings: dict[str, Any] = {}
    dense: list[DenseLayer] = []
    stage = "start"  # start -> transformer -> pooling -> (dense)* -> normalize
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind_full = str(module.get("type", ""))
        sub = path / str(module.get("path", ""))
        label = f"{modules_file}: module {module.get('name', '?')!r} ({kind_full})"
        kind = _st_module_kind(kind_full)
        if stage == "normalize" and kind != "Dropout":
            raise ValueError(f"{label} comes after Normalize: not supported by textcl")
        if kind == "Transformer":
            if stage != "start":
                raise ValueError(f"{label}: a second Transformer is not supported")
            stage = "transformer"
            model_dir = sub
            cfg_file = sub / "sentence_bert_config.json"
            if cfg_file.is_file():
                st_cfg = read_json(cfg_file)
                if st_cfg.get("do_lower_case"):
                    raise ValueError(
                        f"{cfg_file}: do_lower_case=true (lower-casing before the tokenizer) "
                        "is not supported by textcl"
                    )
                if st_cfg.get("max_seq_length"):
                    settings["max_length"] = int(st_cfg["max_seq_length"])
        elif kind == "Pooling":
            if stage != "transformer":
                raise ValueError(f"{label}: Pooling must follow the Transformer module")
            stage = "pooling"
            pool_file = sub / "config.json"
            pool_cfg = read_json(pool_file)
            settings["pooling"] = _st_pooling_name(pool_cfg, pool_file)
            if pool_cfg.get("include_prompt") is False:
                settings["include_prompt"] = False
        elif kind == "Dense":
            if stage not in ("pooling", "dense"):
                raise ValueError(f"{label}: Dense must come after Pooling")
            stage = "dense"
            dense.append(_read_st_dense(sub, label))
        elif kind == "Normalize":
            if stage not in ("pooling", "dense"):
                raise ValueError(f"{label}: Normalize must come after Pooling")
            stage = "normalize"
            settings["normalize"] = True
        elif kind == "Dropout":
            logger.debug("%s: Dropout is a no-op at inference; skipped", label)
        else:
            raise ValueError(
                f"{label} is not supported by textcl "
                "(supported: Transformer, Pooling, Dense, Dropout, Normalize)"
            )
    if stage in ("start", "transformer"):
        raise ValueError(f"{modules_file}: no Transformer + Pooling modules: not supported")
    st_config_file = path / "config_sentence_transformers.json"
    if st_config_file.is_file():
        st_config = read_json(st_config_file)
        if not isinstance(st_config, dict):
            raise ValueError(f"{st_config_file}: expected a JSON object")
        prompts = st_config.get("prompts") or {}
        if not isinstance(prompts, dict):
            raise ValueError(f"{st_config_file}: prompts must be an object of name: text")
        if prompts:
            settings["prompts"] = {str(k): str(v) for k, v in prompts.items() if v is not None}
        if st_config.get("default_prompt_name") is not None:
            settings["default_prompt_name"] = st_config["default_prompt_name"]
        if st_config.get("truncate_dim") is not None:
            settings["truncate_dim"] = st_config["truncate_dim"]
        sim = st_config.get("similarity_fn_name")
        if sim not in (None, "cosine"):
            logger.warning(
                "%s: the model is meant for %r similarity; textcl's evaluation uses cosine",
                st_config_file,
                sim,
            )
    return STFolder(model_dir, settings, dense)


def _read_st_dense(folder: Path, label: str) -> DenseLayer:
    """A sentence-transformers ``Dense`` module folder (``config.json`` + safetensors)."""
    cfg = read_json(folder / "config.json")
    unsupported = {
        k: cfg[k]
        for k, default in (
            ("use_residual", False),
            ("module_input_name", "sentence_embedding"),
            ("module_output_name", None),
        )
        if k in cfg and cfg[k] not in (default, "sentence_embedding")
    }
    if unsupported:
        raise ValueError(f"{label}: Dense option(s) {unsupported} not supported by textcl")
    try:
        layer = DenseLayer(
            int(cfg["in_features"]),
            int(cfg["out_features"]),
            bias=bool(cfg.get("bias", True)),
            activation=dense_activation(cfg.get("activation_function"), label),
        )
    except KeyError as e:
        raise ValueError(f"{folder / 'config.json'}: missing field {e.args[0]!r}") from None
    weights = folder / "model.safetensors"
    if not weights.is_file():
        other = [p.name for p in folder.glob("*.bin")]
        raise ValueError(
            f"{label}: no model.safetensors in {folder}"
            + (
                f" (found {other}: pickle weights are not loaded by textcl; convert them "
                "to safetensors)"
                if other
                else ""
            )
        )
    from safetensors.torch import load_file

    state = load_file(str(weights))
    try:
        layer.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{weights}: weights do not fit the Dense config ({e})") from None
    return layer


def _st_pooling_name(cfg: dict[str, Any], where: Path) -> str:
    """The textcl pooling for a sentence-transformers ``Pooling`` config (one mode only)."""
    mode = cfg.get("pooling_mode")
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if isinstance(mode, str):
        if mode not in ST_POOLING_MODES:
            raise ValueError(
                f"{where}: pooling_mode {mode!r} is not supported "
                f"(supported: {', '.join(ST_POOLING_MODES)})"
            )
        return mode
    if mode is not None:
        raise ValueError(f"{where}: combined pooling modes {mode!r} are not supported by textcl")
    chosen = [name for name, key in ST_POOLING_MODES.items() if cfg.get(key)]
    if len(chosen) != 1:
        raise ValueError(
            f"{where}: expected exactly one pooling mode, got {chosen or 'none'} "
            "(combined modes are not supported by textcl)"
        )
    return chosen[0]


def _hub_snapshot(name: str) -> Path:
    from huggingface_hub import snapshot_download

    # Skip other frameworks' weights and exported formats: textcl needs config, tokenizer
    # and PyTorch weights (plus sentence-transformers' small JSON files).
    return Path(
        snapshot_download(
            name,
            ignore_patterns=[
                "*.onnx",
                "onnx/*",
                "openvino/*",
                "*.h5",
                "*.msgpack",
                "*.ot",
                "tf_model*",
                "flax_model*",
                "rust_model*",
                "*.tflite",
            ],
        )
    )


class SentenceEncoder(nn.Module):
    """A transformer encoder with pooling that maps sentences to vectors.

    Args:
        model: any Hugging Face ``PreTrainedModel`` that returns ``last_hidden_state``.
        tokenizer: its tokenizer (a fast tokenizer is recommended).
        pooling: a name from :data:`textcl.pooling.POOLING_STRATEGIES` or a :class:`Pooling`.
        head_mode: ``none``, ``train`` (MLP head at training time only) or ``always``.
        max_length: truncate sentences to this many tokens (default: the model's limit).
        normalize: L2-normalise the output of :meth:`encode` by default.
        dense: ``Dense`` layers applied after pooling and head (from sentence-transformers
            folders).
        truncate_dim: keep the first ``truncate_dim`` output dimensions (before normalising).
        prompts / default_prompt_name: named prompts prepended to texts by :meth:`encode`.

    ``forward(batch)`` maps a :data:`TokenBatch` to ``(B, H)`` embeddings with autograd (the
    training path); :meth:`encode` maps a list of strings to embeddings for inference.
    """

    model: Any  # a transformers PreTrainedModel (typed loosely: its API is duck-typed here)
    tokenizer: Any
    bf16_inference: str = "weights"
    """How :meth:`encode` runs bf16: ``weights`` (a bf16 copy of the transformer; pooling,
    head, normalisation in fp32) or ``autocast``. Weights: measured faster than autocast
    (benchmarks/RESULTS.md, "Inference precision")."""
    precision: str = "auto"
    """Default precision of :meth:`encode` (see :func:`resolve_inference_precision`); set it
    to ``"fp32"`` to force full precision everywhere (evaluation, indexing)."""
    last_precision: str | None = None
    """The precision (and bf16 mode) the last :meth:`encode` call ran at, e.g. ``bf16
    (weights)``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        pooling: str | Pooling = "mean",
        head_mode: str = "none",
        max_length: int | None = None,
        normalize: bool = False,
        *,
        dense: Sequence[DenseLayer] | None = None,
        truncate_dim: int | None = None,
        prompts: Mapping[str, str] | None = None,
        default_prompt_name: str | None = None,
        include_prompt: bool = True,
        prompt_template: str | None = None,
        prompt_denoise: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling if isinstance(pooling, Pooling) else Pooling(pooling)
        self.head_mode = check_head_mode(head_mode)
        config = EncoderConfig(
            pooling=self.pooling.strategy,
            head_mode=head_mode,
            max_length=max_length,
            normalize=normalize,
            truncate_dim=truncate_dim,
            prompts=dict(prompts or {}),
            default_prompt_name=default_prompt_name,
            include_prompt=include_prompt,
            prompt_template=prompt_template,
            prompt_denoise=prompt_denoise,
        )
        self.prompt_template = config.prompt_template
        self.prompt_denoise = config.prompt_denoise
        self._prompt: Any = None  # textcl.prompt.PromptTemplate for ``prompt`` pooling
        if self.pooling.strategy == "prompt":
            from textcl.prompt import PromptTemplate

            self._prompt = PromptTemplate(str(self.prompt_template), tokenizer)
        self.max_length = config.max_length
        self.include_prompt = bool(include_prompt)
        self.normalize = normalize
        self.truncate_dim = config.truncate_dim
        self.prompts = config.prompts
        self.default_prompt_name = config.default_prompt_name
        self.head: ProjectionHead | None = (
            ProjectionHead(self.hidden_size) if head_mode != "none" else None
        )
        self.dense = nn.ModuleList(list(dense or []))
        width = self.hidden_size
        for i, layer in enumerate(self.dense):
            if not isinstance(layer, DenseLayer) or layer.in_features != width:
                raise ValueError(
                    f"dense[{i}] must be a DenseLayer taking {width} features, got {layer!r}"
                )
            width = layer.out_features
        if self.truncate_dim is not None and self.truncate_dim > width:
            raise ValueError(
                f"truncate_dim {self.truncate_dim} is larger than the embedding size {width}"
            )
        self._check_tokenizer_matches_model()

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> EncoderConfig:
        return EncoderConfig(
            pooling=self.pooling.strategy,
            head_mode=self.head_mode,
            max_length=self.max_length,
            normalize=self.normalize,
            truncate_dim=self.truncate_dim,
            prompts=dict(self.prompts),
            default_prompt_name=self.default_prompt_name,
            include_prompt=self.include_prompt,
            prompt_template=self.prompt_template,
            prompt_denoise=self.prompt_denoise,
        )

    @property
    def hidden_size(self) -> int:
        cfg = getattr(self.model, "config", None)
        size = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
        if size is None:
            emb = self.model.get_input_embeddings()
            size = emb.embedding_dim
        return int(size)

    @property
    def full_embedding_dim(self) -> int:
        """Dimension of the vectors before ``truncate_dim`` (hidden size or last Dense's)."""
        width = self.hidden_size
        for layer in self.dense:
            assert isinstance(layer, DenseLayer)
            width = layer.out_features
        return width

    @property
    def embedding_dim(self) -> int:
        """Dimension of the sentence vectors :meth:`encode` returns by default."""
        return self.truncate_dim or self.full_embedding_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def effective_max_length(self) -> int:
        """Truncation length: ``max_length`` or the smaller of tokenizer and model limits."""
        if self.max_length is not None:
            return self.max_length
        limits = [512]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 100_000:
            limits.append(tok_max)
        pos = max_positions(self.model)
        if pos is not None:
            limits.append(pos)
        return min(limits)

    def _check_tokenizer_matches_model(self) -> None:
        get_emb = getattr(self.model, "get_input_embeddings", None)
        if get_emb is None:
            raise TypeError(
                f"{type(self.model).__name__} has no get_input_embeddings(): not a Hugging Face encoder"
            )
        n_rows = get_emb().num_embeddings
        n_tokens = len(self.tokenizer)
        if n_tokens > n_rows:
            raise ValueError(
                f"tokenizer/model mismatch: the tokenizer has {n_tokens} tokens but the model's "
                f"embedding table has only {n_rows} rows; load the tokenizer that belongs to this model"
            )
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; set tokenizer.pad_token before building the encoder"
            )

    # ------------------------------------------------------------------ tokenization
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> TokenBatch:
        """Tokenize, truncate and pad ``texts`` into a :data:`TokenBatch` (with
        ``special_tokens_mask``). With ``prompt`` pooling each text is wrapped in the
        encoder's template (:meth:`textcl.prompt.PromptTemplate.tokenize`)."""
        if self._prompt is not None:
            return self.tokenize_prompted(texts, max_length)
        return tokenize_texts(self.tokenizer, texts, max_length or self.effective_max_length)

    def tokenize_prompted(
        self, texts: Sequence[str], max_length: int | None = None, template: Any = None
    ) -> TokenBatch:
        """``prompt`` pooling: ``texts`` wrapped in ``template`` (a
        :class:`textcl.prompt.PromptTemplate`; default: the encoder's), with the
        template-only sequence for denoising when the encoder denoises."""
        tpl = template if template is not None else self._prompt
        if tpl is None:
            raise ValueError(
                f"tokenize_prompted needs pooling 'prompt', not {self.pooling.strategy!r}"
            )
        return tpl.tokenize(
            texts, max_length or self.effective_max_length, denoise=self.prompt_denoise
        )

    def _token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        enc = self.tokenizer(
            texts,
            padding=False,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
        )
        ids: list[list[int]] = enc["input_ids"]
        return ids

    def _pad(self, seqs: list[list[int]]) -> TokenBatch:
        longest = max(len(s) for s in seqs)
        pad_id = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for i, s in enumerate(seqs):
            n = len(s)
            if left:
                input_ids[i, longest - n :] = torch.tensor(s, dtype=torch.long)
                mask[i, longest - n :] = 1
            else:
                input_ids[i, :n] = torch.tensor(s, dtype=torch.long)
                mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    # ------------------------------------------------------------------ forward
    def forward(self, batch: TokenBatch) -> Tensor:
        """Embed a token batch: ``(B, L)`` ids -> ``(B, H)`` sentence vectors (not normalised).

        Applies ``embedding_mask`` to the word embeddings (passed as ``inputs_embeds``) and
        the projection head according to ``head_mode`` and the training flag.
        """
        return self._embed(batch, self.model)

    def _embed(self, batch: TokenBatch, model: Any) -> Tensor:
        """:meth:`forward` through ``model`` (the transformer or a bf16/qint8 copy of it);
        hidden states are promoted to fp32 before pooling, head and dense layers."""
        tensors = batch_tensors(batch)
        kwargs: dict[str, Any] = {k: tensors[k] for k in MODEL_INPUT_KEYS if k in tensors}
        embedding_mask = batch.get("embedding_mask")
        if embedding_mask is None:
            kwargs["input_ids"] = batch["input_ids"]
        else:
            # Embedding-level features (cutoff): the model gets its word embeddings scaled
            # by the mask as inputs_embeds and adds positions and token types itself. Models
            # that derive position ids from input_ids past padding_idx (RoBERTa, MPNet) would
            # number every slot from inputs_embeds, padding too: give them the ids they
            # derive from input_ids (equal for right padding; left padding differs).
            ids = batch["input_ids"]
            words = model.get_input_embeddings()(ids)
            kwargs["inputs_embeds"] = words * embedding_mask.to(
                device=words.device, dtype=words.dtype
            )
            padding_idx = padding_position_offset(self.model)
            if padding_idx is not None and "position_ids" not in kwargs:
                kwargs["position_ids"] = padded_position_ids(ids, padding_idx)
        out = model(
            **kwargs,
            output_hidden_states=self.pooling.needs_hidden_states,
            return_dict=True,
        )
        if self.pooling.strategy == "prompt" and "pooling_mask" not in tensors:
            raise ValueError(
                "prompt pooling needs batches built by SentenceEncoder.tokenize (the template's "
                "[MASK] slot in 'pooling_mask')"
            )
        last, hidden = out.last_hidden_state, out.hidden_states
        if model is not self.model and last.dtype != torch.float32:
            last = last.float()
            hidden = tuple(h.float() for h in hidden) if hidden is not None else None
        pooled = self.pooling(
            last,
            batch.get("pooling_mask", batch["attention_mask"]),
            hidden if self.pooling.needs_hidden_states else None,
        )
        if self.pooling.strategy == "prompt":
            from textcl.prompt import TEMPLATE_KEY

            # Denoise batches that carry the template (tokenize() adds it when the encoder
            # denoises; the trainer's collator when training denoises).
            if TEMPLATE_KEY in tensors or self.prompt_denoise:
                pooled = pooled - self._template_state(tensors)
        if self.head is not None and (self.head_mode == "always" or self.training):
            pooled = self.head(pooled)
        for layer in self.dense:
            pooled = layer(pooled)
        return pooled

    def _template_state(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Template denoising (PromptBERT): the ``[MASK]`` state of each row's template
        alone, its tokens at the position ids they have in the full row, ``(B, H)``."""
        from textcl.prompt import TEMPLATE_KEY, template_positions

        template = tensors.get(TEMPLATE_KEY)
        if template is None:
            raise ValueError(
                f"template denoising needs batch[{TEMPLATE_KEY!r}] (built by "
                "SentenceEncoder.tokenize); or build the encoder with prompt_denoise=False"
            )
        ids = template[..., 0]
        offset = padding_position_offset(self.model)
        kwargs: dict[str, Tensor] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "position_ids": template_positions(
                template, tensors["attention_mask"], 0 if offset is None else offset + 1
            ),
        }
        if "token_type_ids" in tensors:
            kwargs["token_type_ids"] = torch.zeros_like(ids)
        states = self.model(**kwargs, return_dict=True).last_hidden_state
        slot = ids.eq(int(self.tokenizer.mask_token_id)).int().argmax(dim=1)
        return states[torch.arange(ids.shape[0], device=ids.device), slot]

    # ------------------------------------------------------------------ encode
    def length_sorted_batches(
        self,
        texts: list[str],
        batch_size: int,
        max_length: int | None = None,
        max_tokens: int | None = None,
    ) -> tuple[list[int], Iterator[TokenBatch]]:
        """Tokenize ``texts``, order them longest first (by token count) and yield padded
        batches.

        A batch holds at most ``batch_size`` sentences and, when ``max_tokens`` is given, at
        most ``max_tokens`` padded tokens (``len(batch) * longest``; token-budget batching:
        many short sentences or few long ones per batch, a sentence longer than the budget
        alone). Returns the order (``order[k]`` is the input index of the k-th sorted
        sentence) and a lazy iterator of CPU batches.
        """
        ids = self._token_ids(texts, max_length or self.effective_max_length)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        bounds = batch_bounds([len(ids[i]) for i in order], batch_size, max_tokens)

        def gen() -> Iterator[TokenBatch]:
            for start, stop in bounds:
                if self._prompt is not None:  # ordered by sentence length; wrapped per batch
                    yield self.tokenize_prompted([texts[i] for i in order[start:stop]], max_length)
                else:
                    yield self._pad([ids[i] for i in order[start:stop]])

        return order, gen()

    def _inference_model(self, precision: str) -> Any:
        """The transformer :meth:`encode` runs at ``precision``: the model itself, or a
        cached bf16 (``bf16_inference == "weights"``) / qint8 copy of it.

        The copy is rebuilt when any weight changed since (parameter identity, storage and
        in-place version counters: an optimiser step or ``load_state_dict`` invalidates it),
        or the device changed. The copy is not a submodule: not saved, not trained.
        """
        if precision not in ("bf16", "qint8") or (
            precision == "bf16" and self.bf16_inference == "autocast"
        ):
            return self.model
        params = list(self.model.parameters())
        key = (
            precision,
            str(self.device),
            tuple((id(q), q.data_ptr(), q._version) for q in params),
        )
        cached = self.__dict__.get("_inference_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        self.__dict__.pop("_inference_cache", None)  # free the old copy first
        import copy
        import warnings

        with torch.no_grad():
            if precision == "bf16":
                twin = copy.deepcopy(self.model).to(torch.bfloat16)
            else:
                from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.ao's deprecation notice
                    twin = quantize_dynamic(
                        copy.deepcopy(self.model), {nn.Linear: per_channel_dynamic_qconfig}
                    )
        twin.eval()
        self.__dict__["_inference_cache"] = (key, twin)
        return twin

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Literal["torch"],
        convert_to_tensor: bool = ...,
        convert_to_numpy: bool = ...,
        **kwargs: Any,
    ) -> Tensor: ...

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Output = ...,
        convert_to_tensor: Literal[True],
        convert_to_numpy: bool = ...,
        **kwargs: Any,
    ) -> Tensor: ...

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Output = ...,
        convert_to_tensor: bool = ...,
        convert_to_numpy: Literal[False],
        **kwargs: Any,
    ) -> Tensor: ...

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Literal["numpy"] = ...,
        convert_to_tensor: Literal[False] = ...,
        convert_to_numpy: Literal[True] = ...,
        **kwargs: Any,
    ) -> np.ndarray: ...

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Output = ...,
        convert_to_tensor: bool = ...,
        convert_to_numpy: bool = ...,
        **kwargs: Any,
    ) -> np.ndarray | Tensor: ...

    def encode(
        self,
        texts: str | Iterable[str],
        *,
        batch_size: int = 64,
        normalize: bool | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        output: Output = "numpy",
        precision: str | None = None,
        show_progress: bool | None = None,
        max_tokens: int | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        normalize_embeddings: bool | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        output_value: str | None = "sentence_embedding",
        **kwargs: Any,
    ) -> np.ndarray | Tensor:
        """Encode sentences to a ``(N, D)`` float32 array (``(D,)`` for a single string).

        Sentences are sorted by token length and batched (less padding), results come back
        in input order. Runs under ``torch.inference_mode`` in eval mode; the module's
        train/eval mode is restored afterwards. The keywords of
        ``SentenceTransformer.encode`` are accepted, so sentence-transformers and MTEB callers
        work unchanged; other keywords (MTEB's ``task_name``, ``prompt_type``, ...) are
        ignored with a debug log line.

        Args:
            texts: a string or any iterable of strings (list, tuple, 1-D numpy array,
                generator); empty strings are valid.
            batch_size: sentences per forward pass.
            normalize: L2-normalise (after ``truncate_dim``); default: the encoder's
                ``normalize`` setting. ``normalize_embeddings`` is sentence-transformers'
                name for it (``True`` forces it on, like there).
            max_length: truncation in tokens; default: :attr:`effective_max_length`.
            device: run on this device (the module is moved there); default: where it is.
            output: ``"numpy"`` or ``"torch"`` (a CPU tensor). ``convert_to_tensor=True`` or
                ``convert_to_numpy=False`` (sentence-transformers' names) also give a tensor.
            precision: ``auto`` (bf16 on hardware with native bf16, else fp32; see
                :func:`resolve_inference_precision`), ``fp32`` (alias ``float32``: full
                precision), ``bf16`` (weights cast to bf16, or autocast, see
                :attr:`bf16_inference`; pooling and normalisation stay fp32), ``fp16``
                (autocast, CUDA only) or ``qint8`` (dynamic int8 quantization of the linear
                layers, CPU only; float32 embeddings). Default: :attr:`precision` (``auto``). The choice is logged and
                kept in :attr:`last_precision`. sentence-transformers' quantised embedding
                precisions (binary, ...) are refused.
            show_progress: progress bar (alias ``show_progress_bar``); default: on from
                :data:`SHOW_PROGRESS_MIN_BATCHES` batches.
            max_tokens: token-budget batching: also cap each batch at this many padded
                tokens (see :meth:`length_sorted_batches`); ``None``: ``batch_size`` only.
            prompt_name: prepend the prompt of this name (from :attr:`prompts`).
            prompt: prepend this text (wins over ``prompt_name``); default: the prompt named
                ``default_prompt_name`` if set.
            truncate_dim: keep the first dimensions; default: the encoder's ``truncate_dim``.
            output_value: only ``"sentence_embedding"`` (or ``None``) is supported.
        """
        if kwargs:
            logger.debug(IGNORED_ENCODE_KWARGS_LOG, sorted(kwargs))
        if output_value not in (None, "sentence_embedding"):
            raise ValueError(
                f"output_value={output_value!r} is not supported: textcl returns sentence "
                "embeddings only"
            )
        requested = self.precision if precision is None else precision
        resolve_inference_precision(requested, self.device if device is None else device)
        if show_progress is None:
            show_progress = show_progress_bar
        if normalize_embeddings is not None:
            if normalize is False and normalize_embeddings:
                raise ValueError("normalize=False and normalize_embeddings=True disagree")
            # sentence-transformers: False means "no extra normalisation" (a Normalize module
            # still applies); True normalises.
            normalize = True if normalize_embeddings else normalize
        as_tensor = output == "torch" or convert_to_tensor or not convert_to_numpy
        single = isinstance(texts, str)
        items = check_texts([texts] if single else texts)
        text_prompt = self._resolve_prompt(prompt, prompt_name)
        prompt_length = 0
        if text_prompt:
            items = [text_prompt + t for t in items]
            if not self.include_prompt:
                prompt_length = self.prompt_length(text_prompt)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        dim = self.full_embedding_dim
        trunc = self.truncate_dim if truncate_dim is None else truncate_dim
        if trunc is not None:
            if isinstance(trunc, bool) or not isinstance(trunc, int) or trunc < 1:
                raise ValueError(f"truncate_dim must be a positive integer, got {trunc!r}")
            dim = min(dim, trunc)
        if device is not None:
            self.to(device)
        dev = self.device
        precision = resolve_inference_precision(requested, dev)
        model = self._inference_model(precision)
        mode = precision
        if precision == "bf16":
            mode = "bf16 (weights)" if model is not self.model else "bf16 (autocast)"
        if mode != self.last_precision:
            logger.info("encode precision: %s (requested %s, device %s)", mode, requested, dev)
        self.last_precision = mode
        autocast = precision if model is self.model and precision != "qint8" else "fp32"
        norm = self.normalize if normalize is None else normalize
        order, batches = self.length_sorted_batches(items, batch_size, max_length, max_tokens)
        n_batches = (len(items) + batch_size - 1) // batch_size
        show = n_batches >= SHOW_PROGRESS_MIN_BATCHES if show_progress is None else show_progress

        result = torch.empty((len(items), dim), dtype=torch.float32)
        order_t = torch.tensor(order, dtype=torch.long)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), autocast_context(dev, autocast):
                done = 0
                with tqdm(total=len(items), disable=not show, desc="encode", unit="sent") as bar:
                    for batch in batches:
                        if prompt_length and self._prompt is None:
                            batch["pooling_mask"] = exclude_prompt_from_mask(
                                batch["attention_mask"], prompt_length
                            )
                        batch = as_token_batch(
                            {
                                k: v.to(dev, non_blocking=True)
                                for k, v in batch_tensors(batch).items()
                            }
                        )
                        emb = self._embed(batch, model).float()[:, :dim]
                        if norm:
                            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
                        n = emb.shape[0]
                        result[order_t[done : done + n]] = emb.cpu()
                        done += n
                        bar.update(n)
        finally:
            self.train(was_training)
        out = result[0] if single else result
        return out if as_tensor else out.numpy()

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt occupies at the start of a sequence, leading special tokens
        included, a trailing special token (``[SEP]``, EOS) excluded (sentence-transformers'
        rule)."""
        ids: list[int] = self.tokenizer([prompt], truncation=True)["input_ids"][0]
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        return len(ids) - 1 if ids and ids[-1] in special else len(ids)

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """sentence-transformers' rule: ``prompt``, else ``prompts[prompt_name]``, else the
        default prompt."""
        if prompt is not None:
            if prompt_name is not None:
                logger.warning("encode(): both prompt and prompt_name given; using prompt")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"prompt_name {prompt_name!r} is not one of this encoder's prompts "
                    f"{sorted(self.prompts)}"
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike[str], *, card: Mapping[str, Any] | None = None) -> Path:
        """Write the encoder to a folder, atomically (:func:`textcl.io.atomic_dir`).

        The folder loads with :meth:`load`, with plain ``transformers.AutoModel`` /
        ``AutoTokenizer.from_pretrained`` and with ``sentence_transformers.SentenceTransformer``
        (``modules.json``: Transformer, Pooling, a ``Dense`` for the head when
        ``head_mode="always"``, the ``Dense`` layers read from a sentence-transformers
        folder, Normalize when the encoder normalises). ``textcl_config.json`` (read first by
        textcl) holds pooling, head mode, max length, normalisation, prompts and
        ``truncate_dim``; ``textcl_head.safetensors`` the head weights. ``README.md`` is a
        hub model card (:mod:`textcl.model_card`) built from ``card``: the training recipe,
        scores and the base model, as the trainer passes them.

        ``first_last_avg`` / ``last2_avg`` pooling has no sentence-transformers equivalent:
        the folder then says ``mean`` to sentence-transformers, a warning is logged and the
        model card says so.
        """
        from safetensors.torch import save_file

        from textcl import __version__
        from textcl.io import atomic_dir, atomic_write_text, dumps_json
        from textcl.model_card import render_model_card

        target = Path(path)
        notes: list[str] = []
        with _quiet_transformers(), atomic_dir(target) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if self.head is not None:
                save_file(_cpu_state(self.head), str(tmp / HEAD_WEIGHTS_NAME))
            notes, dense_dirs = _write_sentence_transformers_files(self, tmp)
            cfg: dict[str, Any] = {
                "format": 1,
                "textcl_version": __version__,
                **asdict(self.config),
            }
            if dense_dirs:
                cfg["dense_modules"] = dense_dirs
            atomic_write_text(tmp / TEXTCL_CONFIG_NAME, dumps_json(cfg))
            atomic_write_text(tmp / "README.md", render_model_card(self, card or {}, notes=notes))
        for note in notes:
            logger.warning("%s: %s", target, note)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> SentenceEncoder:
        """Load a folder written by :meth:`save` (alias of :meth:`from_pretrained`)."""
        return cls.from_pretrained(path, **overrides)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        pooling: str | None = None,
        head_mode: str | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        device: str | torch.device | None = None,
        prompt_template: str | None = None,
        prompt_denoise: bool | None = None,
        **model_kwargs: Any,
    ) -> SentenceEncoder:
        """Load from a local folder or a Hugging Face hub id.

        Settings come, by priority: the arguments given here; the folder's
        ``textcl_config.json``; a sentence-transformers folder's ``modules.json`` (pooling,
        ``max_seq_length``, Dense, Normalize) and ``config_sentence_transformers.json``
        (prompts, default prompt, ``truncate_dim``); unsupported modules raise
        ``ValueError`` naming them; defaults (``mean`` pooling, no head, the model's
        max length, no normalisation). ``model_kwargs`` go to ``AutoModel.from_pretrained``.
        """
        from transformers import AutoModel, AutoTokenizer

        for name, value, allowed in (
            ("pooling", pooling, POOLING_STRATEGIES),
            ("head_mode", head_mode, HEAD_MODES),
        ):
            if value is not None and value not in allowed:
                raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}")

        from textcl.sources import resolve_source

        src = resolve_source(name_or_path, role="model")  # local folder or hub id, decided once
        settings: dict[str, Any] = {}
        head_file: Path | None = None
        dense: list[DenseLayer] = []
        if src.path is not None:
            local = src.path
            if not local.is_dir():
                raise ValueError(f"{local} is a file, not a model folder")
            model_dir = local
            if (local / TEXTCL_CONFIG_NAME).is_file():
                raw = read_json(local / TEXTCL_CONFIG_NAME)
                settings = asdict(EncoderConfig.from_dict(raw, str(local / TEXTCL_CONFIG_NAME)))
                head_file = local / HEAD_WEIGHTS_NAME
                dense = [
                    _read_st_dense(local / str(d), f"{local / TEXTCL_CONFIG_NAME}: {d}")
                    for d in raw.get("dense_modules") or []
                ]
            elif _is_sentence_transformers_folder(local):
                st_folder = _sentence_transformers_settings(local)
                model_dir, settings, dense = (
                    st_folder.model_dir,
                    st_folder.settings,
                    st_folder.dense,
                )
            if not (model_dir / "config.json").is_file():
                raise ValueError(
                    f"{model_dir} is not a model folder: it has no config.json "
                    "(expected a folder written by save_pretrained / SentenceEncoder.save)"
                )
        else:
            try:
                snapshot = _hub_snapshot(str(src.hub_id))
            except Exception as e:  # network, auth or missing repo
                raise src.hub_error(e) from e
            return cls.from_pretrained(
                snapshot,
                pooling=pooling,
                head_mode=head_mode,
                max_length=max_length,
                normalize=normalize,
                device=device,
                prompt_template=prompt_template,
                prompt_denoise=prompt_denoise,
                **model_kwargs,
            )

        overrides: tuple[tuple[str, object], ...] = (
            ("pooling", pooling),
            ("head_mode", head_mode),
            ("max_length", max_length),
            ("normalize", normalize),
            ("prompt_template", prompt_template),
            ("prompt_denoise", prompt_denoise),
        )
        for key, given in overrides:
            if given is not None:
                settings[key] = given
        if settings.get("pooling", "mean") != "prompt" and prompt_template is None:
            settings.pop("prompt_template", None)  # a saved template, pooling overridden
        config = EncoderConfig(**settings)

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except Exception as e:
            raise ValueError(
                f"{model_dir}: could not load a tokenizer ({type(e).__name__}: {e})"
            ) from e
        try:
            model = AutoModel.from_pretrained(str(model_dir), **model_kwargs)
        except Exception as e:
            raise ValueError(
                f"{model_dir}: could not load a model ({type(e).__name__}: {e})"
            ) from e

        encoder = cls(
            model,
            tokenizer,
            pooling=config.pooling,
            head_mode=config.head_mode,
            max_length=config.max_length,
            normalize=config.normalize,
            dense=dense,
            truncate_dim=config.truncate_dim,
            prompts=config.prompts,
            default_prompt_name=config.default_prompt_name,
            include_prompt=config.include_prompt,
            prompt_template=config.prompt_template,
            prompt_denoise=config.prompt_denoise,
        )
        if encoder.head is not None and head_file is not None and head_file.is_file():
            from safetensors.torch import load_file

            encoder.head.load_state_dict(load_file(str(head_file)))
        elif encoder.head is not None:
            logger.info("%s: no saved projection head; initialised a new one", src.spec)
        if device is not None:
            encoder.to(device)
        return encoder


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' info logging and progress bars (e.g. during save)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a core dependency
        yield
        return
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


ST_UNSUPPORTED_POOLING_NOTE = (
    "pooling {pooling!r} has no sentence-transformers equivalent: "
    "SentenceTransformer(folder) will use mean pooling of the last layer and will NOT "
    "reproduce textcl's embeddings; load the folder with textcl (SentenceEncoder.load)"
)


def _write_sentence_transformers_files(
    encoder: SentenceEncoder, folder: Path
) -> tuple[list[str], list[str]]:
    """Write ``modules.json`` and the module folders that make ``folder`` (already holding
    the transformer and tokenizer at its root) a sentence-transformers folder.

    Returns (notes about what sentence-transformers will not reproduce, the folders of the
    extra Dense layers). The head is written as a ``Dense`` only when it is applied at
    inference (``head_mode="always"``).
    """
    import transformers
    from safetensors.torch import save_file

    from textcl import __version__
    from textcl.io import atomic_write_text, dumps_json

    notes: list[str] = []
    pooling = encoder.pooling.strategy
    st_mode = pooling if pooling in ST_POOLING_MODES else "mean"
    if pooling not in ST_POOLING_MODES:
        notes.append(ST_UNSUPPORTED_POOLING_NOTE.format(pooling=pooling))
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    ]

    def add(kind: str, sub: str) -> Path:
        idx = len(modules)
        path = f"{idx}_{sub}" if sub else ""
        modules.append(
            {
                "idx": idx,
                "name": str(idx),
                "path": path,
                "type": f"sentence_transformers.models.{kind}",
            }
        )
        return folder / path

    atomic_write_text(
        folder / "sentence_bert_config.json",
        dumps_json({"max_seq_length": encoder.effective_max_length, "do_lower_case": False}),
    )
    pool_dir = add("Pooling", "Pooling")
    pool_dir.mkdir()
    pool_cfg: dict[str, Any] = {"word_embedding_dimension": encoder.hidden_size}
    pool_cfg.update({key: mode == st_mode for mode, key in ST_POOLING_MODES.items()})
    pool_cfg["include_prompt"] = encoder.include_prompt
    atomic_write_text(pool_dir / "config.json", dumps_json(pool_cfg))

    layers: list[tuple[DenseLayer | ProjectionHead, bool]] = []
    if encoder.head is not None and encoder.head_mode == "always":
        layers.append((encoder.head, False))
    layers.extend((layer, True) for layer in encoder.dense)  # type: ignore[misc]
    dense_dirs: list[str] = []
    for layer, extra in layers:
        sub = add("Dense", "Dense")
        sub.mkdir()
        if isinstance(layer, ProjectionHead):
            h = encoder.hidden_size
            cfg: dict[str, Any] = {
                "in_features": h,
                "out_features": h,
                "bias": True,
                "activation_function": "torch.nn.modules.activation.Tanh",
            }
            state = {"linear." + k.split(".", 1)[1]: v for k, v in _cpu_state(layer).items()}
        else:
            cfg = layer.st_config()
            state = {k: v for k, v in _cpu_state(layer).items() if k.startswith("linear.")}
        atomic_write_text(sub / "config.json", dumps_json(cfg))
        save_file(state, str(sub / "model.safetensors"))
        if extra:
            dense_dirs.append(sub.name)
    if encoder.normalize:
        add("Normalize", "Normalize").mkdir()
    atomic_write_text(folder / "modules.json", dumps_json(modules))
    st_config: dict[str, Any] = {
        "__version__": {
            "textcl": __version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        },
        "prompts": dict(encoder.prompts),
        "default_prompt_name": encoder.default_prompt_name,
        "similarity_fn_name": "cosine",
    }
    if encoder.truncate_dim is not None:
        # Not read by sentence-transformers (pass SentenceTransformer(..., truncate_dim=));
        # textcl reads it back from here for plain sentence-transformers folders.
        st_config["truncate_dim"] = encoder.truncate_dim
    atomic_write_text(folder / "config_sentence_transformers.json", dumps_json(st_config))
    return notes, dense_dirs
