"""``textcl serve`` as a real process: SIGTERM while requests are in flight answers them
all, refuses new connections and exits 0; CLI errors exit with their codes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import PROMPTS

REPO = Path(__file__).resolve().parents[2]


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTCL_CPU_BF16": "0"}
    env.pop("TEXTCL_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "textcl.cli", "serve", "--port", "0", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return proc, found.group(1)
    proc.wait(30)
    raise AssertionError("the server did not start:\n" + "".join(lines))


def _metrics(url: str, *names: str) -> list[float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return [float(re.search(rf"^{n} (\S+)$", text, re.M).group(1)) for n in names]  # type: ignore[union-attr]


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_exits_0(serve_model_dir: Path) -> None:
    # a small token budget: many small batches, so the requests stay in flight a while
    proc, url = _start("--model", str(serve_model_dir), "--max-batch-tokens", "24")
    try:
        n_req, per = 6, 80
        bodies = [
            {"inputs": [f"request {r} sentence {i} about a dog in the park" for i in range(per)]}
            for r in range(n_req)
        ]
        with ThreadPoolExecutor(n_req) as pool:
            futures = [pool.submit(httpx.post, url + "/embed", json=b, timeout=300) for b in bodies]
            deadline = time.monotonic() + 60
            while _metrics(url, "textcl_queue_inputs")[0] < per:  # some are in flight
                assert time.monotonic() < deadline, "the requests never queued"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):  # no new connections
                httpx.get(url + "/health", timeout=5)
            responses, refused = [], 0
            for f in futures:
                try:
                    responses.append(f.result())
                except httpx.ConnectError:  # sent after the signal: never accepted
                    refused += 1
        # every request the server had accepted is answered in full (at least the queued one)
        assert responses and len(responses) + refused == n_req
        assert [r.status_code for r in responses] == [200] * len(responses)
        assert all(len(r.json()) == per for r in responses)
        assert proc.wait(120) == 0
        assert proc.stderr is not None
        assert "textcl serve: stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_errors(serve_model_dir: Path, serve_index: Path, tiny_model_dir: Path) -> None:
    from textcl.cli import main

    assert main(["serve"]) == 2  # neither --model nor --index
    assert main(["serve", "--model", str(serve_model_dir), "--max-queue", "0"]) == 2
    assert (
        main(["serve", "--model", str(serve_model_dir), "--max-inputs", "9", "--max-queue", "8"])
        == 2
    )
    assert main(["serve", "--model", str(serve_model_dir), "--device", "gpu0"]) == 2
    # another model than the index's: refused at startup (exit 2), before serving
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = str(busy.getsockname()[1])
        assert main(["serve", "--model", str(serve_model_dir), "--port", port]) == 5  # port in use
    finally:
        busy.close()
    assert (
        main(["serve", "--model", str(tiny_model_dir), "--index", str(serve_index), "--port", "0"])
        == 2
    )
    assert set(PROMPTS) == {"query", "passage"}
