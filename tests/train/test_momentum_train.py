"""The trainer with a momentum queue and false-negative control (issue 17): config checks,
queue + EMA weights in the checkpoint (safetensors, no pickle), a resumed run equals an
uninterrupted one bitwise, the guide model path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train.test_trainer import corpus_file, fake_evaluator, make_config, read_log, weights
from textcl.momentum import MomentumContrast
from textcl.train import TrainConfig, Trainer, find_latest_checkpoint, train
from textcl.train.state import load_checkpoint_state

__all__ = ["corpus_file"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_config_fields_are_validated() -> None:
    with pytest.raises(ValueError, match=r"'fn_threshold'.*exclude each other"):
        TrainConfig(fn_margin=0.1, fn_threshold=0.8)
    with pytest.raises(ValueError, match=r"'guide_model'.*fn_margin or fn_threshold"):
        TrainConfig(guide_model="guide")
    with pytest.raises(ValueError, match="'queue_size'"):
        TrainConfig(queue_size=-1)
    with pytest.raises(ValueError, match="'momentum'"):
        TrainConfig(queue_size=8, momentum=1.5)
    cfg = TrainConfig(queue_size=160, momentum=0.995, fn_margin=0.1)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_flags(tmp_path: Path) -> None:
    import argparse

    from textcl.commands import train as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        ["train", "--queue-size", "160", "--momentum", "0", "--fn-threshold", "0.9"]
    )
    cfg = cmd.config_from_args(args)
    assert (cfg.queue_size, cfg.momentum, cfg.fn_threshold, cfg.fn_margin) == (160, 0.0, 0.9, None)


def _queue_kw(**kw: Any) -> dict[str, Any]:
    return dict(view_b="mask:0.2", queue_size=12, momentum=0.9, fn_margin=0.05, **kw)


def test_resume_with_queue_reaches_identical_weights(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """Interrupted after step 4 (checkpoint at 3), resumed: same weights, queue and EMA copy
    as one straight run; the checkpoint holds the queue and EMA weights as tensors."""
    straight = tmp_path / "straight"
    ref = Trainer(
        make_config(tiny_model_dir, corpus_file, straight, **_queue_kw()), evaluator=fake_evaluator
    )
    ref.train()

    class Crash(Exception):
        pass

    def crash(trainer: Trainer, step: int) -> None:
        if step == 4:
            raise Crash

    broken = tmp_path / "broken"
    cfg = make_config(tiny_model_dir, corpus_file, broken, **_queue_kw())
    with pytest.raises(Crash):
        Trainer(cfg, evaluator=fake_evaluator, step_callback=crash).train()
    ckpt = find_latest_checkpoint(broken)
    assert ckpt is not None and ckpt.name == "step-00000003"
    payload = load_checkpoint_state(ckpt)
    saved = payload["momentum"]
    assert int(saved["queue"]["filled"]) == 12 and int(saved["queue"]["ptr"]) == (3 * 8) % 12
    assert saved["ema"] and all(isinstance(v, torch.Tensor) for v in saved["ema"].values())
    resumed = Trainer(cfg, evaluator=fake_evaluator)
    result = resumed.train(resume=True)
    assert result.steps == 6
    w1, w2 = weights(straight / "final"), weights(broken / "final")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    a, b = ref.objective, resumed.objective
    assert isinstance(a, MomentumContrast) and isinstance(b, MomentumContrast)
    assert torch.equal(a.queue.negatives(), b.queue.negatives())  # type: ignore[union-attr,arg-type]
    ema_a, ema_b = a.key_encoder.state_dict(), b.key_encoder.state_dict()  # type: ignore[union-attr]
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    losses = lambda out: [r["loss"] for r in read_log(out) if r["event"] == "train"]  # noqa: E731
    assert losses(straight) == losses(broken)


def test_resume_without_the_queue_state_is_refused(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """Control: the queue is part of the recipe; a changed queue size cannot resume."""
    out = tmp_path / "run"
    train(
        make_config(tiny_model_dir, corpus_file, out, max_steps=3, **_queue_kw()),
        evaluator=fake_evaluator,
    )
    from textcl.errors import FolderConflictError

    changed = make_config(
        tiny_model_dir, corpus_file, out, max_steps=4, **{**_queue_kw(), "queue_size": 16}
    )
    with pytest.raises(FolderConflictError, match="queue_size"):
        Trainer(changed, evaluator=fake_evaluator).train(resume=True)


def test_queue_changes_training_and_momentum_zero_runs(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    kw = dict(max_steps=3, eval_steps=-1)
    plain = train(make_config(tiny_model_dir, corpus_file, tmp_path / "plain", **kw))
    queued = train(
        make_config(tiny_model_dir, corpus_file, tmp_path / "q", queue_size=16, momentum=0.0, **kw)
    )
    w1, w2 = weights(plain.final_dir), weights(queued.final_dir)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    loss = lambda out: [r["loss"] for r in read_log(out) if r["event"] == "train"]  # noqa: E731
    # Step 1: empty queue -> the same loss; later steps have 8, 16 extra negatives.
    assert loss(tmp_path / "q")[0] == pytest.approx(loss(tmp_path / "plain")[0], rel=1e-6)
    assert loss(tmp_path / "q")[2] > loss(tmp_path / "plain")[2]


def test_guide_model_in_training(tiny_model_dir: Path, corpus_file: Path, tmp_path: Path) -> None:
    from textcl import SentenceEncoder

    SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean").save(tmp_path / "guide")
    kw = dict(max_steps=2, eval_steps=-1, fn_threshold=0.5, queue_size=8, momentum=0.0)
    trainer = Trainer(
        make_config(
            tiny_model_dir, corpus_file, tmp_path / "g", guide_model=str(tmp_path / "guide"), **kw
        )
    )
    result = trainer.train()
    assert result.steps == 2
    assert isinstance(trainer.objective, MomentumContrast) and trainer.objective.guide is not None
    assert len(trainer.objective.guide_queue) == 8  # type: ignore[arg-type]
    from textcl.errors import InputError

    with pytest.raises(InputError, match="guide_model"):
        Trainer(
            make_config(
                tiny_model_dir,
                corpus_file,
                tmp_path / "h",
                guide_model=str(tmp_path / "nope"),
                **kw,
            )
        ).train()


def test_changed_guide_weights_refuse_resume(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """The guide is fingerprinted by content: the same folder with other weights cannot
    resume the run (control: unchanged, it resumes)."""
    from textcl import SentenceEncoder
    from textcl.errors import FolderConflictError

    guide = tmp_path / "guide"
    SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean").save(guide)
    out = tmp_path / "run"

    def config(steps: int) -> TrainConfig:
        return make_config(
            tiny_model_dir,
            corpus_file,
            out,
            guide_model=str(guide),
            max_steps=steps,
            eval_steps=-1,
            save_steps=1,
            fn_threshold=0.5,
        )

    Trainer(config(2)).train()
    assert Trainer(config(3)).train(resume=True).steps == 3
    weights = guide / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(FolderConflictError, match="guide_weights_sha256"):
        Trainer(config(4)).train(resume=True)
