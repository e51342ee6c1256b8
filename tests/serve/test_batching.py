"""Dynamic batching against a real uvicorn server (in a thread): concurrent requests merge
into shared encode calls and get their own rows back, the bounded queue answers 429, and
the official ``openai`` client gets ``SentenceEncoder.encode``'s vectors."""

from __future__ import annotations

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
from textcl.serve import ServeConfig, create_app
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
