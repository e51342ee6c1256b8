"""View generators: small callables that turn a token batch into a positive view.

A view takes a :data:`textcl.encoder.TokenBatch` and returns a NEW batch (the input is never
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
from typing import Any

import torch

from textcl.encoder import TokenBatch

View = Callable[[TokenBatch], TokenBatch]
"""Anything that maps a token batch to a token batch."""


def check_rate(rate: float, name: str = "rate") -> float:
    """Rates are fractions in ``[0, 1)``; anything else is a ``ValueError``."""
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    return float(rate)


def editable_mask(batch: TokenBatch) -> torch.Tensor:
    """Bool ``(B, L)``: True where a view may act (real, non-special tokens)."""
    attention = batch["attention_mask"].bool()
    special = batch.get("special_tokens_mask")
    if special is None:
        return attention
    return attention & ~special.bool()


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
        return dict(batch)

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
