"""The load generator of ``benchmarks/serve_load.py``: its lean HTTP/1.1 client against a real
server, and the checks that flag lost, duplicated, misordered or wrong answers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks.serve_load import _load, check_answers, read_response, request_bytes
from textcl import SentenceEncoder
from textcl.serve import ServeConfig, create_app
from textcl.serve.server import ServerThread


def _answer(vectors: np.ndarray, fmt: str, order: list[int] | None = None) -> bytes:
    rows = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
            if fmt == "base64"
            else v.tolist(),
        }
        for i, v in enumerate(vectors)
    ]
    if order is not None:
        rows = [rows[i] for i in order]
    return json.dumps({"object": "list", "data": rows}).encode()


def test_check_answers_counts_every_fault() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(10, 6)).astype(np.float32)
    sizes = {0: 2, 1: 3, 2: 1, 3: 4}
    offsets = {0: 0, 1: 2, 2: 5, 3: 6}
    good = [
        (rid, 200, _answer(reference[o : o + sizes[rid]], "base64")) for rid, o in offsets.items()
    ]
    errors: Counter[str] = Counter()
    ok = check_answers(good, sizes, reference, offsets, errors)
    assert ok == {
        "answered": 4,
        "answered_twice": 0,
        "wrong": 0,
        "min_cosine": ok["min_cosine"],
        "sentences": 10,
    }
    assert ok["min_cosine"] > 0.99999 and not errors
    floats = [(1, 200, _answer(reference[2:5], "float"))]
    assert check_answers(floats, sizes, reference, offsets, Counter())["wrong"] == 0
    # negative controls: a duplicate, a misordered answer, another request's rows, a 500
    bad = [
        good[0],
        good[0],
        (1, 200, _answer(reference[2:5], "base64", order=[1, 0, 2])),
        (2, 200, _answer(reference[0:1], "base64")),
        (3, 500, b'{"error": "x"}'),
    ]
    errors = Counter()
    res = check_answers(bad, sizes, reference, offsets, errors)
    assert res["answered_twice"] == 1 and res["wrong"] == 1 and res["answered"] == 3
    assert res["min_cosine"] < 0.9 and errors == Counter({"500": 1})


def test_read_response_needs_a_content_length() -> None:
    async def parse(raw: bytes) -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_response(reader)

    ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    assert asyncio.run(parse(ok)) == (200, b"{}")
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    with pytest.raises(ValueError, match="Content-Length"):
        asyncio.run(parse(chunked))
    raw = request_bytes("127.0.0.1", 80, "m", ["a", "é"], "base64")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"model": "m", "input": ["a", "é"], "encoding_format": "base64"}


def test_lean_client_against_a_server(serve_model_dir: Path, encoder: SentenceEncoder) -> None:
    """8 requests over 3 keep-alive connections: each answered once with its own vectors."""
    app = create_app(
        SentenceEncoder.from_pretrained(serve_model_dir), config=ServeConfig(model_name="tiny")
    )
    requests = [
        (rid, [f"request {rid} sentence {i}" for i in range(1 + rid % 4)]) for rid in range(8)
    ]
    flat = [t for _, texts in requests for t in texts]
    reference = encoder.encode(flat, normalize=True)
    offsets, n = {}, 0
    for rid, texts in requests:
        offsets[rid] = n
        n += len(texts)
    sizes = {rid: len(texts) for rid, texts in requests}
    with ServerThread(app) as server:
        for fmt in ("base64", "float"):
            bodies = [
                (rid, request_bytes(server.host, server.port, "tiny", t, fmt))
                for rid, t in requests
            ]
            res = asyncio.run(_load(server.url, bodies, 3, 60))
            errors: Counter[str] = res["errors"]
            checked = check_answers(res["answers"], sizes, reference, offsets, errors)
            assert not errors and res["not_sent"] == 0 and len(res["latencies"]) == 8
            assert checked["answered"] == 8 and checked["answered_twice"] == 0
            assert checked["wrong"] == 0 and checked["min_cosine"] > 0.9999
            assert checked["sentences"] == len(flat)
