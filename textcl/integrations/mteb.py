"""Run a textcl encoder in MTEB (``pip install 'textcl[mteb]'``).

``mteb.evaluate(TextclMTEBModel(encoder), tasks)`` evaluates a :class:`SentenceEncoder`
(or a model folder) with mteb's own tasks and scoring. The adapter implements mteb's
``EncoderProtocol`` (mteb >= 2: ``encode(DataLoader, *, task_metadata, hf_split, hf_subset,
prompt_type)``, ``similarity``, ``similarity_pairwise``, ``mteb_model_meta``).

Prompts: the encoder's named prompts are looked up as mteb does for sentence-transformers
models, most specific first: ``"{task name}-{prompt type}"``, ``"{task name}"``,
``"{task type}-{prompt type}"``, ``"{task type}"``, ``"{prompt type}"`` (``query`` /
``document``); else the encoder's default prompt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from textcl.encoder import SentenceEncoder

logger = logging.getLogger(__name__)

try:
    from mteb.models.model_meta import ModelMeta
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("textcl.integrations.mteb needs mteb >= 2: pip install 'textcl[mteb]'") from e


def _texts(inputs: Iterable[Any]) -> list[str]:
    texts: list[str] = []
    for batch in inputs:
        if not isinstance(batch, dict) or "text" not in batch:
            keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(f"mteb batch without a 'text' field ({keys}): text tasks only")
        texts.extend(str(t) for t in batch["text"])
    return texts


def _value(x: Any) -> str | None:
    if x is None:
        return None
    return str(getattr(x, "value", x))


class TextclMTEBModel:
    """mteb encoder protocol over a textcl :class:`SentenceEncoder`.

    Args:
        encoder: a :class:`SentenceEncoder`, or a model folder / hub id to load.
        name: model name for mteb's results (default: the folder name, as ``textcl/NAME``).
        revision: revision string for mteb's results (default: ``local``).
        batch_size: default sentences per batch (mteb's ``encode_kwargs`` win).
        device: torch device for encoding (default: where the encoder is).
    """

    def __init__(
        self,
        encoder: SentenceEncoder | str | os.PathLike[str],
        *,
        name: str | None = None,
        revision: str | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(encoder, SentenceEncoder):
            source = str(encoder)
            name = name or (
                source
                if source.count("/") == 1 and not os.path.exists(source)
                else f"textcl/{os.path.basename(os.path.normpath(source))}"
            )
            encoder = SentenceEncoder.from_pretrained(source)
        self.encoder = encoder
        self.batch_size = batch_size
        self.device = device
        self.mteb_model_meta = ModelMeta.create_empty(
            {
                "name": name or "textcl/encoder",
                "revision": revision or "local",
                "embed_dim": encoder.embedding_dim,
                "max_tokens": encoder.effective_max_length,
                "similarity_fn_name": "cosine",
                "framework": ["PyTorch"],
                "use_instructions": bool(encoder.prompts),
                "n_parameters": sum(p.numel() for p in encoder.parameters()),
            }
        )

    def prompt_for(self, task_metadata: Any, prompt_type: Any = None) -> str | None:
        """The encoder prompt for a task (see module doc), or ``None`` for the default."""
        prompts = self.encoder.prompts
        task = getattr(task_metadata, "name", None)
        kind = getattr(task_metadata, "type", None)
        ptype = _value(prompt_type)
        candidates = [
            f"{task}-{ptype}" if task and ptype else None,
            task,
            f"{kind}-{ptype}" if kind and ptype else None,
            kind,
            ptype,
        ]
        for key in candidates:
            if key and key in prompts:
                return prompts[key]
        return None

    def encode(
        self,
        inputs: Iterable[Any],
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Encode the ``text`` of every batch of mteb's DataLoader to a ``(N, D)`` array."""
        texts = _texts(inputs)
        prompt = self.prompt_for(task_metadata, prompt_type)
        batch_size = int(kwargs.pop("batch_size", None) or self.batch_size)
        show = bool(kwargs.pop("show_progress_bar", False))
        out: np.ndarray = self.encoder.encode(
            texts,
            batch_size=batch_size,
            show_progress=show,
            prompt=prompt,
            device=self.device,
            output="numpy",
            **kwargs,
        )
        return out

    @staticmethod
    def _as_tensor(x: Any) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        t = t.float()
        return t.unsqueeze(0) if t.dim() == 1 else t

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity matrix ``(N1, N2)``."""
        a = torch.nn.functional.normalize(self._as_tensor(embeddings1), dim=-1)
        b = torch.nn.functional.normalize(self._as_tensor(embeddings2), dim=-1)
        return a @ b.T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity of corresponding rows ``(N,)``."""
        a = self._as_tensor(embeddings1)
        b = self._as_tensor(embeddings2)
        return torch.nn.functional.cosine_similarity(a, b, dim=-1)
