"""The training loop on the tiny BERT: it learns, logs, checkpoints and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import TINY_SENTENCES
from textcl import SentenceEncoder
from textcl.train import TrainConfig, Trainer, find_latest_checkpoint, train

PAIRS = [(TINY_SENTENCES[i], TINY_SENTENCES[(i + 1) % 16]) for i in range(16)]


def fake_evaluator(encoder: SentenceEncoder) -> dict[str, float]:
    """Cheap model-dependent metrics (the real STS-B evaluator is tested elsewhere)."""
    a = encoder.encode([p[0] for p in PAIRS], normalize=True)
    b = encoder.encode([p[1] for p in PAIRS], normalize=True)
    cos = (a * b).sum(1)
    return {"stsb_dev_spearman": float(100 * (1 - cos.mean())), "alignment": float(cos.std())}


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    lines = [f"{s} ({i})" for i in range(3) for s in TINY_SENTENCES]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_config(model: Path, data: Path, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        model=str(model),
        train_file=str(data),
        output_dir=str(out),
        batch_size=8,
        max_length=16,
        lr=1e-3,
        max_steps=6,
        eval_steps=3,
        logging_steps=1,
        seed=7,
    )
    base.update(kw)
    return TrainConfig(**base)


def read_log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    enc = SentenceEncoder.load(path)
    state = {f"model.{k}": v for k, v in enc.model.state_dict().items()}
    if enc.head is not None:
        state.update({f"head.{k}": v for k, v in enc.head.state_dict().items()})
    return state


def test_run_writes_everything_and_learns(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = make_config(
        tiny_model_dir, corpus_file, out, max_steps=30, eval_steps=10, eval_at_start=True
    )
    result = train(cfg, evaluator=fake_evaluator)
    assert result.steps == 30
    for name in ("config.json", "metrics.jsonl", "results.json", "final", "best"):
        assert (out / name).exists(), name
    log = read_log(out)
    train_recs = [r for r in log if r["event"] == "train"]
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in train_recs] == list(range(1, 31))
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert result.start_metrics is not None and result.start_metrics["step"] == 0
    # Alignment of positive pairs (two dropout views of each training sentence) improves.
    sentences = [f"{s} (0)" for s in TINY_SENTENCES]

    def view_alignment(path: Path) -> float:
        enc = SentenceEncoder.from_pretrained(path, pooling="cls", head_mode="train").train()
        torch.manual_seed(0)
        batch = enc.tokenize(sentences, max_length=16)
        with torch.no_grad():
            z1 = torch.nn.functional.normalize(enc(batch), dim=-1)
            z2 = torch.nn.functional.normalize(enc(batch), dim=-1)
        return float((z1 - z2).pow(2).sum(1).mean())

    torch.manual_seed(7)  # the head of the starting model as the trainer builds it
    start = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="cls", head_mode="train")
    start.save(tmp_path / "start")
    assert view_alignment(out / "final") < view_alignment(tmp_path / "start")
    assert all(r["sentences_per_s"] > 0 and r["lr"] >= 0 for r in train_recs)
    # Contrastive loss goes down on a corpus this small.
    assert np.mean([r["loss"] for r in train_recs[-3:]]) < np.mean(
        [r["loss"] for r in train_recs[:3]]
    )
    # Linear decay to zero over max_steps.
    assert train_recs[-1]["lr"] == pytest.approx(0.0)
    # best/ holds the encoder of the best evaluation.
    best_eval = max(evals, key=lambda r: r["stsb_dev_spearman"])
    assert [r["step"] for r in evals if r["best"]][-1] == best_eval["step"]
    best = SentenceEncoder.load(out / "best")
    assert fake_evaluator(best)["stsb_dev_spearman"] == pytest.approx(
        best_eval["stsb_dev_spearman"], abs=1e-4
    )
    assert result.best_metrics is not None and result.best_metrics["step"] == best_eval["step"]
    # The saved encoder keeps pooling and the train-only head; plain transformers loads it.
    saved = json.loads((out / "final" / "textcl_config.json").read_text())
    assert saved["pooling"] == "cls" and saved["head_mode"] == "train"
    from transformers import AutoModel

    AutoModel.from_pretrained(out / "final")
    ckpt = find_latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step-00000030"
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["step"] == 30 and meta["config"]["batch_size"] == 8
    assert len(list((out / "checkpoints").glob("step-*"))) <= cfg.save_total_limit


def test_resume_reaches_identical_weights(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """Interrupted after step 4 (checkpoint at 3), resumed: same weights as one straight run."""
    straight = tmp_path / "straight"
    train(
        make_config(tiny_model_dir, corpus_file, straight, view_b="mask:0.2"),
        evaluator=fake_evaluator,
    )

    class Crash(Exception):
        pass

    def crash(trainer: Trainer, step: int) -> None:
        if step == 4:
            raise Crash

    broken = tmp_path / "broken"
    cfg = make_config(tiny_model_dir, corpus_file, broken, view_b="mask:0.2")
    with pytest.raises(Crash):
        Trainer(cfg, evaluator=fake_evaluator, step_callback=crash).train()
    assert find_latest_checkpoint(broken).name == "step-00000003"  # type: ignore[union-attr]
    assert max(r["step"] for r in read_log(broken)) == 4
    result = Trainer(cfg, evaluator=fake_evaluator).train(resume=True)
    assert result.steps == 6
    w1, w2 = weights(straight / "final"), weights(broken / "final")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    # The log of the resumed run equals the straight run's (records past step 3 replaced).
    strip = lambda recs: [  # noqa: E731
        {
            k: v
            for k, v in r.items()
            if k not in ("time", "sentences_per_s", "eval_time_s", "elapsed_s")
        }
        for r in recs
    ]
    assert strip(read_log(broken)) == strip(read_log(straight))


def test_epochs_and_dedup(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "dups.txt"
    data.write_text("\n".join(list(TINY_SENTENCES) * 2) + "\n", encoding="utf-8")
    seen: list[list[str]] = []

    class Spy(Trainer):
        def make_inputs(self, rows):  # type: ignore[no-untyped-def]
            seen.append(self.data.texts(rows))
            return super().make_inputs(rows)

    cfg = make_config(
        tiny_model_dir, data, tmp_path / "run", max_steps=None, epochs=2, eval_steps=-1
    )
    result = Spy(cfg).train()
    assert result.steps == 8  # 32 sentences / 8 per batch, 2 epochs
    for batch in seen:
        assert len(set(batch)) == len(batch)


def test_bad_data_fails_before_model_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    cfg = TrainConfig(model="/does/not/exist", train_file=str(bad), output_dir=str(tmp_path / "o"))
    with pytest.raises(ValueError, match=r"bad\.txt:2"):
        Trainer(cfg)


def test_config_validation_names_field() -> None:
    with pytest.raises(ValueError, match="'temperature'"):
        TrainConfig(temperature=0)
    with pytest.raises(ValueError, match="'batch_size'"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="'pooling'"):
        TrainConfig(pooling="avg")


@pytest.mark.parametrize("chunk", [3, 100])
def test_grad_cache_training_matches_plain_training(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path, chunk: int
) -> None:
    """Dropout off: a run with the gradient cache reaches the plain run's weights."""
    import json as _json

    model_dir = tmp_path / "no-dropout"
    import shutil

    shutil.copytree(tiny_model_dir, model_dir)
    cfg_path = model_dir / "config.json"
    hf = _json.loads(cfg_path.read_text())
    hf["hidden_dropout_prob"] = hf["attention_probs_dropout_prob"] = 0.0
    cfg_path.write_text(_json.dumps(hf))
    kw = dict(max_steps=3, eval_steps=-1, head="none", pooling="mean")
    plain = train(make_config(model_dir, corpus_file, tmp_path / "plain", **kw))
    cached = train(
        make_config(model_dir, corpus_file, tmp_path / "gc", grad_cache_chunk=chunk, **kw)
    )
    w1, w2 = weights(plain.final_dir), weights(cached.final_dir)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5, msg=k)
    loss = lambda out: [r["loss"] for r in read_log(out) if r["event"] == "train"]  # noqa: E731
    np.testing.assert_allclose(loss(tmp_path / "plain"), loss(tmp_path / "gc"), rtol=1e-5)


def test_default_evaluator_on_real_stsb_dev(tiny_encoder, sts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The SimCSE-protocol evaluator equals the harness and the alignment module run apart."""
    from textcl.evaluation import evaluate_sts
    from textcl.evaluation.alignment import alignment_uniformity
    from textcl.train import sts_dev_evaluator

    metrics = sts_dev_evaluator(str(sts_dir), batch_size=64)(tiny_encoder)
    ref = evaluate_sts(tiny_encoder, tasks=("stsb",), split="dev", data_dir=sts_dir)
    au = alignment_uniformity(tiny_encoder, data_dir=sts_dir)
    assert metrics["stsb_dev_spearman"] == pytest.approx(ref["tasks"]["stsb"]["spearman"], abs=1e-4)
    assert metrics["alignment"] == pytest.approx(au["alignment"], rel=1e-4)
    assert metrics["uniformity"] == pytest.approx(au["uniformity"], rel=1e-4)


def test_supervised_triples_and_pairs(tiny_model_dir: Path, tmp_path: Path) -> None:
    import csv

    rows = [
        (TINY_SENTENCES[i], TINY_SENTENCES[(i + 1) % 16], TINY_SENTENCES[(i + 5) % 16])
        for i in range(16)
    ]
    triples = tmp_path / "triples.csv"
    with open(triples, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sent0", "sent1", "hard_neg"])
        w.writerows(rows)
    seen: list[int] = []

    class Spy(Trainer):
        def train_step(self, inputs):  # type: ignore[no-untyped-def]
            seen.append(len(inputs))
            return super().train_step(inputs)

    cfg = make_config(
        tiny_model_dir,
        triples,
        tmp_path / "sup",
        objective="sup",
        hard_negative_weight=1.0,
        eval_steps=-1,
        max_steps=4,
    )
    assert Spy(cfg).train().steps == 4
    assert seen == [3, 3, 3, 3]  # anchor, positive, hard negative
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": a, "p": b}) + "\n" for a, b, _ in rows))
    cfg = make_config(
        tiny_model_dir,
        pairs,
        tmp_path / "pairs",
        objective="sup",
        columns=["q", "p"],
        eval_steps=-1,
        max_steps=2,
    )
    seen.clear()
    Spy(cfg).train()
    assert seen == [2, 2]
    bad = tmp_path / "bad.csv"
    bad.write_text("sent0,sent1,hard_neg\na,b,c\nonly,two\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*3"):
        Trainer(make_config(tiny_model_dir, bad, tmp_path / "bad", objective="sup"))


def test_dropout_override_makes_views_deterministic(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    trainer = Trainer(make_config(tiny_model_dir, corpus_file, tmp_path / "r", dropout=0.0))
    trainer.setup()
    enc = trainer.encoder.train()
    batch = enc.tokenize(list(TINY_SENTENCES[:4]))
    assert torch.equal(enc(batch), enc(batch))  # ConSERT's --no_dropout
    trainer = Trainer(make_config(tiny_model_dir, corpus_file, tmp_path / "s"))
    trainer.setup()
    enc = trainer.encoder.train()
    assert not torch.equal(enc(batch), enc(batch))  # SimCSE: dropout is the augmentation


def test_merged_forward_equals_separate_forwards(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    trainer = Trainer(make_config(tiny_model_dir, corpus_file, tmp_path / "r", dropout=0.0))
    trainer.setup()
    trainer.encoder.train()
    base = trainer.encoder.tokenize(list(TINY_SENTENCES[:5]), max_length=16)
    from textcl.views import TokenMask

    masked = TokenMask(0.3, seed=0, mask_token_id=trainer.encoder.tokenizer.mask_token_id)(base)
    merged = trainer.embed([base, masked])
    for got, batch in zip(merged, [base, masked], strict=True):
        torch.testing.assert_close(got, trainer.encoder(batch), rtol=1e-5, atol=1e-6)
    short = trainer.encoder.tokenize(list(TINY_SENTENCES[:5]), max_length=6)
    apart = trainer.embed([base, short])  # different lengths: one forward each
    torch.testing.assert_close(apart[1], trainer.encoder(short))


def test_non_finite_loss_raises_before_the_update(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """A NaN loss stops the run BEFORE optimizer.step(): weights, optimizer state and the
    schedule are unchanged (the old order applied the NaN update first)."""
    trainer = Trainer(make_config(tiny_model_dir, corpus_file, tmp_path / "r", max_grad_norm=0.0))
    trainer.setup()
    inputs = trainer.make_inputs(trainer.local_rows(trainer.plan(0)[0]))
    trainer.train_step(inputs)  # one good step: the optimizer has state
    before = {k: v.clone() for k, v in trainer.encoder.state_dict().items()}
    opt_steps = [s["step"].clone() for s in trainer.optimizer.state.values()]
    lr = trainer.scheduler.get_last_lr()
    criterion = trainer.objective.loss
    trainer.objective.loss = lambda *z: criterion(*z) * float("nan")
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 1.*no update"):
        trainer.train_step(inputs)
    after = trainer.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [s["step"] for s in trainer.optimizer.state.values()] == opt_steps
    assert trainer.scheduler.get_last_lr() == lr
    assert all(p.grad is None for p in trainer.encoder.parameters())


@pytest.mark.slow
def test_dataloader_workers_give_the_same_run(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """Tokenization and token-level views in 2 DataLoader worker processes: the same batches,
    noise and weights as in the training process (views are seeded per batch)."""
    kw: dict[str, Any] = dict(
        max_steps=4, eval_steps=-1, view_a="shuffle+token_cutoff:0.2", view_b="mask:0.3"
    )
    runs = [
        train(make_config(tiny_model_dir, corpus_file, tmp_path / f"w{n}", num_workers=n, **kw))
        for n in (0, 2)
    ]
    w0, w2 = weights(runs[0].final_dir), weights(runs[1].final_dir)
    for k in w0:
        assert torch.equal(w0[k], w2[k]), k
    loss = lambda out: [r["loss"] for r in read_log(out) if r["event"] == "train"]  # noqa: E731
    assert loss(tmp_path / "w0") == loss(tmp_path / "w2")


def test_num_workers_is_validated(tiny_model_dir: Path, corpus_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_workers"):
        make_config(tiny_model_dir, corpus_file, tmp_path / "r", num_workers=-1)


@pytest.mark.slow  # ~130 s on a busy 2-core box: inductor compiles forward and backward
def test_compile_matches_eager_on_cpu(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """``compile=True`` (torch.compile of the transformer, inductor on CPU): a few steps with
    dropout off and a feature-cutoff view (the inputs_embeds path) give finite losses equal to
    eager within float tolerance."""
    pytest.importorskip("torch._inductor")
    kw: dict[str, Any] = dict(
        max_steps=3, eval_steps=-1, dropout=0.0, view_b="feature_cutoff:0.2", head="none"
    )
    eager = train(make_config(tiny_model_dir, corpus_file, tmp_path / "eager", **kw))
    compiled = train(
        make_config(tiny_model_dir, corpus_file, tmp_path / "compiled", compile=True, **kw)
    )
    loss = lambda out: [r["loss"] for r in read_log(out) if r["event"] == "train"]  # noqa: E731
    got, ref = loss(tmp_path / "compiled"), loss(tmp_path / "eager")
    assert len(got) == 3 and all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    w1, w2 = weights(eager.final_dir), weights(compiled.final_dir)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-4, msg=k)


def test_training_text_streams_from_a_hub_dataset(
    tiny_model_dir: Path, corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--stream reads a hub dataset's text column through datasets streaming (mocked: no
    network) and trains exactly as on the same sentences from a local file."""
    from textcl.data import _datasets

    lines = corpus_file.read_text(encoding="utf-8").splitlines()
    calls: list[tuple[str, str]] = []

    def fake_stream(name: str, split: str) -> Any:
        calls.append((name, split))
        return ({"text": t} for t in lines)

    def no_download(name: str, split: str) -> Any:
        raise AssertionError("stream must not download the dataset")

    monkeypatch.setattr(_datasets, "stream_hub_dataset", fake_stream)
    monkeypatch.setattr(_datasets, "load_hub_dataset", no_download)
    kw: dict[str, Any] = dict(max_steps=3, eval_steps=-1)
    hub = train(
        make_config(
            tiny_model_dir, Path("owner/wiki"), tmp_path / "hub", stream=True, split="dev", **kw
        )
    )
    local = train(make_config(tiny_model_dir, corpus_file, tmp_path / "local", **kw))
    assert calls == [("owner/wiki", "dev")]
    w_hub, w_local = weights(hub.final_dir), weights(local.final_dir)
    assert all(torch.equal(w_hub[k], w_local[k]) for k in w_local)
