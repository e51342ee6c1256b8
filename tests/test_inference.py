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
        ({"prefetch": "no"}, TypeError, "prefetch must be True, False or None"),
        ({"prefetch": 1}, TypeError, "prefetch"),
        ({"compile": "yes"}, TypeError, "compile must be True or False"),
        ({"streams": 0}, ValueError, "streams must be a positive integer or 'auto'"),
        ({"streams": "two"}, ValueError, "streams"),
        ({"streams": True}, ValueError, "streams"),
        ({"compile": True, "precision": "qint8"}, ValueError, "compile=True does not apply"),
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


@pytest.mark.slow
def test_compile_matches_eager_and_is_cached(
    tiny_model_dir: Path, sentences: list[str], one_thread: None
) -> None:
    """encode(compile=True): the inductor-compiled transformer gives the eager embeddings
    (oracle: the same encoder without compile), in input order, for every batch shape (one
    dynamic graph); the compiled model is made once and reused; a weight change reaches it
    (no frozen weights)."""
    torch._dynamo.reset()
    enc = SentenceEncoder.from_pretrained(tiny_model_dir)
    texts = _texts(sentences)
    eager = enc.encode(texts, batch_size=3, precision="fp32")
    compiled = enc.encode(texts, batch_size=3, precision="fp32", compile=True)
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-5)
    first = enc.__dict__["_compiled_cache"][1]
    again = enc.encode(texts[::-1], batch_size=5, precision="fp32", compile=True)
    assert enc.__dict__["_compiled_cache"][1] is first
    np.testing.assert_allclose(again, eager[::-1], rtol=0, atol=1e-5)
    with torch.no_grad():  # negative control: new weights, new embeddings, no stale graph
        enc.model.get_input_embeddings().weight.mul_(-1.0)
    moved = enc.encode(texts, batch_size=3, precision="fp32")
    assert float(np.abs(moved - eager).max()) > 1e-3
    np.testing.assert_allclose(
        enc.encode(texts, batch_size=3, precision="fp32", compile=True), moved, rtol=0, atol=1e-5
    )


def test_cli_encode_max_tokens_default_auto_and_parsing(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``textcl encode`` encodes with ``max_tokens="auto"`` unless told (the encode loop's
    fast path), takes ``--max-tokens N|auto|none`` and ``--compile``, refuses other values."""
    from textcl import cli
    from textcl.commands.encode import max_tokens_arg
    from textcl.search.encode import EncodeOptions

    assert EncodeOptions().max_tokens == "auto"
    assert [max_tokens_arg(v) for v in ("auto", "None", " 512")] == ["auto", None, 512]
    for bad in ("0", "-3", "big", "2.5"):
        with pytest.raises(Exception, match="positive integer, auto or none"):
            max_tokens_arg(bad)
    seen: list[tuple[object, object]] = []
    real = SentenceEncoder.encode

    def spy(self: SentenceEncoder, texts: object, **kw: object) -> object:
        if list(texts)[:1] == ["a cat"]:  # type: ignore[call-overload]  # the corpus, not a probe
            seen.append((kw.get("max_tokens"), kw.get("compile")))
        return real(self, texts, **{k: v for k, v in kw.items() if k != "compile"})  # type: ignore[arg-type]

    monkeypatch.setattr(SentenceEncoder, "encode", spy)
    corpus = tmp_path / "c.txt"
    corpus.write_text("a cat\na dog sat\nthe end\n", encoding="utf-8")
    base = ["encode", "--model", str(tiny_model_dir), "--input", str(corpus), "--no-progress"]
    assert cli.main([*base, "--output", str(tmp_path / "a")]) == 0
    assert seen and set(seen) == {("auto", False)}
    seen.clear()
    argv = [*base, "--output", str(tmp_path / "b"), "--max-tokens", "none", "--compile"]
    assert cli.main(argv) == 0
    assert set(seen) == {(None, True)}
    with pytest.raises(SystemExit):
        cli.main([*base, "--output", str(tmp_path / "c"), "--max-tokens", "0"])


def test_resolve_streams_and_split_rows() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert inf.resolve_streams("auto", cpu, 2) == 2
    assert inf.resolve_streams("auto", cpu, 1) == 1
    assert inf.resolve_streams("auto", cuda, 8) == 1
    assert inf.resolve_streams(4, cpu, 2) == 2 and inf.resolve_streams(3, cuda, 8) == 1
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "attention_mask": torch.ones(5, 2)}
    parts = inf.split_rows(batch, 2)  # type: ignore[arg-type]
    assert [p["input_ids"].shape[0] for p in parts] == [2, 3] or [
        p["input_ids"].shape[0] for p in parts
    ] == [3, 2]
    torch.testing.assert_close(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert len(inf.split_rows(batch, 9)) == 5  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", ["mean", "cls", "prompt"])
def test_streams_give_the_one_stream_embeddings_and_restore_threads(
    tiny_model_dir: Path, sentences: list[str], pooling: str
) -> None:
    """streams=2 (2 threads of 1 torch thread each, per batch row slices) vs streams=1 (the
    oracle: the plain loop): same vectors in input order, torch's thread count restored;
    the stream threads did run the model (spy on the transformer)."""
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling=pooling)
    texts = _texts(sentences)
    where: set[str] = set()
    hook = enc.model.register_forward_pre_hook(
        lambda *_: where.add(threading.current_thread().name)
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = enc.encode(texts, batch_size=4, streams=1, precision="fp32")
        assert torch.get_num_threads() == 2
        assert not any(n.startswith("textcl-stream") for n in where)
        two = enc.encode(texts, batch_size=4, streams=2, precision="fp32")
        auto = enc.encode(texts, batch_size=4, precision="fp32")
        assert torch.get_num_threads() == 2
    finally:
        hook.remove()
        torch.set_num_threads(before)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-6)
    np.testing.assert_allclose(auto, one, rtol=0, atol=1e-6)
    streamed = any(n.startswith("textcl-stream") for n in where)
    assert streamed == (pooling != "prompt")  # prompt pooling runs one stream


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


def _thread_count_in_a_new_thread() -> int:
    seen: list[int] = []

    def probe() -> None:
        torch.ones(64, 64).add_(1)  # the first op takes torch's default count
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return seen[0]


def test_overlapping_streamed_encodes_leave_torch_threads_as_they_were(
    tiny_model_dir: Path, sentences: list[str]
) -> None:
    """Several threads encoding at once with streams=2 (a server's workers): every call
    lowers the count to 1 per stream while it runs. Before, each call saved and restored the
    count on its own, and an overlap left torch's default at 1: threads started afterwards
    ran on one core (a new thread saw 1). Now the last call out restores it."""
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean")
    enc.model.eval()
    texts = _texts(sentences)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _thread_count_in_a_new_thread() == 2
        ref = enc.encode(texts, batch_size=4, streams=1, precision="fp32")
        seen: list[int] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(6):
                    out = enc.encode(texts, batch_size=4, streams=2, precision="fp32")
                    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
                seen.append(torch.get_num_threads())
            except BaseException as e:  # handed to the test thread
                errors.append(e)

        workers = [threading.Thread(target=work) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors, errors
        assert seen == [2, 2, 2, 2]  # each worker thread's own count is back
        assert torch.get_num_threads() == 2
        assert _thread_count_in_a_new_thread() == 2  # and the default new threads take
    finally:
        torch.set_num_threads(before)
