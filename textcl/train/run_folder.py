"""The run folder and the run's identity: what a run writes in ``OUTPUT_DIR``, claiming the
folder for a new run, and the fingerprint a resume must match."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from textcl.errors import CorruptFileError, FolderConflictError
from textcl.train.checkpoints import CHECKPOINTS
from textcl.train.config import TrainConfig
from textcl.train.state import STATE_JSON

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
RUN_OUTPUTS = (
    CHECKPOINTS,
    "best",
    "final",
    METRICS_FILE,
    "results.json",
    TENSORBOARD_DIR,
    "config.json",
)
"""What a run writes in its folder (``overwrite`` removes exactly these)."""

RESUMABLE_FIELDS = (
    "output_dir",
    "max_steps",
    "epochs",
    "eval_steps",
    "eval_at_start",
    "eval_batch_size",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "data_dir",
    "device",
    "report_to",
    "overwrite",
    "train_file",
    "model",
    "compile",
    "precision",
    "grad_cache_chunk",
    "num_workers",
    "stream",
)
"""Config fields that may change on ``--resume`` (cadence, length, where and how it runs).
``model`` and ``train_file`` may be moved: their content is checked (weights hash, data
identity) instead of their path."""


def claim_folder(root: Path, *, resuming: bool, overwrite: bool) -> None:
    """A new run may not start over another run's checkpoints (``overwrite`` clears
    them); call it with the folder's lock held."""
    found = [n for n in (CHECKPOINTS, "best", "final") if (root / n).exists()]
    if CHECKPOINTS in found and not any((root / CHECKPOINTS).iterdir()):
        found.remove(CHECKPOINTS)
    if resuming or not found:
        return
    if not overwrite:
        raise FolderConflictError(
            f"{root}: holds another run ({', '.join(found)}); continue it with --resume, "
            "clear it with --overwrite, or use another --output-dir"
        )
    for name in RUN_OUTPUTS:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def run_fingerprint(
    config: TrainConfig,
    *,
    model_digest: str | None,
    data_items: int,
    data_sha256: str,
    world_size: int,
    guide_digest: str | None = None,
) -> dict[str, Any]:
    """What must not change when a run is resumed: the starting model (source and a
    sha256 of its weight files), the training data's identity (items and a content
    hash), the recipe and the number of processes."""
    recipe = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_FIELDS}
    fingerprint = {
        **recipe,
        "model_weights_sha256": model_digest,
        "data_items": data_items,
        "data_sha256": data_sha256,
        "world_size": world_size,
    }
    if config.guide_model is not None:
        # The guide decides which negatives count: its content, not only its path.
        fingerprint["guide_weights_sha256"] = guide_digest
    return fingerprint


def check_fingerprint(checkpoint: Path, now: dict[str, Any], stored: Any) -> None:
    """Refuse to resume ``checkpoint`` when its ``stored`` fingerprint differs from the
    run's ``now`` (a config field added since, left at its default, is no change)."""
    if not isinstance(stored, dict):
        raise CorruptFileError(f"{checkpoint / STATE_JSON}: no run fingerprint")
    defaults = TrainConfig().to_dict()
    changed = sorted(
        k
        for k in set(now) | set(stored)
        if now.get(k) != stored.get(k)
        # a config field added after the checkpoint was written, left at its default
        and not (k not in stored and k in defaults and now[k] == defaults[k])
    )
    if changed:
        what = "; ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise FolderConflictError(
            f"{checkpoint}: cannot resume, the run changed ({what}). Resume with the "
            "run's own model, data and recipe, or start a new run (--overwrite or "
            "another --output-dir)"
        )
