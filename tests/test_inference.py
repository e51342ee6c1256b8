"""The encode loop (textcl.inference): prefetching gives the serial loop's embeddings, the
default token budget, validation of the new options."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from textcl import SentenceEncoder
from textcl import inference as inf


def _texts(sentences: list[str]) -> list[str]:
    return [*sentences, "short", "a much longer sentence " * 6, "", *sentences[::-1]]


def test_prefetch_builds_batches_in_a_background_thread_in_order() -> None:
    bounds = [(0, 2), (2, 4), (4, 5)]
    where: list[str] = []

    def make(a: int, b: int) -> dict[str, int]:
        where.append(threading.current_thread().name)
        return {"a": a, "b": b}

    serial = list(inf._batches(make, bounds, prefetch=False))  # type: ignore[arg-type]
    assert set(where) == {threading.current_thread().name}
    where.clear()
    overlapped = list(inf._batches(make, bounds, prefetch=True))  # type: ignore[arg-type]
    assert overlapped == serial == [{"a": a, "b": b} for a, b in bounds]
    assert where and all(name.startswith("textcl-prefetch") for name in where)


def test_prefetch_passes_errors_of_the_background_thread_on() -> None:
    def make(a: int, b: int) -> dict[str, int]:
        if a == 2:
            raise RuntimeError("tokenizer broke at batch 2")
        return {"a": a}

    got = []
    with pytest.raises(RuntimeError, match="batch 2"):
        for batch in inf._batches(make, [(0, 2), (2, 4), (4, 5)], prefetch=True):  # type: ignore[arg-type]
            got.append(batch)
    assert got == [{"a": 0}]


@pytest.mark.parametrize("pooling", ["mean", "cls", "prompt"])
def test_prefetch_gives_identical_embeddings(
    tiny_model_dir: Path, sentences: list[str], pooling: str, one_thread: None
) -> None:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling=pooling)
    enc.prompts = {"q": "query: "}
    enc.include_prompt = False
    texts = _texts(sentences)
    for kw in ({}, {"prompt_name": "q"}, {"truncate_dim": 8, "normalize": True}):
        serial = enc.encode(texts, batch_size=3, prefetch=False, **kw)
        overlapped = enc.encode(texts, batch_size=3, prefetch=True, **kw)
        np.testing.assert_array_equal(overlapped, serial)


def test_default_batching_is_the_cpu_token_budget(
    tiny_encoder: SentenceEncoder,
    sentences: list[str],
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    seen: list[int | None] = []
    real = inf.batch_bounds

    def spy(lengths: list[int], batch_size: int, max_tokens: int | None = None):  # type: ignore[no-untyped-def]
        seen.append(max_tokens)
        return real(lengths, batch_size, max_tokens)

    monkeypatch.setattr(inf, "batch_bounds", spy)
    texts = _texts(sentences)
    default = tiny_encoder.encode(texts, batch_size=8)
    plain = tiny_encoder.encode(texts, batch_size=8, max_tokens=None, prefetch=False)
    assert seen == [inf.CPU_MAX_TOKENS, None]
    # A budget small enough to split these batches changes batches, not vectors.
    monkeypatch.setattr(inf, "CPU_MAX_TOKENS", 40)
    split = tiny_encoder.encode(texts, batch_size=8)
    assert seen[-1] == 40
    np.testing.assert_allclose(default, plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(split, plain, rtol=0, atol=1e-6)


def test_resolve_max_tokens() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert inf.resolve_max_tokens("auto", cpu) == inf.CPU_MAX_TOKENS
    assert inf.resolve_max_tokens("auto", cuda) is None
    assert inf.resolve_max_tokens(None, cpu) is None
    assert inf.resolve_max_tokens(512, cuda) == 512


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"max_tokens": "big"},
            ValueError,
            "max_tokens must be a positive integer, 'auto' or None",
        ),
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"max_tokens": True}, ValueError, "max_tokens"),
        ({"max_tokens": 2.5}, ValueError, "max_tokens"),
        ({"prefetch": "no"}, TypeError, "prefetch must be True or False"),
        ({"prefetch": 1}, TypeError, "prefetch"),
    ],
)
def test_bad_options_are_refused_before_any_work(
    tiny_encoder: SentenceEncoder,
    monkeypatch: pytest.MonkeyPatch,
    kwargs: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    def no_work(*_: object, **__: object) -> None:
        raise AssertionError("encoded before validating")

    monkeypatch.setattr("textcl.encoder.encode_sorted", no_work)
    with pytest.raises(error, match=match):
        tiny_encoder.encode(["a sentence"], **kwargs)  # type: ignore[arg-type]


@pytest.mark.slow
def test_minilm_prefetch_identical_and_default_within_1e6(minilm_dir: Path, sts_dir: Path) -> None:
    rows = (sts_dir / "STSBenchmark" / "sts-dev.csv").read_text(encoding="utf-8").splitlines()
    texts = [c for row in rows[:200] for c in row.split("\t")[5:7]] + ["word " * 300]
    enc = SentenceEncoder.from_pretrained(minilm_dir)
    before = enc.encode(texts, max_tokens=None, prefetch=False, precision="fp32")
    serial = enc.encode(texts, prefetch=False, precision="fp32")
    after = enc.encode(texts, precision="fp32")
    np.testing.assert_array_equal(after, serial)
    assert float(np.abs(after - before).max()) <= 1e-6


def test_concurrent_encodes_of_a_training_mode_encoder(tiny_encoder: SentenceEncoder) -> None:
    """Threads encoding at once (a naive server) all get the eval-mode embeddings, and the
    train mode comes back after the last one. With a plain save/restore of the mode, one
    thread's restore switched dropout on under another's forward pass."""
    enc = tiny_encoder.train()
    assert enc.model.config.hidden_dropout_prob > 0
    texts = [f"sentence {i} about dogs and cats in the park" for i in range(24)]
    want = enc.encode(texts, normalize=True)
    assert enc.training and enc.model.training  # restored
    errors: list[float] = []
    start = threading.Barrier(6)

    def worker() -> None:
        start.wait()
        for _ in range(15):
            got = enc.encode(texts, normalize=True, batch_size=4)
            errors.append(float(np.abs(got - want).max()))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 90 and max(errors) < 1e-5
    assert enc.training and enc.model.training and not inf._EVAL_DEPTH
    enc.eval()
    enc.encode(texts)
    assert not enc.training and not enc.model.training  # an eval encoder stays in eval mode
