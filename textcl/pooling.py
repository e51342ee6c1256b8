"""Pooling: token states -> one vector per sentence.

This module is the single pooling implementation used by training, encoding and
evaluation. Padding positions (``attention_mask == 0``) never contribute to a
sentence's vector, so a sentence pools to the same vector whatever it is batched with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

POOLING_STRATEGIES: tuple[str, ...] = (
    "cls",
    "mean",
    "max",
    "first_last_avg",
    "last2_avg",
    "weightedmean",
    "lasttoken",
    "mean_sqrt_len_tokens",
    "prompt",
)
"""Names accepted by :class:`Pooling`.

* ``cls``: the first non-padding token's last-layer state ([CLS] / <s>; position 0 for
  right-padded batches, the first real token for left-padded ones).
* ``mean``: mean of last-layer states over non-padding tokens (sentence-transformers' default).
* ``max``: element-wise max of last-layer states over non-padding tokens.
* ``first_last_avg``: mean over tokens of the average of the first and the last
  transformer layer (SimCSE's ``avg_first_last``; BERT-flow's "first-last-avg").
  "First layer" is the first transformer block's output (``hidden_states[1]``), not the
  embedding layer.
* ``last2_avg``: mean over tokens of the average of the last two layers (SimCSE's
  ``avg_top2``).
* ``weightedmean``: position-weighted mean of last-layer states (SGPT, Muennighoff 2022,
  arXiv:2202.08904): the k-th real token (k = 1..n) has weight k,
  ``sum_k k * h_k / sum_k k``; positions count real tokens only, so left padding does not
  change a vector (sentence-transformers' ``weightedmean``).
* ``lasttoken``: the last non-padding token's last-layer state (decoder models; SGPT,
  E5-Mistral); right or left padding.
* ``mean_sqrt_len_tokens``: ``sum_k h_k / sqrt(n)`` over the n real tokens
  (sentence-transformers' ``mean_sqrt_len_tokens``).
* ``prompt``: PromptBERT (Jiang et al. 2022, arXiv:2201.04337): the last-layer state of the
  prompt template's ``[MASK]`` token. The mask passed to the pooling (the batch's
  ``pooling_mask``, built by :class:`textcl.prompt.PromptTemplate`) marks exactly that one
  token per row; template denoising is done by the encoder (:mod:`textcl.prompt`).
"""

ST_POOLING_MODES: dict[str, str] = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
"""textcl pooling names that sentence-transformers' ``Pooling`` module expresses, with the
legacy boolean key of its ``1_Pooling/config.json``. ``first_last_avg``, ``last2_avg`` and
``prompt`` have no sentence-transformers equivalent."""


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
        if strategy in ("cls", "lasttoken"):
            present = attention_mask.bool()
            if strategy == "cls":  # first real token (argmax returns the first maximum)
                index = present.int().argmax(dim=1)
            else:  # last real token
                length = present.shape[1]
                index = length - 1 - present.flip(1).int().argmax(dim=1)
            rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
            return last_hidden_state[rows, index]
        if strategy == "prompt":
            counts = attention_mask.sum(dim=1)
            if bool((counts != 1).any()):
                raise ValueError(
                    "prompt pooling needs a pooling mask with exactly one [MASK] slot per row "
                    f"(got {counts.tolist()}); tokenize with SentenceEncoder.tokenize or "
                    "textcl.prompt.PromptTemplate.tokenize"
                )
            index = attention_mask.bool().int().argmax(dim=1)
            rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
            return last_hidden_state[rows, index]
        if strategy == "mean":
            return _masked_mean(last_hidden_state, mask)
        if strategy == "mean_sqrt_len_tokens":
            summed = (last_hidden_state * mask.unsqueeze(-1)).sum(dim=1)
            return summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9).sqrt()
        if strategy == "weightedmean":
            weights = mask.cumsum(dim=1) * mask  # 1..n over real tokens, 0 on padding
            summed = (last_hidden_state * weights.unsqueeze(-1)).sum(dim=1)
            return summed / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
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

    Input ``(B, H)``, output ``(B, H)``. In a sentence-transformers folder it is a
    ``Dense(H, H, activation_function=torch.nn.Tanh())`` module.
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


DENSE_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "Tanh": nn.Tanh,
    "Identity": nn.Identity,
    "ReLU": nn.ReLU,
    "GELU": nn.GELU,
    "Sigmoid": nn.Sigmoid,
    "SiLU": nn.SiLU,
    "ELU": nn.ELU,
    "LeakyReLU": nn.LeakyReLU,
    "Softplus": nn.Softplus,
    "Mish": nn.Mish,
    "Hardtanh": nn.Hardtanh,
}
"""Activations of sentence-transformers ``Dense`` modules that textcl reads, by class name
(``torch.nn.modules.activation.Tanh`` -> ``Tanh``); each is built with its defaults, as
sentence-transformers does."""


def dense_activation(name: str | None, where: str = "Dense") -> nn.Module:
    """Build the activation a sentence-transformers ``Dense`` config names (``None``: Identity).

    Only the ``torch.nn`` classes in :data:`DENSE_ACTIVATIONS`; anything else raises
    ``ValueError`` naming ``where``.
    """
    if name is None:
        return nn.Identity()
    short = str(name).rsplit(".", 1)[-1]
    if not str(name).startswith("torch.") or short not in DENSE_ACTIVATIONS:
        raise ValueError(
            f"{where}: activation_function {name!r} is not supported by textcl "
            f"(supported: torch.nn {', '.join(sorted(DENSE_ACTIVATIONS))})"
        )
    return DENSE_ACTIVATIONS[short]()


def activation_path(module: nn.Module) -> str:
    """The import path sentence-transformers writes for an activation module."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


class DenseLayer(nn.Module):
    """A sentence-transformers ``Dense`` module: ``activation(Linear(in, out)(x))``.

    Weights are named as sentence-transformers names them (``linear.weight``,
    ``linear.bias``), so its ``model.safetensors`` loads unchanged.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Dense sizes must be positive, got {in_features} -> {out_features}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.bias = bool(bias)
        self.linear = nn.Linear(self.in_features, self.out_features, bias=self.bias)
        self.activation_function: nn.Module = activation if activation is not None else nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.activation_function(self.linear(x))
        return out

    def st_config(self) -> dict[str, object]:
        """The ``config.json`` sentence-transformers writes for this module."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation_function": activation_path(self.activation_function),
        }
