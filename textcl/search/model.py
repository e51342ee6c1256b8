"""The search model: loading the encoder of ``textcl encode`` / ``textcl search`` and telling
whether it is the one an index was built with.

One place for both commands (:mod:`textcl.search.encode` writes what these functions return
into the manifest, :mod:`textcl.search.index` checks it before searching):

* :func:`load_encoder`: a :class:`~textcl.SentenceEncoder`, a model folder or a hub id as an
  encoder;
* :func:`model_name`: how the manifest names the model;
* :func:`model_folder`: the local folder a model comes from, if any;
* :func:`model_weights_hash`: the fingerprint of a model folder's files or an in-memory
  encoder's tensors and config;
* :func:`model_probe`: embeddings of a few fixed sentences, checked at search time;
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textcl.encoder import SentenceEncoder
from textcl.errors import InputError
from textcl.hub import MODEL_FILE_SUFFIXES, model_files_digest
from textcl.precision import check_device
from textcl.search.manifest import PROBE_SENTENCES


def model_probe(encoder: Any) -> list[list[float]]:
    """fp32 embeddings of :data:`PROBE_SENTENCES` (the model's fingerprint), rounded."""
    emb = encoder.encode(list(PROBE_SENTENCES), batch_size=8, show_progress=False)
    return [[round(float(x), 6) for x in row] for row in np.asarray(emb)]


def model_name(model: Any) -> str:
    """How the manifest names ``model``: a resolved folder path, a hub id, or for an
    in-memory encoder its model's ``name_or_path``."""
    if isinstance(model, SentenceEncoder):
        cfg = getattr(model.model, "config", None)
        name = str(getattr(cfg, "_name_or_path", "") or "")
        local = Path(name).expanduser() if name else None
        if local is not None and local.exists():
            return str(local.resolve())
        return name or "<SentenceEncoder object>"
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a SentenceEncoder, a folder or a hub id, got {type(model).__name__}"
        )
    local = Path(model).expanduser()
    return str(local.resolve()) if local.exists() else str(model)


def model_weights_hash(model: Any) -> str:
    """A fingerprint of what makes ``model`` embed as it does.

    * a model folder: sha256 over the relative path and sha256 of each file with a suffix
      in :data:`MODEL_FILE_SUFFIXES` (weights, configs incl. ``textcl_config.json`` and
      sentence-transformers' ``modules.json``/``1_Pooling/config.json``, tokenizer), hidden
      files and exported formats (``onnx/``, ``openvino/``) excluded: ``"files:<hex>"``;
    * an in-memory :class:`~textcl.SentenceEncoder`: sha256 over its state dict (model and
      head tensors, names, dtypes, shapes) and its :class:`~textcl.EncoderConfig`:
      ``"state:<hex>"``.
    """
    h = hashlib.sha256()
    if isinstance(model, SentenceEncoder):
        h.update(json.dumps(asdict(model.config), sort_keys=True).encode())
        for name, tensor in sorted(model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return "state:" + h.hexdigest()
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise InputError(f"{model}: not a model folder, cannot hash its weights")
    return "files:" + model_files_digest(folder, MODEL_FILE_SUFFIXES)


def model_folder(model: Any, encoder: Any | None = None) -> Path | None:
    """The local folder ``model`` was (or will be) loaded from, if any: the folder itself,
    or for a hub id the snapshot folder ``encoder`` was loaded from; ``None`` for an
    in-memory encoder."""
    if isinstance(model, SentenceEncoder):
        return None
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    if encoder is not None:  # a hub id: the snapshot folder it was loaded from
        name = str(getattr(getattr(encoder.model, "config", None), "_name_or_path", "") or "")
        if name and Path(name).is_dir():
            return Path(name)
    return None


def load_encoder(model: Any, device: Any = None) -> Any:
    """``model`` as a :class:`~textcl.SentenceEncoder` (loaded when a folder or hub id) on
    ``device`` (checked by :func:`textcl.precision.check_device`)."""
    check_device(device)
    if isinstance(model, SentenceEncoder):
        if device is not None:
            model.to(device)
        return model
    model_name(model)  # type check
    return SentenceEncoder.from_pretrained(str(model), device=device)
