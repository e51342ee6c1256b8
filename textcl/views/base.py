"""View generators: small callables that turn a token batch into a positive view.

A view takes a :data:`textcl.tokens.TokenBatch` and returns a NEW batch (the input is never
modified in place) that :meth:`textcl.SentenceEncoder.forward` accepts. Rules every view keeps:

* special tokens ([CLS]/[SEP]/<s>/</s>) and padding are never moved or altered;
  ``batch["special_tokens_mask"]`` (1 for special tokens and padding) tells which they are;
* the result is a valid padded batch: ``input_ids``/``attention_mask`` of equal shape, every
  other key consistent with them;
* randomness comes from the view's own seeded ``torch.Generator`` on the CPU (results are
  moved to the batch's device), so a run is reproducible on any device and the state can be
  checkpointed with :meth:`RandomView.state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from textcl.tokens import TokenBatch, max_positions

View = Callable[[TokenBatch], TokenBatch]
"""Anything that maps a token batch to a token batch."""


def check_rate(rate: float, name: str = "rate") -> float:
    """Rates are fractions in ``[0, 1)``; anything else is a ``ValueError``."""
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    return float(rate)


def editable_mask(batch: TokenBatch) -> torch.Tensor:
    """Bool ``(B, L)``: True where a view may act (real, non-special tokens): attended and
    not in ``special_tokens_mask`` (when the batch has one)."""
    attention = batch["attention_mask"].bool()
    special = batch.get("special_tokens_mask")
    if special is None:
        return attention
    return attention & ~special.bool()


@dataclass(frozen=True)
class ViewContext:
    """What views need to know about the encoder, given at construction (see
    :func:`textcl.views.build_view`): each view takes the fields its constructor accepts.

    Attributes:
        pad_token_id: id of new padding slots (word repetition).
        mask_token_id: the tokenizer's mask token (token masking; None: it has none).
        hidden_size: width of the input (word) embeddings (feature cutoff).
        max_length: the model's position limit (word repetition never grows past it).
    """

    pad_token_id: int | None = None
    mask_token_id: int | None = None
    hidden_size: int | None = None
    max_length: int | None = None

    @classmethod
    def from_encoder(cls, encoder: Any) -> ViewContext:
        """The facts of a :class:`textcl.SentenceEncoder` (its tokenizer and model)."""
        tok = encoder.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        mask = getattr(tok, "mask_token_id", None)
        return cls(
            pad_token_id=None if pad is None else int(pad),
            mask_token_id=None if mask is None else int(mask),
            hidden_size=int(encoder.model.get_input_embeddings().embedding_dim),
            max_length=max_positions(encoder.model),
        )


def derived_seed(seed: int, *key: int) -> int:
    """A 63-bit seed from ``seed`` and ``key`` (e.g. epoch, batch index): independent
    streams for every key, the same on every run."""
    state = np.random.SeedSequence([int(seed) % 2**63, *(int(k) for k in key)])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def reseed_view(view: View, *key: int) -> None:
    """Re-seed every seeded random part of ``view`` from its own seed and ``key``.

    The trainer's collator calls it with ``(epoch, batch index)`` before each batch: the
    noise of a batch then depends only on the seed and the batch's place in the run, so it
    is the same in a DataLoader worker, in the main process and after a resume.
    """
    parts = view.views if isinstance(view, Compose) else [view]
    for part in parts:
        if isinstance(part, Compose):
            reseed_view(part, *key)
        elif isinstance(part, RandomView) and part.seed is not None:
            part.generator.manual_seed(derived_seed(part.seed, *key))


class RandomView:
    """Base for views that draw random numbers from their own seeded CPU generator."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, batch: TokenBatch) -> TokenBatch:
        raise NotImplementedError


class Dropout:
    """The identity view of unsupervised SimCSE (Gao et al. 2021).

    The two views of a sentence differ only through the encoder's dropout: the trainer runs
    the encoder in training mode, so two forward passes over the same batch give two
    different embeddings.
    """

    def __call__(self, batch: TokenBatch) -> TokenBatch:
        return batch.copy()

    def __repr__(self) -> str:
        return "Dropout()"


class Compose:
    """Apply several views in order: ``Compose([TokenShuffle(), FeatureCutoff()])``."""

    def __init__(self, views: Sequence[View]) -> None:
        if not views:
            raise ValueError("Compose needs at least one view")
        self.views = list(views)

    def __call__(self, batch: TokenBatch) -> TokenBatch:
        for view in self.views:
            batch = view(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            str(i): v.state_dict() for i, v in enumerate(self.views) if hasattr(v, "state_dict")
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, v in enumerate(self.views):
            if str(i) in state and hasattr(v, "load_state_dict"):
                v.load_state_dict(state[str(i)])

    def __repr__(self) -> str:
        return f"Compose({self.views!r})"
