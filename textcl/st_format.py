"""Model folder formats: sentence-transformers modules and textcl's ``textcl_config.json``.

Reads what :meth:`SentenceEncoder.from_pretrained` needs from a local folder (a textcl
folder, a sentence-transformers folder or a plain transformers folder) and writes the files
:meth:`SentenceEncoder.save` adds beside the transformer and tokenizer. Each
sentence-transformers module kind is read and written next to each other, here only:
Transformer (``sentence_bert_config.json``), Pooling, Dense, Normalize, and
``config_sentence_transformers.json`` (prompts, default prompt, ``truncate_dim``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from textcl.encoder_config import HEAD_WEIGHTS_NAME, TEXTCL_CONFIG_NAME, EncoderConfig
from textcl.errors import InputError
from textcl.io import atomic_write_text, dumps_json, read_json, read_json_object
from textcl.pooling import (
    ST_POOLING_MODES,
    DenseLayer,
    ProjectionHead,
    activation_path,
    dense_activation,
)
from textcl.version import __version__

logger = logging.getLogger(__name__)

ST_MODULE_PREFIXES: tuple[str, ...] = (
    "sentence_transformers.models.",
    "sentence_transformers.base.modules.",
    "sentence_transformers.sentence_transformer.modules.",
)
"""Module type prefixes of sentence-transformers' own modules (v2 to v6 layouts)."""

ST_UNSUPPORTED_POOLING_NOTE = (
    "pooling {pooling!r} has no sentence-transformers equivalent: "
    "SentenceTransformer(folder) will use mean pooling of the last layer and will NOT "
    "reproduce textcl's embeddings; load the folder with textcl (SentenceEncoder.load)"
)

ST_CONFIG_NAME = "config_sentence_transformers.json"
ST_TRANSFORMER_CONFIG_NAME = "sentence_bert_config.json"


@dataclass
class ModelFolder:
    """What textcl reads from a local model folder before loading the transformer.

    ``settings``: :class:`EncoderConfig` fields the folder sets; ``dense``: its Dense layers,
    in order; ``head_file``: where a textcl folder keeps the projection head (may not exist).
    """

    model_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    dense: list[DenseLayer] = field(default_factory=list)
    head_file: Path | None = None


def cpu_state(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s state dict as contiguous CPU tensors (what safetensors writes)."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------- Transformer
def _write_transformer(folder: Path, max_length: int) -> None:
    atomic_write_text(
        folder / ST_TRANSFORMER_CONFIG_NAME,
        dumps_json({"max_seq_length": max_length, "do_lower_case": False}),
    )


def _read_transformer(folder: Path, settings: dict[str, Any]) -> None:
    cfg_file = folder / ST_TRANSFORMER_CONFIG_NAME
    if not cfg_file.is_file():
        return
    st_cfg = read_json_object(cfg_file, "sentence-transformers Transformer config")
    lower = st_cfg.get("do_lower_case")
    if lower is not None and not isinstance(lower, bool):
        raise ValueError(f"{cfg_file}: field 'do_lower_case' must be true or false, got {lower!r}")
    if lower:
        raise ValueError(
            f"{cfg_file}: do_lower_case=true (lower-casing before the tokenizer) "
            "is not supported by textcl"
        )
    length = st_cfg.get("max_seq_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
        raise ValueError(f"{cfg_file}: field 'max_seq_length' must be an integer, got {length!r}")
    if length:
        settings["max_length"] = length


# ---------------------------------------------------------------------- Pooling
def _write_pooling(folder: Path, pooling: str, hidden_size: int, include_prompt: bool) -> str:
    """Write a Pooling module; returns the mode sentence-transformers will use."""
    st_mode = pooling if pooling in ST_POOLING_MODES else "mean"
    cfg: dict[str, Any] = {"word_embedding_dimension": hidden_size}
    cfg.update({key: mode == st_mode for mode, key in ST_POOLING_MODES.items()})
    cfg["include_prompt"] = include_prompt
    atomic_write_text(folder / "config.json", dumps_json(cfg))
    return st_mode


def _read_pooling(folder: Path, settings: dict[str, Any]) -> None:
    pool_file = folder / "config.json"
    pool_cfg = read_json_object(pool_file, "Pooling config")
    settings["pooling"] = _st_pooling_name(pool_cfg, pool_file)
    if pool_cfg.get("include_prompt") is False:
        settings["include_prompt"] = False


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


# ---------------------------------------------------------------------- Dense
def _write_dense(folder: Path, layer: DenseLayer | ProjectionHead) -> None:
    """Write a Dense module: a :class:`DenseLayer`, or the projection head as the
    ``Dense(H, H, Tanh)`` it is."""
    if isinstance(layer, ProjectionHead):
        linear = layer.dense
        cfg: dict[str, Any] = {
            "in_features": linear.in_features,
            "out_features": linear.out_features,
            "bias": True,
            "activation_function": activation_path(layer.activation),
        }
        state = {"linear." + k.split(".", 1)[1]: v for k, v in cpu_state(layer).items()}
    else:
        cfg = layer.st_config()
        state = {k: v for k, v in cpu_state(layer).items() if k.startswith("linear.")}
    atomic_write_text(folder / "config.json", dumps_json(cfg))
    save_file(state, str(folder / "model.safetensors"))


def _read_dense(folder: Path, label: str) -> DenseLayer:
    """A sentence-transformers ``Dense`` module folder (``config.json`` + safetensors)."""
    cfg = read_json_object(folder / "config.json", "Dense config")
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
    state = load_file(str(weights))
    try:
        layer.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{weights}: weights do not fit the Dense config ({e})") from None
    return layer


# ---------------------------------------------------------------------- prompts, truncate_dim
def _write_st_config(folder: Path, config: EncoderConfig) -> None:
    import transformers  # lazy: start-up time (transformers takes seconds to import)

    st_config: dict[str, Any] = {
        "__version__": {
            "textcl": __version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        },
        "prompts": dict(config.prompts),
        "default_prompt_name": config.default_prompt_name,
        "similarity_fn_name": "cosine",
    }
    if config.truncate_dim is not None:
        # Not read by sentence-transformers (pass SentenceTransformer(..., truncate_dim=));
        # textcl reads it back from here for plain sentence-transformers folders.
        st_config["truncate_dim"] = config.truncate_dim
    atomic_write_text(folder / ST_CONFIG_NAME, dumps_json(st_config))


def _read_st_config(folder: Path, settings: dict[str, Any]) -> None:
    st_config_file = folder / ST_CONFIG_NAME
    if not st_config_file.is_file():
        return
    st_config = read_json_object(st_config_file, "sentence-transformers config")
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


# ---------------------------------------------------------------------- modules.json
def is_sentence_transformers_folder(path: Path) -> bool:
    return (path / "modules.json").is_file()


def _st_module_kind(kind: str) -> str | None:
    if any(kind.startswith(p) for p in ST_MODULE_PREFIXES):
        return kind.rsplit(".", 1)[-1]
    return None


def read_sentence_transformers_folder(path: Path) -> ModelFolder:
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
    folder = ModelFolder(path)
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
            folder.model_dir = sub
            _read_transformer(sub, folder.settings)
        elif kind == "Pooling":
            if stage != "transformer":
                raise ValueError(f"{label}: Pooling must follow the Transformer module")
            stage = "pooling"
            _read_pooling(sub, folder.settings)
        elif kind == "Dense":
            if stage not in ("pooling", "dense"):
                raise ValueError(f"{label}: Dense must come after Pooling")
            stage = "dense"
            folder.dense.append(_read_dense(sub, label))
        elif kind == "Normalize":
            if stage not in ("pooling", "dense"):
                raise ValueError(f"{label}: Normalize must come after Pooling")
            stage = "normalize"
            folder.settings["normalize"] = True
        elif kind == "Dropout":
            logger.debug("%s: Dropout is a no-op at inference; skipped", label)
        else:
            raise ValueError(
                f"{label} is not supported by textcl "
                "(supported: Transformer, Pooling, Dense, Dropout, Normalize)"
            )
    if stage in ("start", "transformer"):
        raise ValueError(f"{modules_file}: no Transformer + Pooling modules: not supported")
    _read_st_config(path, folder.settings)
    return folder


def write_sentence_transformers_files(
    folder: Path,
    config: EncoderConfig,
    *,
    max_length: int,
    hidden_size: int,
    head: ProjectionHead | None,
    dense: Sequence[DenseLayer],
) -> tuple[list[str], list[str]]:
    """Write ``modules.json`` and the module folders that make ``folder`` (already holding
    the transformer and tokenizer at its root) a sentence-transformers folder.

    Returns (notes about what sentence-transformers will not reproduce, the folders of the
    extra Dense layers). The head is written as a ``Dense`` only when it is applied at
    inference (``head_mode="always"``).
    """
    notes: list[str] = []
    if config.pooling not in ST_POOLING_MODES:
        notes.append(ST_UNSUPPORTED_POOLING_NOTE.format(pooling=config.pooling))
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    ]

    def add(kind: str, sub: str) -> Path:
        idx = len(modules)
        path = f"{idx}_{sub}"
        modules.append(
            {
                "idx": idx,
                "name": str(idx),
                "path": path,
                "type": f"sentence_transformers.models.{kind}",
            }
        )
        (folder / path).mkdir()
        return folder / path

    _write_transformer(folder, max_length)
    _write_pooling(add("Pooling", "Pooling"), config.pooling, hidden_size, config.include_prompt)
    layers: list[tuple[DenseLayer | ProjectionHead, bool]] = []
    if head is not None and config.head_mode == "always":
        layers.append((head, False))
    layers.extend((layer, True) for layer in dense)
    dense_dirs: list[str] = []
    for layer, extra in layers:
        sub = add("Dense", "Dense")
        _write_dense(sub, layer)
        if extra:
            dense_dirs.append(sub.name)
    if config.normalize:
        add("Normalize", "Normalize")
    atomic_write_text(folder / "modules.json", dumps_json(modules))
    _write_st_config(folder, config)
    return notes, dense_dirs


# ---------------------------------------------------------------------- the whole folder
RUN_FOLDER_MARKERS: tuple[str, ...] = ("metrics.jsonl", "checkpoints", "results.json")
"""Entries of a textcl training run folder that no model folder has."""
RUN_MODEL_FOLDERS: tuple[str, ...] = ("best", "final")
"""The loadable model folders of a training run, in order of preference."""


def run_folder_models(local: Path) -> list[Path] | None:
    """When ``local`` is a textcl training run folder (it holds ``metrics.jsonl``,
    ``checkpoints/`` or ``results.json`` and no model files at its root): its loadable
    model folders (``best/``, ``final/``, then each checkpoint's ``model/``, newest first;
    possibly none yet). ``None`` for any other folder."""
    if (local / TEXTCL_CONFIG_NAME).is_file() or is_sentence_transformers_folder(local):
        return None
    if not any((local / m).exists() for m in RUN_FOLDER_MARKERS):
        return None
    found = [local / n for n in RUN_MODEL_FOLDERS if (local / n / "config.json").is_file()]
    ckpts = local / "checkpoints"
    if ckpts.is_dir():
        found += sorted(
            (p / "model" for p in ckpts.glob("step-*") if (p / "model" / "config.json").is_file()),
            reverse=True,
        )
    return found


def read_model_folder(local: Path) -> ModelFolder:
    """Read a local model folder: ``textcl_config.json`` first (with its Dense folders and
    head file), else a sentence-transformers ``modules.json``, else a plain transformers
    folder (no settings). ``ValueError`` when ``local`` is a file, a textcl training run
    folder (naming the model folders in it) or has no ``config.json``.
    """
    if not local.is_dir():
        raise ValueError(f"{local} is a file, not a model folder")
    models = run_folder_models(local)
    if models is not None:
        where = (
            "load one of its model folders: " + ", ".join(str(m) for m in models[:4])
            if models
            else "it holds no model yet (no best/, final/ or checkpoint)"
        )
        raise InputError(f"{local} is a textcl training run folder, not a model folder: {where}")
    folder = ModelFolder(local)
    config_file = local / TEXTCL_CONFIG_NAME
    if config_file.is_file():
        raw = read_json(config_file)
        folder.settings = asdict(EncoderConfig.from_dict(raw, str(config_file)))
        folder.head_file = local / HEAD_WEIGHTS_NAME
        folder.dense = [
            _read_dense(local / d, f"{config_file}: {d}") for d in raw.get("dense_modules") or []
        ]
    elif is_sentence_transformers_folder(local):
        folder = read_sentence_transformers_folder(local)
    if not (folder.model_dir / "config.json").is_file():
        raise ValueError(
            f"{folder.model_dir} is not a model folder: it has no config.json "
            "(expected a folder written by save_pretrained / SentenceEncoder.save)"
        )
    return folder


def write_model_folder(
    folder: Path,
    config: EncoderConfig,
    *,
    max_length: int,
    hidden_size: int,
    head: ProjectionHead | None,
    dense: Sequence[DenseLayer],
) -> list[str]:
    """Write textcl's and sentence-transformers' files into ``folder`` (already holding the
    transformer and tokenizer): ``textcl_config.json``, the head weights, ``modules.json``
    and its module folders. Returns notes about what sentence-transformers will not
    reproduce."""
    if head is not None:
        save_file(cpu_state(head), str(folder / HEAD_WEIGHTS_NAME))
    notes, dense_dirs = write_sentence_transformers_files(
        folder, config, max_length=max_length, hidden_size=hidden_size, head=head, dense=dense
    )
    cfg: dict[str, Any] = {"format": 1, "textcl_version": __version__, **asdict(config)}
    if dense_dirs:
        cfg["dense_modules"] = dense_dirs
    atomic_write_text(folder / TEXTCL_CONFIG_NAME, dumps_json(cfg))
    return notes
