"""Hugging Face plumbing of models: a model spec (local folder or hub id) to a local folder
(downloading hub snapshots), the transformer and tokenizer of a folder, and quiet
transformers logging while saving. The path-or-id decision is
:func:`textcl.sources.resolve_source`'s, shared with the data readers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from textcl.errors import InputError
from textcl.io import files_digest
from textcl.sources import resolve_source

SNAPSHOT_IGNORE_PATTERNS: tuple[str, ...] = (
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
)
"""Other frameworks' weights and exported formats, not downloaded: textcl needs config,
tokenizer and PyTorch weights (plus sentence-transformers' small JSON files)."""


WEIGHT_SUFFIXES: tuple[str, ...] = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".h5",
    ".msgpack",
    ".ckpt",
)
"""Weight files of a model folder: what a training run's fingerprint covers (a run resumes
after its base model's configs were re-saved, not after its weights changed)."""
MODEL_FILE_SUFFIXES: tuple[str, ...] = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".json",
    ".txt",
    ".model",
)
"""Weights, every config (transformers, textcl, sentence-transformers modules) and the
tokenizer's vocabulary: what an index's model fingerprint covers (all that changes a vector)."""
FINGERPRINT_SKIP_DIRS = frozenset({"onnx", "openvino", ".git", ".cache"})
"""Sub-folders a model fingerprint ignores (exported formats, VCS and caches), besides hidden
ones."""


def model_files_digest(folder: Path, suffixes: tuple[str, ...]) -> str:
    """The one fingerprint of a model folder's content: sha256 over the relative path and
    sha256 of each file whose suffix is in ``suffixes`` (hidden folders and
    :data:`FINGERPRINT_SKIP_DIRS` excluded). A training run's resume check uses it with
    :data:`WEIGHT_SUFFIXES`, an index's model check with :data:`MODEL_FILE_SUFFIXES`."""
    files = (
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not any(
            part.startswith(".") or part in FINGERPRINT_SKIP_DIRS
            for part in p.relative_to(folder).parts
        )
    )
    return files_digest(folder, files)


TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "sentencepiece.model",
    "tokenizer.model",
    "source.spm",
)
"""Files of which a model folder must hold at least one for its tokenizer to load: without
any, ``AutoTokenizer`` silently builds a default tokenizer of a handful of special tokens."""


def check_tokenizer_files(model_dir: Path) -> None:
    """:class:`~textcl.errors.InputError` naming ``model_dir`` and the files it lacks when
    it holds none of :data:`TOKENIZER_FILES`."""
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(
            f"{model_dir}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}): the "
            "folder holds a model without its tokenizer; save the tokenizer into it "
            "(tokenizer.save_pretrained(folder)) or copy the tokenizer files of the model it "
            "was trained from"
        )


EXPORTED_MARKER = "textcl_export.json"
"""The file of a ``textcl export`` folder (:mod:`textcl.export.runtime`): its snapshot keeps
the exported graphs."""


def _hub_snapshot(name: str) -> Path:
    """Download (or find in the cache) the snapshot of hub model ``name``; a ``textcl
    export`` folder is downloaded with its ``onnx/`` / ``openvino/`` graphs."""
    from huggingface_hub import snapshot_download  # lazy: start-up time

    path = Path(snapshot_download(name, ignore_patterns=list(SNAPSHOT_IGNORE_PATTERNS)))
    if (path / EXPORTED_MARKER).is_file():
        path = Path(snapshot_download(name))
    return path


def model_folder(name_or_path: str | os.PathLike[str]) -> Path:
    """The local folder of a model: ``name_or_path`` itself when it is an existing folder,
    else the hub snapshot of the hub id.

    Raises :class:`textcl.sources.SourceError` for a file, a missing path, a spec that is
    not a hub id, or a failed hub download (network, auth, missing repo).
    """
    src = resolve_source(name_or_path, role="model")  # local folder or hub id, decided once
    if src.path is not None:
        return src.path
    try:
        return _hub_snapshot(str(src.hub_id))
    except Exception as e:  # network, auth or missing repo
        raise src.hub_error(e) from e


def load_transformer(model_dir: Path, model_kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    """The transformer and tokenizer of ``model_dir``; ``ValueError`` naming the folder
    when either fails to load or it holds no tokenizer files (:func:`check_tokenizer_files`)."""
    from transformers import AutoModel, AutoTokenizer  # lazy: start-up time

    check_tokenizer_files(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ValueError(
            f"{model_dir}: could not load a tokenizer ({type(e).__name__}: {e})"
        ) from e
    try:
        model = AutoModel.from_pretrained(str(model_dir), **model_kwargs)
    except Exception as e:
        raise ValueError(f"{model_dir}: could not load a model ({type(e).__name__}: {e})") from e
    return model, tokenizer


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info logging and progress bars (e.g. during save)."""
    try:
        from transformers.utils import logging as hf_logging  # lazy: start-up time
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
