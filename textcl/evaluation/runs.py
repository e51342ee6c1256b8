"""Evaluate a training run's encoder now (``textcl report --sts``): STS results with
predictions, and the cosine similarities of positive vs random STS-B pairs.

The model running lives here; :mod:`textcl.report` only renders what this returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textcl.encoder import SentenceEncoder
from textcl.evaluation.alignment import POSITIVE_THRESHOLD, positive_mask
from textcl.evaluation.data import load_sts_task
from textcl.evaluation.sts import evaluate_sts
from textcl.io import PathLike, write_json
from textcl.tokens import check_texts

RESULTS_FILENAME = "sts_results.json"
"""Where :func:`evaluate_run` writes the STS results in the run folder by default."""


def run_encoder_dir(run_dir: PathLike) -> Path:
    """The run's ``best/`` encoder, else its ``final/`` one."""
    root = Path(run_dir)
    for name in ("best", "final"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{root} has neither best/ nor final/: no trained encoder to evaluate")


def pair_cosine_similarities(
    encoder: Any,
    sentences_a: Sequence[str],
    sentences_b: Sequence[str],
    batch_size: int = 64,
    seed: int = 0,
    max_length: int | None = None,
    show_progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities ``(pos, rand)`` for
    :func:`textcl.plots.plot_similarity_distribution`.

    ``pos[i] = cos(a_i, b_i)`` for the given pairs; ``rand`` pairs sentences of different
    pairs: ``cos(a_{π(i)}, b_{π(i+1)})`` for a seeded random permutation ``π`` (so never a
    sentence with its own partner). Both have one value per pair (shape ``(n,)``).
    ``show_progress`` goes to ``encoder.encode`` when given (default: its own rule).
    """
    a = check_texts(sentences_a, "sentences_a")
    b = check_texts(sentences_b, "sentences_b")
    if len(a) != len(b):
        raise ValueError(f"sentences_a has {len(a)} items but sentences_b has {len(b)}")
    if len(a) < 2:
        raise ValueError("need at least 2 pairs to form random pairs")
    unique = list(dict.fromkeys([*a, *b]))
    index = {s: i for i, s in enumerate(unique)}
    progress = {} if show_progress is None else {"show_progress": show_progress}
    emb = encoder.encode(
        unique, batch_size=batch_size, normalize=True, max_length=max_length, **progress
    )
    emb = np.asarray(emb, dtype=np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    ia = np.array([index[s] for s in a])
    ib = np.array([index[s] for s in b])
    pos = np.einsum("ij,ij->i", emb[ia], emb[ib])
    perm = np.random.default_rng(seed).permutation(len(a))
    rand = np.einsum("ij,ij->i", emb[ia[perm]], emb[ib[np.roll(perm, -1)]])
    return pos, rand


def evaluate_run(
    run_dir: PathLike,
    tasks: str | Sequence[str] = ("stsb",),
    split: str = "test",
    data_dir: PathLike | None = None,
    batch_size: int = 64,
    output: PathLike | None = None,
    *,
    show_progress: bool | None = None,
) -> tuple[Path, tuple[np.ndarray, np.ndarray], str]:
    """Evaluate the run's ``best/`` (else ``final/``) encoder on STS now.

    ``tasks`` / ``split`` / ``data_dir`` / ``batch_size`` go to
    :func:`textcl.evaluation.evaluate_sts`. Writes the results (correlations ×100, with
    predictions) to ``output`` (default ``RUN_DIR/sts_results.json``) and computes the
    cosine similarities of the STS-B pairs of ``split`` with a gold score above
    :data:`~textcl.evaluation.alignment.POSITIVE_THRESHOLD` (SimCSE's positive pairs, as
    alignment uses them) against random pairs. Returns ``(results path, (pos, rand),
    description)``. ``show_progress``: encoding progress bars (default: none unless the
    ``textcl`` logger is at INFO).
    """
    root = Path(run_dir)
    model_dir = run_encoder_dir(root)
    encoder = SentenceEncoder.load(model_dir)
    model_name = f"{root.name}/{model_dir.name}"
    results = evaluate_sts(
        encoder,
        tasks=tasks if isinstance(tasks, str) else list(tasks),
        split=split,
        data_dir=data_dir,
        batch_size=batch_size,
        return_predictions=True,
        model_name=model_name,
        show_progress=show_progress,
    )
    out = Path(output) if output is not None else root / RESULTS_FILENAME
    write_json(out, results)

    # STS-B has test/dev/train; any other split name (SICK-R's "all") reads STS-B test.
    stsb = load_sts_task("stsb", split if split in ("test", "dev", "train") else "test", data_dir)
    keep = positive_mask(stsb.scores)
    if int(keep.sum()) < 2:
        raise ValueError(
            f"STS-B {stsb.split} has {int(keep.sum())} pairs with gold score > "
            f"{POSITIVE_THRESHOLD:g}; need at least 2 for the similarity distribution"
        )
    a = [s for s, k in zip(stsb.sentences1, keep, strict=True) if k]
    b = [s for s, k in zip(stsb.sentences2, keep, strict=True) if k]
    sims = pair_cosine_similarities(
        encoder, a, b, batch_size=batch_size, show_progress=show_progress
    )
    source = (
        f"{model_name} on STS-B {stsb.split}: {len(a)} pairs with gold score > "
        f"{POSITIVE_THRESHOLD:g} vs random pairs"
    )
    return out, sims, source
