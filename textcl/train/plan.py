"""The training data of a run and its plan: the items, a hash per item, the global batches
of each epoch and the number of steps."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from textcl.data.pairs import PairDataset
from textcl.data.text import TextCorpus, plan_epoch, text_hash64
from textcl.errors import InputError
from textcl.train.batches import length_grouped_order
from textcl.train.config import TrainConfig


def load_training_data(config: TrainConfig) -> Any:
    """``train_file`` as a :class:`~textcl.data.text.TextCorpus` (``unsup``) or a
    :class:`~textcl.data.pairs.PairDataset` (``sup``), read and checked."""
    if config.objective == "unsup":
        return TextCorpus.from_source(
            config.train_file,
            text_column=config.text_column,
            split=config.split,
            streaming=config.stream,
        )

    return PairDataset.from_source(
        config.train_file, columns=config.columns, skip_bad_rows=config.skip_bad_rows
    )


class TrainingData:
    """The items of a run (sentences, or pairs/triples), a 64-bit hash per item (no batch
    holds two items with the same hash) and the global batches of each epoch,
    deterministic in seed and epoch (every rank plans the same batches).

    Raises :class:`~textcl.errors.InputError` when ``batch_size`` exceeds the distinct items.
    """

    def __init__(self, config: TrainConfig, world_size: int = 1) -> None:
        self.config = config
        self.world_size = world_size
        self.items = load_training_data(config)
        self.hashes = self._hashes()
        distinct = len(np.unique(self.hashes))
        if config.batch_size > distinct:
            raise InputError(
                f"config field 'batch_size': {config.batch_size} is more than the {distinct} "
                f"distinct item(s) of {config.train_file}; a batch holds no duplicate, so "
                f"lower batch_size to at most {distinct} or add data"
            )
        self._plans: dict[int, list[list[int]]] = {}
        self._lengths: np.ndarray | None = None
        self._sha256: str | None = None

    def _hashes(self) -> np.ndarray:
        if isinstance(self.items, TextCorpus):
            return self.items.hashes
        # Supervised: no two rows with the same anchor in a batch (each anchor's positive
        # would be a false negative of the other).
        return np.array([text_hash64(self.items[i][0]) for i in range(len(self.items))], np.uint64)

    def plan(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch`` (deterministic in seed and epoch)."""
        cfg = self.config
        if epoch not in self._plans:
            self._plans = {
                epoch: plan_epoch(
                    self.hashes,
                    cfg.batch_size,
                    seed=cfg.seed,
                    epoch=epoch,
                    drop_last=cfg.drop_last or self.world_size > 1,
                    order=self._length_order(epoch),
                )
            }
            if not self._plans[epoch]:
                raise InputError(
                    f"{cfg.train_file}: {len(self.hashes)} distinct item(s) cannot fill "
                    f"one batch of {cfg.batch_size}; lower batch_size"
                )
        return self._plans[epoch]

    def _length_order(self, epoch: int) -> np.ndarray | None:
        """With ``group_by_length``: the item order of ``epoch`` (else None: random)."""
        if not self.config.group_by_length:
            return None
        if self._lengths is None:
            items = self.items
            first = (
                (lambda i: items[i]) if isinstance(items, TextCorpus) else (lambda i: items[i][0])
            )
            self._lengths = np.array([len(first(i)) for i in range(len(self.hashes))])
        return length_grouped_order(self._lengths, self.config.batch_size, self.config.seed, epoch)

    def total_steps(self) -> int:
        """``max_steps``, else the batches of all ``epochs``."""
        if self.config.max_steps is not None:
            return self.config.max_steps
        return sum(len(self.plan(e)) for e in range(self.config.epochs))

    def digest(self) -> str:
        """sha256 of the data's content (a corpus's per-sentence hashes; every column of
        pairs), computed once: part of the run's fingerprint."""
        if self._sha256 is None:
            if isinstance(self.items, TextCorpus):
                raw = np.ascontiguousarray(self.hashes).tobytes()
                self._sha256 = hashlib.sha256(raw).hexdigest()
            else:
                h = hashlib.sha256()
                for i in range(len(self.items)):
                    h.update("\x1f".join(self.items[i]).encode("utf-8") + b"\x1e")
                self._sha256 = h.hexdigest()
        return self._sha256
