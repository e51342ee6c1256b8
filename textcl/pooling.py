"""Pooling: token states -> one vector per sentence.

This module is the single pooling implementation used by training, encoding and
evaluation. Padding positions (``attention_mask == 0``) never contribute to a
sentence's vector, so a sentence pools to the same vector whatever it is batched with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

POOLING_STRATEGIES: tuple[str, ...] = ("cls", "mean", "max", "first_last_avg", "last2_avg")
"""Names accepted by :class:`Pooling`.

* ``cls``: the first token's last-layer state ([CLS] / <s>).
* ``mean``: mean of last-layer states over non-padding tokens (sentence-transformers' default).
* ``max``: element-wise max of last-layer states over non-padding tokens.
* ``first_last_avg``: mean over tokens of the average of the first and the last
  transformer layer (SimCSE's ``avg_first_last``; BERT-flow's "first-last-avg").
  "First layer" is the first transformer block's output (``hidden_states[1]``), not the
  embedding layer.
* ``last2_avg``: mean over tokens of the average of the last two layers (SimCSE's
  ``avg_top2``).
"""


def check_pooling_name(name: str) -> str:
    """Return ``name`` if it is a known pooling strategy, else raise ``ValueError``."""
    if not isinstance(name, str) or name not in POOLING_STRATEGIES:
        raise ValueError(
            f"unknown pooling {name!r}: expected one of {', '.join(POOLING_STRATEGIES)}"
        )
    return name


def _masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    # states (B, L, H), mask (B, L) float -> (B, H)
    summed = (states * mask.unsqueeze(-1)).sum(dim=1)
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
    return summed / counts


class Pooling(nn.Module):
    """Pool token states into sentence vectors.

    Args:
        strategy: one of :data:`POOLING_STRATEGIES`.

    ``forward(last_hidden_state, attention_mask, hidden_states=None)``:
        last_hidden_state: ``(B, L, H)``; attention_mask: ``(B, L)`` with 1 for real tokens;
        hidden_states: the model's per-layer outputs (embeddings first), needed by
        ``first_last_avg`` and ``last2_avg``. Returns ``(B, H)`` in the dtype of the states.
    """

    def __init__(self, strategy: str = "mean") -> None:
        super().__init__()
        self.strategy = check_pooling_name(strategy)

    @property
    def needs_hidden_states(self) -> bool:
        """Whether ``forward`` needs all layers (the model must output hidden states)."""
        return self.strategy in ("first_last_avg", "last2_avg")

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}"

    def forward(
        self,
        last_hidden_state: Tensor,
        attention_mask: Tensor,
        hidden_states: Sequence[Tensor] | None = None,
    ) -> Tensor:
        if last_hidden_state.dim() != 3:
            raise ValueError(
                f"last_hidden_state must be (batch, length, hidden), got shape {tuple(last_hidden_state.shape)}"
            )
        if attention_mask.shape != last_hidden_state.shape[:2]:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                f"states {tuple(last_hidden_state.shape[:2])}"
            )
        mask = attention_mask.to(last_hidden_state.dtype)
        strategy = self.strategy
        if strategy == "cls":
            return last_hidden_state[:, 0]
        if strategy == "mean":
            return _masked_mean(last_hidden_state, mask)
        if strategy == "max":
            fill = torch.finfo(last_hidden_state.dtype).min
            masked = last_hidden_state.masked_fill(~attention_mask.bool().unsqueeze(-1), fill)
            return masked.max(dim=1).values
        if hidden_states is None or len(hidden_states) < 3:
            raise ValueError(
                f"pooling {strategy!r} needs the model's hidden states of every layer "
                "(embeddings + at least 2 layers); call the model with output_hidden_states=True"
            )
        if strategy == "first_last_avg":
            first, last = hidden_states[1], hidden_states[-1]
        else:  # last2_avg
            first, last = hidden_states[-2], hidden_states[-1]
        return _masked_mean((first + last) / 2.0, mask)


class ProjectionHead(nn.Module):
    """SimCSE's MLP over the pooled vector: ``Linear(H, H) -> Tanh``.

    Input ``(B, H)``, output ``(B, H)``.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}")
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.dense(x))


HEAD_MODES: tuple[str, ...] = ("none", "train", "always")
"""When the projection head is applied.

* ``none``: no head.
* ``train``: only while the module is in training mode (SimCSE unsupervised: MLP at train
  time, raw ``cls`` at test time).
* ``always``: at training and inference.
"""


def check_head_mode(mode: str) -> str:
    if not isinstance(mode, str) or mode not in HEAD_MODES:
        raise ValueError(f"unknown head mode {mode!r}: expected one of {', '.join(HEAD_MODES)}")
    return mode
