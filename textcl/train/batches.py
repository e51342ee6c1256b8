"""The training data path before the model: planned batches -> tokenization and token-level
views, inside a ``torch.utils.data.DataLoader`` (optionally in worker processes).

Every rank plans the same global batches (:func:`textcl.data.text.plan_epoch`) and takes its
share; :class:`BatchCollator` turns a share into token batches, one per role
(``[view_a, view_b]`` unsupervised, ``[anchor, positive(, hard_negative)]`` supervised). The
views of batch ``k`` of epoch ``e`` are seeded from ``(view seed, e, k)``
(:func:`textcl.views.reseed_view`), so a batch's noise is the same in a worker, in the main
process and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from textcl.distributed import DistEnv, shard_batch
from textcl.tokens import TokenBatch, tokenize_texts
from textcl.views import View, reseed_view

BatchKey = tuple[int, int, list[int]]
"""``(epoch, batch index in the epoch, this rank's rows)``."""


def length_grouped_order(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket_batches: int = 50
) -> np.ndarray:
    """An item order for length-grouped batching (like transformers' ``group_by_length``).

    Items are shuffled (seeded by ``seed`` and ``epoch``), cut into buckets of
    ``bucket_batches * batch_size``, each bucket is sorted by length (ties keep their random
    order) and cut into runs of ``batch_size``, and the runs are shuffled (short remainders
    last). A batch then holds
    sentences of similar length (less padding) drawn at random from its bucket, so in-batch
    negatives stay random; the order is a pure function of ``seed`` and ``epoch`` (exact
    resume).
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch, 0x9B])
    perm = rng.permutation(len(lengths))
    size = max(1, batch_size * bucket_batches)
    runs: list[np.ndarray] = []
    for start in range(0, len(perm), size):
        bucket = perm[start : start + size]
        bucket = bucket[np.argsort(lengths[bucket], kind="stable")]
        runs.extend(bucket[k : k + batch_size] for k in range(0, len(bucket), batch_size))
    if not runs:
        return perm
    # Full runs in random order, then the short ones (a bucket's remainder), so batches stay
    # aligned with runs (a short run in the middle would shift every later batch).
    full = [runs[i] for i in rng.permutation(len(runs)) if len(runs[i]) == batch_size]
    return np.concatenate(full + [r for r in runs if len(r) < batch_size])


class PlannedBatches(Dataset[Any]):
    """This rank's rows of the planned global batches ``batches[start:]`` of ``epoch``: one
    item per batch (the DataLoader runs with ``batch_size=None``)."""

    def __init__(
        self, epoch: int, batches: Sequence[Sequence[int]], start: int, env: DistEnv | None
    ) -> None:
        self.epoch, self.batches, self.start, self.env = epoch, batches, start, env

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)

    def __getitem__(self, k: int) -> BatchKey:
        index = self.start + k
        return self.epoch, index, shard_batch(self.batches[index], self.env)


class BatchCollator:
    """Rows -> token batches: read the texts, tokenize, apply the token-level views.

    Args:
        data: a :class:`textcl.data.text.TextCorpus` (``unsup``) or a
            :class:`textcl.data.pairs.PairDataset` (``sup``).
        objective: ``unsup`` or ``sup``.
        tokenizer: the encoder's tokenizer; ``max_length``: truncation length.
        view_a, view_b: the views; ``view_b`` also applies to hard negatives.
        templates: ``prompt`` pooling: the :class:`textcl.prompt.PromptTemplate` of view a
            and of view b (``unsup``; ``sup`` wraps every column in the first); ``denoise``:
            add the template-only sequences for template denoising.
    """

    def __init__(
        self,
        data: Any,
        objective: str,
        tokenizer: Any,
        max_length: int,
        view_a: View,
        view_b: View,
        templates: Sequence[Any] | None = None,
        denoise: bool = False,
    ) -> None:
        self.data, self.objective = data, objective
        self.tokenizer, self.max_length = tokenizer, max_length
        self.view_a, self.view_b = view_a, view_b
        self.templates = list(templates) if templates else None
        self.denoise = denoise

    def _prompted(self, rows: Sequence[int]) -> list[TokenBatch]:
        """PromptBERT: texts wrapped in template a (view a / anchors) and template b (view b /
        every other column): different templates as the two views."""
        assert self.templates is not None
        first, second = self.templates[0], self.templates[-1]

        def wrap(template: Any, texts: Sequence[str]) -> TokenBatch:
            return template.tokenize(texts, self.max_length, denoise=self.denoise)

        if self.objective == "unsup":
            texts = self.data.texts(rows)
            return [self.view_a(wrap(first, texts)), self.view_b(wrap(second, texts))]
        columns = list(zip(*(self.data[i] for i in rows), strict=True))
        toks = [wrap(first, list(c)) for c in columns]
        return [self.view_a(toks[0])] + [self.view_b(t) for t in toks[1:]]

    def collate(self, rows: Sequence[int]) -> list[TokenBatch]:
        """Token batches (CPU) of ``rows``, the views' generators as they are."""
        if self.templates is not None:
            return self._prompted(rows)
        if self.objective == "unsup":
            base = tokenize_texts(self.tokenizer, self.data.texts(rows), self.max_length)
            return [self.view_a(base), self.view_b(base)]
        columns = list(zip(*(self.data[i] for i in rows), strict=True))
        toks = [tokenize_texts(self.tokenizer, list(c), self.max_length) for c in columns]
        return [self.view_a(toks[0])] + [self.view_b(t) for t in toks[1:]]

    def __call__(self, key: Any) -> list[TokenBatch]:
        """``key``: a :data:`BatchKey` (the DataLoader passes it as its "batch")."""
        epoch, index, rows = key
        reseed_view(self.view_a, epoch, index)
        reseed_view(self.view_b, epoch, index)
        return self.collate(rows)


def make_loader(
    dataset: PlannedBatches,
    collator: BatchCollator,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader[Any]:
    """A DataLoader yielding one list of token batches per planned batch, in plan order.

    ``num_workers`` > 0 tokenizes and applies views in worker processes (prefetching 2 batches
    each). The loader's own generator is seeded, so creating it never draws from torch's
    global RNG (whose state, e.g. dropout's, must continue exactly on resume).
    """
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
