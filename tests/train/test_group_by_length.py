"""Length-grouped batching: a seeded permutation, less padding than random batches, random
negatives within buckets, and an exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.test_trainer import corpus_file, fake_evaluator, make_config, weights  # noqa: F401
from textcl.data.text import plan_epoch
from textcl.train import Trainer, find_latest_checkpoint
from textcl.train.batches import length_grouped_order


def _spread(lengths: np.ndarray, batches: list[list[int]]) -> float:
    """Mean padded tokens per real token (batch max length x size / sum of lengths)."""
    padded = sum(len(b) * lengths[b].max() for b in batches)
    return float(padded / sum(lengths[b].sum() for b in batches))


def test_order_is_a_seeded_permutation_grouped_by_length() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(3, 80, size=5000)
    a = length_grouped_order(lengths, 64, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(5000))
    np.testing.assert_array_equal(a, length_grouped_order(lengths, 64, seed=1, epoch=0))
    assert not np.array_equal(a, length_grouped_order(lengths, 64, seed=1, epoch=1))
    assert not np.array_equal(a, length_grouped_order(lengths, 64, seed=2, epoch=0))
    hashes = np.arange(5000, dtype=np.uint64)
    grouped = plan_epoch(hashes, 64, seed=1, epoch=0, order=a)
    random = plan_epoch(hashes, 64, seed=1, epoch=0)
    assert sorted(i for b in grouped for i in b) == list(range(5000))
    # Oracle: random batches pad to ~1.8x here; grouped ones barely pad.
    assert _spread(lengths, random) > 1.5 and _spread(lengths, grouped) < 1.1
    # Negatives are still random: which items share a batch changes with the epoch, and a
    # batch is not a contiguous slice of the globally sorted order.
    pairs0 = {frozenset(b[:2]) for b in grouped}
    pairs1 = {
        frozenset(b[:2])
        for b in plan_epoch(
            hashes, 64, 1, 1, order=length_grouped_order(lengths, 64, seed=1, epoch=1)
        )
    }
    assert len(pairs0 & pairs1) < len(pairs0) // 10
    rank = np.argsort(np.argsort(lengths, kind="stable"))
    assert np.mean([np.ptp(rank[b]) for b in grouped]) > 2 * 63  # a slice: exactly 63


def test_plan_epoch_with_an_order_keeps_duplicates_apart() -> None:
    hashes = np.array([1, 1, 2, 3, 4, 5, 6, 7], dtype=np.uint64)
    order = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    batches = plan_epoch(hashes, 4, seed=0, epoch=0, order=order)
    assert batches[0] == [0, 2, 3, 4]
    for b in batches:
        assert len({int(hashes[i]) for i in b}) == len(b)


def test_trainer_group_by_length_plan_and_exact_resume(
    tiny_model_dir: Path,
    corpus_file: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = make_config(tiny_model_dir, corpus_file, tmp_path / "g", group_by_length=True)
    trainer = Trainer(cfg, evaluator=fake_evaluator)
    lengths = np.array([len(trainer.data[i]) for i in range(len(trainer.hashes))])
    expected = plan_epoch(
        trainer.hashes,
        8,
        seed=7,
        epoch=0,
        order=length_grouped_order(lengths, 8, seed=7, epoch=0),
    )
    assert trainer.plan(0) == expected
    assert trainer.plan(0) != plan_epoch(trainer.hashes, 8, seed=7, epoch=0)

    straight = tmp_path / "straight"
    Trainer(
        make_config(tiny_model_dir, corpus_file, straight, group_by_length=True),
        evaluator=fake_evaluator,
    ).train()

    class Crash(Exception):
        pass

    def crash(trainer: Trainer, step: int) -> None:
        if step == 4:
            raise Crash

    broken = tmp_path / "broken"
    cfg = make_config(tiny_model_dir, corpus_file, broken, group_by_length=True)
    with pytest.raises(Crash):
        Trainer(cfg, evaluator=fake_evaluator, step_callback=crash).train()
    assert find_latest_checkpoint(broken) is not None
    Trainer(cfg, evaluator=fake_evaluator).train(resume=True)
    w1, w2 = weights(straight / "final"), weights(broken / "final")
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    # Turning it off on resume changes the batches: refused.
    off = make_config(tiny_model_dir, corpus_file, broken, group_by_length=False)
    with pytest.raises(Exception, match="group_by_length"):
        Trainer(off, evaluator=fake_evaluator).train(resume=True)
