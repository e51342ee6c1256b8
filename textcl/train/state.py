"""The run state of a training run, in memory and on disk, without pickle.

:class:`TrainerState` is the one record of where a run stands (step, epoch, position in the
epoch, log history, best metric and step, elapsed seconds), in the spirit of Hugging Face's
``TrainerState``: :class:`~textcl.train.TrainResult`, ``results.json`` and the report come
from it, and every checkpoint saves it.

A checkpoint's trainer state is two files that :func:`load_checkpoint_state` reads without
ever unpickling anything:

* ``trainer_state.json``: every non-tensor value (the state, the run fingerprint, optimizer
  hyper-parameters, Python/NumPy RNG states as integer lists), the sha256 of every other
  file of the checkpoint and a sha256 of its own content;
* ``trainer_state.safetensors``: every tensor (optimizer moments, torch/CUDA RNG states as
  uint8 tensors, view generator states).

Nested values are encoded as JSON with small tags: ``{"__tensor__": key}`` (a tensor in the
safetensors file), ``{"__tuple__": [...]}``, ``{"__ndarray__": [...], "dtype": ...}``,
``{"__items__": [[key, value], ...]}`` (a mapping with non-string keys, e.g. an optimizer's
parameter ids) and ``{"__float__": "nan"}`` (non-finite floats).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textcl.errors import CorruptFileError
from textcl.io import PathLike, read_json, sha256_file, write_json

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_STATE_FILE = "trainer_state.pt"
"""The pickle-based state of textcl before 0.2: refused, it cannot be read safely."""
STATE_FORMAT = 1


@dataclass
class TrainerState:
    """Where a run stands; saved in every checkpoint (``trainer_state.json``)."""

    run_id: str = ""
    """Random id of the run, kept across resumes; the save limit prunes only its checkpoints."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    """Every record written to ``metrics.jsonl`` (train and eval events), in order."""
    best_metric: float | None = None
    best_step: int | None = None
    best_metric_name: str = "stsb_dev_spearman"
    greater_is_better: bool = True
    elapsed_s: float = 0.0
    """Seconds of this run's ``train()`` calls so far (all resumes together)."""
    last_metrics: dict[str, float] | None = None

    def eval_record(self, step: int) -> dict[str, Any] | None:
        """The (last) eval record logged at ``step``, or None."""
        found = None
        for rec in self.log_history:
            if rec.get("event") == "eval" and rec.get("step") == step:
                found = rec
        return found

    def best_record(self) -> dict[str, Any] | None:
        """The eval record of the best step, or None."""
        return None if self.best_step is None else self.eval_record(self.best_step)

    def is_better(self, score: float) -> bool:
        """Whether ``score`` beats the best so far (NaN never does)."""
        if not math.isfinite(score):
            return False
        if self.best_metric is None:
            return True
        return score > self.best_metric if self.greater_is_better else score < self.best_metric

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> TrainerState:
        if not isinstance(data, dict):
            raise CorruptFileError(f"{source}: the trainer state is not a JSON object")
        names = {f.name for f in fields(cls)}
        missing = sorted(REQUIRED_FIELDS - set(data))
        if missing:
            raise CorruptFileError(f"{source}: trainer state lacks field(s) {missing}")
        # Fields added in later versions take their defaults.
        state = cls(**{k: data[k] for k in names if k in data})
        for name in ("step", "epoch", "batch_in_epoch"):
            value = getattr(state, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CorruptFileError(f"{source}: trainer state field {name!r} is {value!r}")
        if not isinstance(state.log_history, list):
            raise CorruptFileError(f"{source}: trainer state field 'log_history' is not a list")
        return state


REQUIRED_FIELDS = frozenset({"run_id", "step", "epoch", "batch_in_epoch", "log_history"})


# ---------------------------------------------------------------------- tagged JSON
def encode_tree(obj: Any, tensors: dict[str, torch.Tensor], path: str = "t") -> Any:
    """``obj`` as JSON-compatible data; tensors move to ``tensors`` under unique keys."""
    if isinstance(obj, torch.Tensor):
        key = f"{path}#{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return encode_tree(obj.item(), tensors, path)
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_tree(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise TypeError(f"{path}: cannot store a mapping key of type {type(k).__name__}")
            items.append([k, encode_tree(v, tensors, f"{path}.{k}")])
        return {"__items__": items}
    raise TypeError(f"{path}: cannot store a value of type {type(obj).__name__} in a checkpoint")


def decode_tree(obj: Any, tensors: dict[str, torch.Tensor], source: str) -> Any:
    """The inverse of :func:`encode_tree`; unknown tags or tensor keys are a damaged file."""
    if isinstance(obj, list):
        return [decode_tree(v, tensors, source) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise CorruptFileError(f"{source}: tensor {key!r} is missing from {STATE_TENSORS}")
        return tensors[key]
    if "__tuple__" in obj:
        return tuple(decode_tree(v, tensors, source) for v in obj["__tuple__"])
    if "__ndarray__" in obj:
        try:
            return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
        except (TypeError, ValueError) as e:
            raise CorruptFileError(f"{source}: bad array ({e})") from None
    if "__float__" in obj:
        if obj["__float__"] not in ("nan", "inf", "-inf"):
            raise CorruptFileError(f"{source}: bad float {obj['__float__']!r}")
        return float(obj["__float__"])
    if "__items__" in obj:
        return {k: decode_tree(v, tensors, source) for k, v in obj["__items__"]}
    return {k: decode_tree(v, tensors, source) for k, v in obj.items()}


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, allow_nan=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------- checkpoint files
def save_checkpoint_state(folder: PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (state, fingerprint, optimizer...: any nesting of the types
    :func:`encode_tree` takes) into ``folder`` as ``trainer_state.safetensors`` + JSON.

    Call it LAST when building a checkpoint folder: the JSON lists the sha256 of every file
    already in the folder, so that a damaged or swapped file is found on resume.
    """
    from safetensors.torch import save_file

    root = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode_tree(payload, tensors)
    save_file(tensors, str(root / STATE_TENSORS), metadata={"format": str(STATE_FORMAT)})
    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != STATE_JSON
    }
    body = {"format": STATE_FORMAT, "files": files, "payload": encoded}
    write_json(root / STATE_JSON, {**body, "sha256": _digest(body)})


def load_checkpoint_state(folder: PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint's state (see :func:`save_checkpoint_state`).

    Raises :class:`CorruptFileError` naming the file for an old pickle-based checkpoint, a
    missing, truncated, edited or swapped file. Nothing is unpickled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(folder)
    path = root / STATE_JSON
    if not path.is_file():
        if (root / LEGACY_STATE_FILE).exists():
            raise CorruptFileError(
                f"{root / LEGACY_STATE_FILE}: an old-format checkpoint (a pickle); textcl no "
                "longer reads pickles, which can run code. Start a new run (--overwrite) or "
                "keep using the textcl version that wrote it"
            )
        raise CorruptFileError(f"{root}: not a textcl checkpoint (no {STATE_JSON})")
    data = read_json(path, "trainer state")
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise CorruptFileError(f"{path}: not a textcl trainer state (format {STATE_FORMAT})")
    body = {k: v for k, v in data.items() if k != "sha256"}
    if data.get("sha256") != _digest(body):
        raise CorruptFileError(f"{path}: content does not match its checksum (file edited?)")
    files = data.get("files")
    if not isinstance(files, dict) or STATE_TENSORS not in files:
        raise CorruptFileError(f"{path}: no file list")
    for rel, digest in files.items():
        parts = Path(rel).parts
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in parts or not parts:
            raise CorruptFileError(f"{path}: file entry {rel!r} points outside the checkpoint")
        p = root / rel
        if not p.is_file():
            raise CorruptFileError(f"{p}: missing from the checkpoint")
        if sha256_file(p) != digest:
            raise CorruptFileError(
                f"{p}: does not match the checkpoint's record (damaged or swapped file)"
            )
    try:
        tensors = load_file(str(root / STATE_TENSORS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(f"{root / STATE_TENSORS}: unreadable ({e})") from None
    payload = decode_tree(data["payload"], tensors, str(path))
    if not isinstance(payload, dict):
        raise CorruptFileError(f"{path}: payload is not a mapping")
    return payload


# ---------------------------------------------------------------------- RNG states
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, in types :func:`encode_tree` stores."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [
            str(name),
            np.asarray(keys, dtype=np.uint32),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
    )
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in state["cuda"]])
