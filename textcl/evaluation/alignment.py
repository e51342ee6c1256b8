"""Alignment and uniformity of sentence embeddings (Wang & Isola 2020), as in SimCSE.

Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere" (ICML 2020), with ``f`` the L2-normalised encoder:

* alignment ``= E_{(x, y) ~ positive pairs} ||f(x) - f(y)||^alpha`` (``alpha = 2``);
  lower is better (positives close), range ``[0, 2^alpha]``;
* uniformity ``= log E_{x, y ~ data, x != y} exp(-t ||f(x) - f(y)||^2)`` (``t = 2``);
  lower is better (embeddings spread over the sphere), at most 0.

Their reference code::

    align = (x - y).norm(p=2, dim=1).pow(alpha).mean()
    uniform = torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()

SimCSE (Gao et al. 2021, Section 5 / Figure 2) measures both on the STS-B development set:
positive pairs are the pairs with a gold score above 4, and uniformity is taken over all
the set's sentences. :func:`alignment_uniformity` does exactly that; each distinct
sentence counts once for uniformity (a sentence repeated across pairs would otherwise add
zero distances).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from textcl.evaluation.data import load_sts_task
from textcl.evaluation.sts import encode_unique
from textcl.io import PathLike

POSITIVE_THRESHOLD = 4.0
"""SimCSE: STS-B pairs with a gold score above this (strictly) are the positive pairs, for
alignment and for the report's positive-vs-random similarity plot alike."""


def positive_mask(scores: Any, threshold: float = POSITIVE_THRESHOLD) -> np.ndarray:
    """Which pairs are positives: gold score ``> threshold`` (SimCSE's "above 4")."""
    return np.asarray(scores, dtype=np.float64) > threshold


def _as_matrix(z: Any, name: str) -> np.ndarray:
    if hasattr(z, "detach"):  # a torch tensor
        z = z.detach().cpu().double().numpy()
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _normalize(z: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise ValueError(f"{name}[{row}] is a zero vector: it cannot be normalised")
    return z / norms


def _check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def alignment(z_a: Any, z_b: Any, alpha: float = 2, normalize: bool = True) -> float:
    """Mean ``||f(x_i) - f(y_i)||^alpha`` over the positive pairs ``(z_a[i], z_b[i])``.

    Args:
        z_a: ``(N, D)`` embeddings of the first sentences (numpy array or torch tensor).
        z_b: ``(N, D)`` embeddings of their positives.
        alpha: exponent (Wang & Isola: 2).
        normalize: L2-normalise the rows first (the metric's definition); ``False`` when the
            embeddings are normalised already or a raw-distance variant is wanted.
    """
    a = _as_matrix(z_a, "z_a")
    b = _as_matrix(z_b, "z_b")
    if a.shape != b.shape:
        raise ValueError(f"z_a and z_b must have one shape, got {a.shape} and {b.shape}")
    alpha = _check_positive(alpha, "alpha")
    if normalize:
        a, b = _normalize(a, "z_a"), _normalize(b, "z_b")
    dist = np.linalg.norm(a - b, axis=1)
    return float(np.mean(dist**alpha))


def uniformity(z: Any, t: float = 2, normalize: bool = True, block_size: int = 1024) -> float:
    """``log`` of the mean of ``exp(-t ||f(x_i) - f(x_j)||^2)`` over all pairs ``i < j``.

    Computed blockwise (``block_size`` rows at a time, O(block_size * N) memory) with a
    log-sum-exp, in float64.

    Args:
        z: ``(N, D)`` embeddings, ``N >= 2`` (numpy array or torch tensor).
        t: temperature (Wang & Isola: 2).
        normalize: L2-normalise the rows first (the metric's definition).
        block_size: rows per block.
    """
    x = _as_matrix(z, "z")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {n}")
    t = _check_positive(t, "t")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if normalize:
        x = _normalize(x, "z")
    sq = np.einsum("ij,ij->i", x, x)
    n_pairs = n * (n - 1) // 2
    running = -math.inf  # log-sum-exp of -t * d^2 over the pairs seen so far
    for start in range(0, n - 1, block_size):
        stop = min(n - 1, start + block_size)
        rows = x[start:stop]
        # squared distances of rows start..stop-1 to all columns (clipped: rounding)
        d2 = np.maximum(sq[start:stop, None] + sq[None, :] - 2.0 * rows @ x.T, 0.0)
        cols = np.arange(n)[None, :]
        upper = cols > np.arange(start, stop)[:, None]  # pairs i < j only
        values = -t * d2[upper]
        peak = float(values.max())
        block = peak + math.log(float(np.exp(values - peak).sum()))
        running = np.logaddexp(running, block)
    return float(running - math.log(n_pairs))


def _unique(sentences: list[str]) -> tuple[list[str], dict[str, int]]:
    index: dict[str, int] = {}
    for s in sentences:
        index.setdefault(s, len(index))
    return list(index), index


def alignment_uniformity(
    model: Any,
    data_dir: PathLike | None = None,
    batch_size: int = 64,
    *,
    threshold: float = POSITIVE_THRESHOLD,
    alpha: float = 2,
    t: float = 2,
) -> dict[str, float]:
    """SimCSE's alignment and uniformity on the STS-B development set.

    Positive pairs: the dev pairs with a gold score above ``threshold`` (4). Uniformity: all
    distinct dev sentences. Every distinct sentence is embedded once.

    Args:
        model: a :class:`~textcl.SentenceEncoder`, an object with ``encode(texts,
            batch_size=...)`` or a callable ``list[str] -> (N, D)`` array / tensor.
        data_dir: the SentEval-layout ``sts`` folder or a data root holding ``sts/``; default
            ``$TEXTCL_DATA``, else the Hugging Face hub.
        batch_size: sentences per forward pass.
        threshold, alpha, t: the metrics' parameters (SimCSE: 4, 2, 2).

    Returns:
        ``{"alignment": float, "uniformity": float}`` (both: lower is better).
    """
    task = load_sts_task("stsb", "dev", data_dir)
    s1, s2 = task.sentences1, task.sentences2
    scores = task.scores
    positive = np.flatnonzero(positive_mask(scores, threshold))
    if positive.size == 0:
        raise ValueError(f"STS-B dev ({task.source}): no pair with a gold score above {threshold}")
    sentences, index = _unique([*s1, *s2])
    emb = encode_unique(model, sentences, batch_size)
    ia = np.array([index[s1[i]] for i in positive])
    ib = np.array([index[s2[i]] for i in positive])
    return {
        "alignment": alignment(emb[ia], emb[ib], alpha=alpha),
        "uniformity": uniformity(emb, t=t),
    }
