"""Checkpoints of a training run: where they are, writing, pruning and loading them.

A checkpoint is ``OUTPUT_DIR/checkpoints/step-XXXXXXXX/``, written atomically (it appears
complete or not at all): ``model/``, ``config.json`` and the trainer state
(:func:`~textcl.train.state.save_checkpoint_state`: safetensors + JSON, never a pickle, each
file's sha256 recorded). This module also owns :func:`weights_digest`, the hash of a local
model folder's weight files that a run's fingerprint records.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from textcl.encoder import SentenceEncoder
from textcl.errors import CorruptFileError, FolderConflictError, InputError
from textcl.hub import WEIGHT_SUFFIXES, model_files_digest
from textcl.io import atomic_dir, read_json
from textcl.train.config import TrainConfig
from textcl.train.state import (
    LEGACY_STATE_FILE,
    STATE_JSON,
    TrainerState,
    load_checkpoint_state,
    rng_state,
    save_checkpoint_state,
    set_rng_state,
)
from textcl.views.base import View

CHECKPOINTS = "checkpoints"
"""The folder of a run's checkpoints, under its output folder."""


def weights_digest(model: str) -> str | None:
    """sha256 over the weight files of a local model folder (None for a hub id): the run
    fingerprint's model part (:func:`textcl.hub.model_files_digest`, the fingerprint an
    index's model check uses too, over the weight files only)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return None
    return model_files_digest(path, WEIGHT_SUFFIXES)


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``step-XXXXXXXX`` folder (None for another name)."""
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def check_resume_length(checkpoint: Path, total: int, by_max_steps: bool) -> None:
    """A resume trains up to ``total`` steps (``max_steps``, or ``epochs`` when
    ``by_max_steps`` is false): a checkpoint already past that is an error naming the field,
    not a run of 0 steps reported as the checkpoint's."""
    step = checkpoint_step(checkpoint)
    if step is not None and total < step:
        name = "max_steps" if by_max_steps else "epochs"
        raise InputError(
            f"config field {name!r}: the run would end at step {total}, before the "
            f"checkpoint's step {step} ({checkpoint}); give a larger --max-steps / "
            "--epochs to train on, or use the run's final/ as it is"
        )


def find_latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest ``step-XXXXXXXX`` checkpoint under ``output_dir``, or None (checkpoint
    folders appear complete or not at all: they are written atomically). An old-format
    checkpoint is returned too: resuming from it fails with a clear message."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [
        p
        for p in root.glob("step-*")
        if checkpoint_step(p) is not None
        and ((p / STATE_JSON).is_file() or (p / LEGACY_STATE_FILE).is_file())
    ]
    return max(done, key=lambda p: checkpoint_step(p) or 0) if done else None


def resolve_resume(output_dir: Path, resume: str | os.PathLike[str] | bool | None) -> Path | None:
    """The checkpoint ``resume`` names: a folder, ``True`` (the latest, which must exist),
    ``"auto"`` (the latest if any); None for a new run."""
    if resume is None or resume is False:
        return None
    if resume is True or resume == "auto":
        found = find_latest_checkpoint(output_dir)
        if found is None and resume is True:
            raise FileNotFoundError(f"{output_dir}: no checkpoint to resume from")
        return found
    path = Path(resume)
    if not ((path / STATE_JSON).is_file() or (path / LEGACY_STATE_FILE).is_file()):
        raise FileNotFoundError(f"{path}: not a textcl checkpoint (no {STATE_JSON})")
    own = (output_dir / CHECKPOINTS).expanduser().resolve()
    if path.expanduser().resolve().parent != own:
        raise FolderConflictError(
            f"{path}: a checkpoint of another run folder (not under {output_dir / CHECKPOINTS}); "
            "a resume continues the run of --output-dir. Resume that run with its own "
            "--output-dir, or start a new run from its weights (--model "
            f"{path / 'model'})"
        )
    return path


@contextlib.contextmanager
def os_errors(path: Path) -> Iterator[None]:
    """Writing ``path``: a safetensors write error (disk full, read-only filesystem: Rust's
    ``IoError(Os { code: N, ...})``) becomes the ``OSError`` it wraps, naming ``path``."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        found = re.search(r"code: (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, f"{os.strerror(code)} ({e})", str(path)) from e


def rank_state(views: Mapping[str, View]) -> dict[str, Any]:
    """What differs between ranks: RNG and view generator states."""
    return {
        "views": {name: v.state_dict() for name, v in views.items() if hasattr(v, "state_dict")},
        "rng": rng_state(),
    }


def write_checkpoint(
    output_dir: Path,
    step: int,
    encoder: SentenceEncoder,
    config: TrainConfig,
    meta: Mapping[str, Any],
    payload: dict[str, Any],
) -> Path:
    """Write ``checkpoints/step-XXXXXXXX`` atomically: the model, ``config.json`` (with
    ``meta``: step, epoch, metrics...) and the trainer state ``payload`` (last: it lists
    the files)."""
    target = output_dir / CHECKPOINTS / f"step-{step:08d}"
    with os_errors(target), atomic_dir(target) as tmp:
        encoder.save(tmp / "model")
        config.save(tmp / "config.json", step=step, **meta)
        save_checkpoint_state(tmp, payload)
    return target


def prune_checkpoints(output_dir: Path, run_id: str, keep: int) -> None:
    """Remove the run ``run_id``'s checkpoints but its newest ``keep`` (other runs' are
    not ours to judge: left alone)."""
    mine: list[tuple[int, Path]] = []
    for p in (output_dir / CHECKPOINTS).glob("step-*"):
        step = checkpoint_step(p)
        if step is None or not (p / STATE_JSON).is_file():
            continue
        try:
            found = read_json(p / STATE_JSON)["payload"]["state"]["run_id"]
        except (CorruptFileError, KeyError, TypeError):
            continue  # not ours to judge: leave it
        if found == run_id:
            mine.append((step, p))
    mine.sort()
    for _, old in mine[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    checkpoint: Path,
    *,
    check_fingerprint: Callable[[Path, Any], None],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    views: Mapping[str, View],
    rank: int,
    momentum: Any = None,
    device: torch.device | None = None,
) -> TrainerState:
    """Restore a checkpoint's optimizer, scheduler, scaler, this rank's view and RNG states
    and the momentum state (``momentum``: the run's
    :class:`~textcl.momentum.MomentumContrast`, if any) after ``check_fingerprint(checkpoint,
    stored fingerprint)``; returns its run state. A damaged state is a
    :class:`~textcl.errors.CorruptFileError`."""
    payload = load_checkpoint_state(checkpoint)
    source = str(checkpoint / STATE_JSON)
    try:
        check_fingerprint(checkpoint, payload.get("fingerprint"))
        state = TrainerState.from_dict(payload["state"], source)
        if checkpoint_step(checkpoint) not in (None, state.step):
            raise CorruptFileError(
                f"{source}: holds step {state.step}, not the folder's {checkpoint.name}"
            )
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        mine = payload["ranks"][rank]
        for name, view in views.items():
            if name in mine["views"] and hasattr(view, "load_state_dict"):
                view.load_state_dict(mine["views"][name])
        set_rng_state(mine["rng"])
        if momentum is not None:
            momentum.load_state_dict(payload["momentum"], device)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, CorruptFileError | FolderConflictError):
            raise
        raise CorruptFileError(
            f"{source}: damaged trainer state ({type(e).__name__}: {e})"
        ) from None
    return state
