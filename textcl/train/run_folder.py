"""The run folder and the run's identity: what a run writes in ``OUTPUT_DIR``, which paths
it may not share with its inputs, claiming the folder for a new run (``overwrite``: the old
run set aside, then dropped or restored), and the fingerprint a resume must match.

``overwrite`` never deletes an old run up front. :func:`claim_folder` moves the old run's
outputs into ``OUTPUT_DIR/.textcl-replaced-run/`` (renames, nothing copied) once everything
else is checked; :func:`drop_replaced` removes them after the new run's first checkpoint is
written; :func:`restore_replaced` puts them back when the new run fails before that. After
a ``kill -9`` in between the folder holds both; the next ``textcl train`` into it (it holds
the folder's lock) settles it first (:func:`settle_replaced`): a complete checkpoint of the
new run means the new run started for real and the old one is removed; else the new run's
partial outputs are removed and the old run is restored, as if the killed run never began.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from textcl.errors import CorruptFileError, FolderConflictError, InputError
from textcl.io import path_overlap
from textcl.train.checkpoints import CHECKPOINTS, find_latest_checkpoint
from textcl.train.config import TrainConfig
from textcl.train.state import STATE_JSON

logger = logging.getLogger(__name__)

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
"""What a run writes in its folder (``overwrite`` replaces exactly these)."""

REPLACED_DIR = ".textcl-replaced-run"
"""Where ``overwrite`` keeps the old run until the new run's first checkpoint."""

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


def _resolved(path: str) -> Path:
    return Path(path).expanduser().resolve()


def check_run_paths(config: TrainConfig, sts_dir: Path | None = None) -> None:
    """Refuse (:class:`~textcl.errors.InputError`, exit 2) an output folder that equals,
    contains or sits inside one of the run's local inputs: the model folder, the training
    data file or folder, the guide model, the STS data folder ``sts_dir`` (the evaluation's).
    A run writes ``config.json``, ``checkpoints/``, ``final/`` in its folder and
    ``overwrite`` replaces them: an input there would be overwritten or deleted."""
    out = _resolved(config.output_dir)
    inputs = [
        ("model", "the model", config.model),
        ("train_file", "the training data", config.train_file),
        ("guide_model", "the guide model", config.guide_model),
        ("data_dir", "the STS data", str(sts_dir) if sts_dir is not None else None),
    ]
    for name, what, value in inputs:
        if not value or not Path(value).expanduser().exists():
            continue  # a hub id, or not there (its own check names it)
        given = _resolved(value)
        overlap = path_overlap(out, given)
        if overlap is None:
            continue
        relation = {"is": "is", "inside": "sits inside", "holds": "contains"}[overlap]
        raise InputError(
            f"config field 'output_dir': {out} {relation} {what} {given} (config field "
            f"{name!r}); a run writes config.json, checkpoints/ and final/ in its folder and "
            "--overwrite replaces them, so an output never shares a path with an input: "
            "choose another --output-dir" + (" or move the input" if relation == "contains" else "")
        )


def claim_folder(root: Path, *, resuming: bool, overwrite: bool) -> Path | None:
    """A new run may not start over another run's checkpoints; with ``overwrite`` the old
    run's outputs are moved aside into ``root/.textcl-replaced-run`` (returned: drop it with
    :func:`drop_replaced` after the new run's first checkpoint, put it back with
    :func:`restore_replaced` on failure). Call it with the folder's lock held, after every
    other check of the run."""
    found = [n for n in (CHECKPOINTS, "best", "final") if (root / n).exists()]
    if CHECKPOINTS in found and not any((root / CHECKPOINTS).iterdir()):
        found.remove(CHECKPOINTS)
    if resuming or not found:
        return None
    if not overwrite:
        raise FolderConflictError(
            f"{root}: holds another run ({', '.join(found)}); continue it with --resume, "
            "clear it with --overwrite, or use another --output-dir"
        )
    aside = root / REPLACED_DIR
    aside.mkdir()
    for name in RUN_OUTPUTS:
        path = root / name
        if path.exists() or path.is_symlink():
            os.replace(path, aside / name)
    logger.info("the old run of %s is set aside in %s until the first checkpoint", root, aside)
    return aside


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def drop_replaced(aside: Path) -> None:
    """The new run has written its first checkpoint: remove the old run set aside."""
    _remove(aside)


def restore_replaced(root: Path, aside: Path) -> None:
    """The new run failed before its first checkpoint: remove its outputs and put the old
    run (set aside by :func:`claim_folder`) back."""
    for name in RUN_OUTPUTS:
        _remove(root / name)
        if (aside / name).exists() or (aside / name).is_symlink():
            os.replace(aside / name, root / name)
    aside.rmdir()


def settle_replaced(root: Path) -> None:
    """A run killed (``kill -9``) between setting the old run aside and dropping it: keep
    the new run if it wrote a checkpoint, else restore the old one (see the module doc).
    Call it with the folder's lock held, before anything else touches the folder."""
    aside = root / REPLACED_DIR
    if not aside.is_dir():
        return
    if find_latest_checkpoint(root) is not None:
        logger.warning("%s: removing the old run replaced by --overwrite", aside)
        drop_replaced(aside)
    else:
        logger.warning("%s: the run that replaced it stopped early; old run restored", aside)
        restore_replaced(root, aside)


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
