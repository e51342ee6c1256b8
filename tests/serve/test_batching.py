"""Dynamic batching against a real uvicorn server (in a thread): concurrent requests merge
into shared encode calls and get their own rows back, the bounded queue answers 429, and
the official ``openai`` client gets ``SentenceEncoder.encode``'s vectors."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from textcl import SentenceEncoder
from textcl.errors import InputError
from textcl.inference import CPU_MAX_TOKENS
from textcl.serve import ServeConfig, create_app
from textcl.serve.batcher import Batcher, forward_batch_size
from textcl.serve.server import ServerThread

WORDS = [
    "dog",
    "cat",
    "park",
    "guitar",
    "sky",
    "blue",
    "man",
    "woman",
    "plays",
    "runs",
    "the",
    "a",
    "in",
    "on",
]


def _texts(request: int, n: int) -> list[str]:
    """Distinct sentences per request and row (so a row handed to the wrong request shows)."""
    return [
        f"{WORDS[request % len(WORDS)]} {WORDS[(request + i) % len(WORDS)]} number {request} {i}"
        for i in range(n)
    ]


class Gate:
    """Holds the batcher's worker before its next batch until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str]) -> None:
        self.batches.append(list(texts))
        self.entered.set()
        assert self.release.wait(30), "the test never released the worker"


def _serve(model_dir: Path, gate: Gate | None = None, **config: Any) -> tuple[ServerThread, Any]:
    enc = SentenceEncoder.from_pretrained(model_dir)
    app = create_app(enc, config=ServeConfig(model_name="tiny", **config))
    state = app.state.textcl
    if gate is not None:
        state.batcher.before_batch = gate
    return ServerThread(app).start(), state


def _wait_queued(state: Any, n: int) -> None:
    deadline = time.monotonic() + 30
    while state.batcher.queued < n:
        assert time.monotonic() < deadline, f"only {state.batcher.queued} of {n} inputs queued"
        time.sleep(0.005)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as ex:
        yield ex


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60)


def test_concurrent_requests_share_batches(
    serve_model_dir: Path, encoder: SentenceEncoder, pool: ThreadPoolExecutor
) -> None:
    gate = Gate()
    server, state = _serve(serve_model_dir, gate)
    try:
        first = pool.submit(_post, server.url, "/embed", {"inputs": _texts(0, 1)})
        assert gate.entered.wait(30)  # the worker holds request 0's batch
        n_req = 8
        sizes = [1 + (r % 4) for r in range(1, n_req + 1)]
        futures = [
            pool.submit(_post, server.url, "/embed", {"inputs": _texts(r, sizes[r - 1])})
            for r in range(1, n_req + 1)
        ]
        _wait_queued(state, sum(sizes))
        gate.release.set()
        assert first.result().status_code == 200
        for r, fut in enumerate(futures, start=1):
            resp = fut.result()
            assert resp.status_code == 200
            want = encoder.encode(_texts(r, sizes[r - 1]), normalize=True)
            np.testing.assert_allclose(resp.json(), want, atol=1e-5)  # own rows, in order
        # the batch after the held one holds every waiting request's inputs
        assert len(gate.batches) == 2
        assert sorted(gate.batches[1]) == sorted(
            t for r in range(1, n_req + 1) for t in _texts(r, sizes[r - 1])
        )
        assert [b.requests for b in state.batcher.history] == [1, n_req]
        metrics = httpx.get(server.url + "/metrics").text
        assert 'textcl_batch_requests_bucket{le="4.0"} 1.0' in metrics  # one batch of 1 request
        assert 'textcl_batch_requests_bucket{le="8.0"} 2.0' in metrics  # the other of 8
        assert "textcl_batch_requests_count 2.0" in metrics
    finally:
        gate.release.set()
        server.stop()


def test_token_budget_splits_batches(
    serve_model_dir: Path, encoder: SentenceEncoder, pool: ThreadPoolExecutor
) -> None:
    """Negative control: a budget of one input's tokens gives one input per batch."""
    gate = Gate()
    budget = len(encoder.tokenizer("a dog runs")["input_ids"])
    server, state = _serve(serve_model_dir, gate, max_batch_tokens=budget)
    try:
        first = pool.submit(_post, server.url, "/embed", {"inputs": ["dog"]})
        assert gate.entered.wait(30)
        futures = [
            pool.submit(_post, server.url, "/embed", {"inputs": ["a dog runs"]}) for _ in range(4)
        ]
        _wait_queued(state, 4)
        gate.release.set()
        assert all(f.result().status_code == 200 for f in [first, *futures])
        assert [len(b) for b in gate.batches] == [1, 1, 1, 1, 1]
        assert max(b.tokens for b in state.batcher.history) == budget
    finally:
        gate.release.set()
        server.stop()


def test_full_queue_answers_429(serve_model_dir: Path, pool: ThreadPoolExecutor) -> None:
    gate = Gate()
    server, state = _serve(serve_model_dir, gate, max_queue=4, max_inputs=3)
    try:
        held = pool.submit(_post, server.url, "/embed", {"inputs": ["held"]})
        assert gate.entered.wait(30)
        waiting = [
            pool.submit(_post, server.url, "/embed", {"inputs": ["a", "b"]}) for _ in range(2)
        ]
        _wait_queued(state, 4)  # the queue is full
        r = _post(server.url, "/embed", {"inputs": ["one more"]})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error_type"] == "Overloaded"
        r = _post(server.url, "/v1/embeddings", {"model": "tiny", "input": "x"})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        gate.release.set()
        assert held.result().status_code == 200
        assert all(f.result().status_code == 200 for f in waiting)
        # room again: accepted
        assert _post(server.url, "/embed", {"inputs": ["one more"]}).status_code == 200
        assert "textcl_rejected_total 2.0" in httpx.get(server.url + "/metrics").text
    finally:
        gate.release.set()
        server.stop()


def test_openai_client(serve_model_dir: Path, encoder: SentenceEncoder) -> None:
    openai = pytest.importorskip("openai")
    server, _ = _serve(serve_model_dir, api_key="k3y")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="k3y", max_retries=0)
        texts = _texts(3, 5)
        resp = client.embeddings.create(model="tiny", input=texts)  # the client asks base64
        got = np.asarray([d.embedding for d in resp.data])
        want = encoder.encode(texts, normalize=True)
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() >= 0.9999
        assert resp.usage.prompt_tokens == sum(
            len(x) for x in encoder.tokenizer(texts)["input_ids"]
        )
        floats = client.embeddings.create(model="tiny", input=texts[0], encoding_format="float")
        np.testing.assert_allclose(floats.data[0].embedding, want[0], atol=1e-5)
        short = client.embeddings.create(model="tiny", input=texts, dimensions=8)
        assert len(short.data[0].embedding) == 8
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=server.url + "/v1", api_key="wrong", max_retries=0
            ).embeddings.create(model="tiny", input="x")
        with pytest.raises(openai.NotFoundError, match=r"model_not_found|does not exist"):
            client.embeddings.create(model="text-embedding-3-small", input="x")
    finally:
        server.stop()


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_forward_batch_size_is_the_fewest_even_passes(batch_size: int) -> None:
    for n in range(1, 300):
        # oracle (brute force): the fewest passes, then the smallest largest pass
        want = min(range(1, batch_size + 1), key=lambda s: (-(-n // s), s))
        size = forward_batch_size(n, batch_size)
        assert size == want
        passes = -(-n // size)
        assert n - (passes - 1) * size >= max(1, size - passes + 1)  # the last pass is not small
    assert forward_batch_size(133, 64) == 45  # 45 + 45 + 43, not 64 + 64 + 5
    assert forward_batch_size(64, 64) == 64 and forward_batch_size(65, 64) == 33


class RecordingEncoder:
    """A real encoder whose ``encode`` calls are recorded (the batcher's only use of it)."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        self.inner = encoder
        self.full_embedding_dim = encoder.full_embedding_dim
        self.calls: list[dict[str, Any]] = []

    def encode(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        self.calls.append({"n": len(texts), **kwargs})
        return self.inner.encode(texts, **kwargs)


def test_merged_batch_runs_even_forward_passes(encoder: SentenceEncoder) -> None:
    """The worker's encode call gets the even pass size and the forward token budget, and
    every request still gets its own rows (oracle: encode of each request alone)."""
    rec = RecordingEncoder(encoder)
    gate = Gate()
    batcher = Batcher(rec, max_batch_tokens=10_000, batch_size=4, max_forward_tokens=77)
    batcher.before_batch = gate
    sizes = [1, 3, 2, 3]  # 1 held, then 8 inputs merged: two passes of 4 (not 4 + 4)

    async def run() -> list[np.ndarray]:
        batcher.start()
        first = batcher.submit(_texts(0, 1), [5])
        await asyncio.to_thread(gate.entered.wait, 30)
        rest = [batcher.submit(_texts(r, n), [5] * n) for r, n in enumerate(sizes[1:], 1)]
        gate.release.set()
        return [await f for f in [first, *rest]]

    try:
        results = asyncio.run(run())
    finally:
        gate.release.set()
        batcher.close()
    assert [c["n"] for c in rec.calls] == [1, 8]
    assert [c["batch_size"] for c in rec.calls] == [1, 4]
    assert all(c["max_tokens"] == 77 for c in rec.calls)
    for r, (n, got) in enumerate(zip(sizes, results, strict=True)):
        want = encoder.encode(_texts(r, n), normalize=False)
        np.testing.assert_allclose(got, want, atol=1e-5)
    # 9 inputs at batch_size 4: 3 + 3 + 3
    assert forward_batch_size(9, 4) == 3


def test_forward_token_budget_config(serve_model_dir: Path) -> None:
    enc = SentenceEncoder.from_pretrained(serve_model_dir)
    app = create_app(enc, config=ServeConfig(model_name="tiny"))
    state = app.state.textcl
    assert state.forward_tokens == CPU_MAX_TOKENS == state.batcher.max_forward_tokens
    assert state.info()["limits"]["max_forward_tokens"] == CPU_MAX_TOKENS
    small = create_app(enc, config=ServeConfig(model_name="tiny", max_batch_tokens=100))
    assert small.state.textcl.forward_tokens == 100  # never more than a merged batch
    given = create_app(enc, config=ServeConfig(model_name="tiny", max_forward_tokens=512))
    assert given.state.textcl.batcher.max_forward_tokens == 512
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InputError, match="max-forward-tokens"):
            ServeConfig(max_forward_tokens=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("wait", [0.0, 0.6])
def test_batch_wait_lets_answered_requests_rejoin(encoder: SentenceEncoder, wait: float) -> None:
    """After a batch, requests arriving within ``batch_wait`` share the next batch; without
    the wait (negative control) the first of them goes alone. An idle batcher never waits."""
    rec = RecordingEncoder(encoder)
    batcher = Batcher(rec, batch_wait=wait)

    async def run() -> float:
        batcher.start()
        t0 = time.monotonic()
        await batcher.submit(["first"], [3])  # idle: no wait before it
        idle_latency = time.monotonic() - t0
        second = batcher.submit(["second"], [3])  # right after the batch ended
        await asyncio.sleep(0.15)
        third = batcher.submit(["third", "fourth"], [3, 3])
        await second
        await third
        return idle_latency

    try:
        idle_latency = asyncio.run(run())
    finally:
        batcher.close()
    assert idle_latency < 0.5
    if wait:
        assert [c["n"] for c in rec.calls] == [1, 3]
    else:
        assert [c["n"] for c in rec.calls] == [1, 1, 2]


def test_batch_wait_ends_when_a_batch_is_full(encoder: SentenceEncoder) -> None:
    rec = RecordingEncoder(encoder)
    batcher = Batcher(rec, batch_wait=30.0, max_batch_tokens=6)

    async def run() -> float:
        batcher.start()
        await batcher.submit(["first"], [3])
        t0 = time.monotonic()
        await batcher.submit(["a", "b"], [3, 3])  # a full batch: taken at once
        return time.monotonic() - t0

    try:
        assert asyncio.run(run()) < 10
    finally:
        batcher.close()
    assert [c["n"] for c in rec.calls] == [1, 2]
    with pytest.raises(InputError, match="batch-wait-ms"):
        ServeConfig(batch_wait_ms=-1)
