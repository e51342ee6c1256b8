"""Serving load: ``textcl serve`` (dynamic batching) against a naive FastAPI server and
in-process ``SentenceEncoder.encode``, at 1, 8, 32 and 128 concurrent clients.

Loopback only. Each client (an asyncio task with a shared ``httpx.AsyncClient``) sends
OpenAI ``/v1/embeddings`` requests (``encoding_format=base64``, as the ``openai`` client
does) of 1-16 Wikipedia sentences each (``corpus/wiki_sentences_11914.txt`` of the shared
data; sizes drawn with ``--seed``), one after another, until the level's requests are sent
(``--requests``, at least 2 per client) or ``--max-seconds`` passed (requests not sent by
then are reported, not hidden). Both servers run the same model (all-MiniLM-L6-v2, fp32)
in their own process:

* ``textcl serve`` (the real CLI, ``--port 0``): concurrent requests merged into shared
  encode calls (``--max-batch-tokens``);
* the naive server: a plain FastAPI ``def`` endpoint calling ``encoder.encode(texts)`` once
  per request (FastAPI runs it in its thread pool), as most hand-written servers do.

The in-process baseline encodes the level's sentences with one ``encode`` call
(``batch_size=64``) in this process. Reported per level: throughput (sentences/s), p50 and
p99 request latency, the textcl server's mean inputs and requests per merged batch (from its
``/metrics``), the ratios. Checks: every request answered exactly once with as many vectors
as inputs, each vector the in-process one (cosine >= 0.999), and the server's
``textcl_inputs_total`` grew by exactly the sentences answered (no input lost or encoded
twice).

Run::

    TEXTCL_CPU_BF16=0 nice .venv/bin/python -m benchmarks serve_load \\
        --json benchmarks/results/350_serve_load.json
    python -m benchmarks serve_load --levels 1,8 --requests 20   # a quick look

The clients run on the same machine as the servers (2 cores here): their CPU time counts
against both servers alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    CORPUS,
    add_common_args,
    benchmark_command,
    data_root,
    model_path,
    parser_for,
    repo_env,
    set_threads,
    write_result,
)

LISTENING = re.compile(r"listening on (http://\S+)")
LEVELS = (1, 8, 32, 128)


# ----------------------------------------------------------------------------- servers


def naive_server(model: str, threads: int) -> int:
    """Run the naive server (one encode call per request) on a free loopback port."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from textcl import SentenceEncoder
    from textcl.serve.server import bind_socket, run_server

    set_threads(threads)
    encoder = SentenceEncoder.from_pretrained(model)
    encoder.encode(["warm up"])
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embeddings(body: dict[str, Any]) -> JSONResponse:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = encoder.encode(texts, normalize=True)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode(),
            }
            for i, v in enumerate(vectors)
        ]
        return JSONResponse({"object": "list", "data": data, "model": body["model"]})

    sock = bind_socket("127.0.0.1", 0)
    print(
        f"naive server: listening on http://127.0.0.1:{sock.getsockname()[1]}",
        file=sys.stderr,
        flush=True,
    )
    run_server(app, sock)
    return 0


class Server:
    """A server subprocess; its URL read from the ``listening on`` line of its stderr."""

    def __init__(self, cmd: list[str], env: dict[str, str], timeout: float = 300) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        self.url = ""
        self.log: list[str] = []
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stderr:
            self.log.append(line)
            found = LISTENING.search(line)
            if found:
                self.url = found.group(1)
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.proc.kill()
            raise SystemExit("server did not start:\n" + "".join(self.log[-20:]))
        threading.Thread(target=self._drain, daemon=True).start()
        self._wait_ready()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def _wait_ready(self) -> None:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code in (200, 404):
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit(f"{self.url} never answered")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(url: str, name: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# ----------------------------------------------------------------------------- load


async def _load(
    url: str, model: str, requests: list[tuple[int, list[str]]], clients: int, max_seconds: float
) -> dict[str, Any]:
    import httpx

    queue: asyncio.Queue[tuple[int, list[str]]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    answers: Counter[int] = Counter()
    vectors: dict[int, np.ndarray] = {}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    not_sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        start = time.perf_counter()
        deadline = start + max_seconds

        async def worker() -> None:
            nonlocal not_sent
            while True:
                try:
                    rid, texts = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if time.perf_counter() > deadline:
                    not_sent += 1
                    continue
                t0 = time.perf_counter()
                body = {"model": model, "input": texts, "encoding_format": "base64"}
                try:
                    r = await client.post(url + "/v1/embeddings", json=body)
                except httpx.HTTPError as e:
                    errors[type(e).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors[str(r.status_code)] += 1
                    continue
                data = sorted(r.json()["data"], key=lambda d: d["index"])
                vectors[rid] = np.stack(
                    [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
                )
                answers[rid] += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return {
        "wall": wall,
        "answers": answers,
        "vectors": vectors,
        "latencies": latencies,
        "errors": dict(errors),
        "not_sent": not_sent,
    }


def run_level(
    server: Server,
    model: str,
    requests: list[tuple[int, list[str]]],
    clients: int,
    max_seconds: float,
    reference: np.ndarray,
    offsets: dict[int, int],
) -> dict[str, Any]:
    cpu0 = cpu_seconds(server.proc.pid)
    res = asyncio.run(_load(server.url, model, requests, clients, max_seconds))
    cpu = cpu_seconds(server.proc.pid) - cpu0
    answered = [rid for rid, n in res["answers"].items() if n >= 1]
    twice = sum(1 for n in res["answers"].values() if n > 1)
    sizes = {rid: len(texts) for rid, texts in requests}
    sentences = sum(sizes[rid] for rid in answered)
    wrong_shape = 0
    min_cos = 1.0
    for rid in answered:
        got = res["vectors"][rid]
        want = reference[offsets[rid] : offsets[rid] + sizes[rid]]
        if got.shape != want.shape:
            wrong_shape += 1
            continue
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        min_cos = min(min_cos, float(cos.min()))
    lat = np.asarray(res["latencies"]) * 1000
    sent = len(requests) - res["not_sent"]
    return {
        "clients": clients,
        "requests": len(requests),
        "sent": sent,
        "answered": len(answered),
        "lost": sent - len(answered),
        "answered_twice": twice,
        "wrong_shape": wrong_shape,
        "errors": res["errors"],
        "not_sent": res["not_sent"],
        "sentences": sentences,
        "wall_s": res["wall"],
        "throughput": sentences / res["wall"],
        "server_cpu_s": cpu,
        "per_cpu_second": sentences / cpu if cpu > 0 else None,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "min_cosine": min_cos,
    }


def plan_requests(
    sentences: list[str], n: int, rng: random.Random, start: int
) -> tuple[list[tuple[int, list[str]]], int]:
    """``n`` requests of 1-16 consecutive corpus sentences from ``start`` (wrapping)."""
    out = []
    pos = start
    for rid in range(n):
        k = rng.randint(1, 16)
        texts = [sentences[(pos + i) % len(sentences)] for i in range(k)]
        out.append((rid, texts))
        pos += k
    return out, pos


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = parser_for("serve_load", __doc__)
    add_common_args(parser, seed=0)
    parser.add_argument(
        "--levels", default=",".join(map(str, LEVELS)), help="concurrent clients per level"
    )
    parser.add_argument(
        "--requests", type=int, default=160, help="requests per level (at least 2 per client)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="time bound per level and server"
    )
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model = str(model_path(args.model))
    if args.naive_server:
        return naive_server(model, args.threads)

    from textcl import SentenceEncoder

    set_threads(args.threads)
    root = data_root(args.data, contains=CORPUS)
    corpus = [
        s.strip() for s in (root / CORPUS).read_text(encoding="utf-8").splitlines() if s.strip()
    ]
    levels = [int(x) for x in args.levels.split(",")]
    env = repo_env(TEXTCL_CPU_BF16=os.environ.get("TEXTCL_CPU_BF16", "0"))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    load_before = uptime()
    print(f"load before: {load_before}", flush=True)
    encoder = SentenceEncoder.from_pretrained(model)
    encoder.encode(corpus[:64])
    name = "minilm"
    textcl = Server(
        [
            sys.executable,
            "-m",
            "textcl.cli",
            "serve",
            "--model",
            model,
            "--served-model-name",
            name,
            "--port",
            "0",
            "--max-batch-tokens",
            str(args.max_batch_tokens),
            "--max-queue",
            "65536",
        ],
        env,
    )
    naive = Server(
        benchmark_command(
            "serve_load", "--naive-server", "--model", model, "--threads", str(args.threads)
        ),
        env,
    )
    rng = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    pos = 0
    try:
        for server in (textcl, naive):  # warm-up: connections, first batches
            asyncio.run(_load(server.url, name, plan_requests(corpus, 8, rng, 0)[0], 4, 60))
        for clients in levels:
            requests, pos = plan_requests(corpus, max(args.requests, 2 * clients), rng, pos)
            offsets: dict[int, int] = {}
            flat: list[str] = []
            for rid, texts in requests:
                offsets[rid] = len(flat)
                flat.extend(texts)
            t0, c0 = time.perf_counter(), time.process_time()
            reference = encoder.encode(flat, batch_size=64, normalize=True)
            inproc = len(flat) / (time.perf_counter() - t0)
            inproc_cpu = len(flat) / (time.process_time() - c0)
            before = {
                k: metric(textcl.url, k)
                for k in (
                    "textcl_inputs_total",
                    "textcl_batch_inputs_sum",
                    "textcl_batch_inputs_count",
                    "textcl_batch_requests_sum",
                )
            }
            ours = run_level(textcl, name, requests, clients, args.max_seconds, reference, offsets)
            after = {k: metric(textcl.url, k) for k in before}
            delta = {k: after[k] - before[k] for k in before}
            ours["server_inputs"] = delta["textcl_inputs_total"]
            ours["batches"] = delta["textcl_batch_inputs_count"]
            ours["mean_batch_inputs"] = delta["textcl_batch_inputs_sum"] / max(
                1.0, delta["textcl_batch_inputs_count"]
            )
            ours["mean_batch_requests"] = delta["textcl_batch_requests_sum"] / max(
                1.0, delta["textcl_batch_inputs_count"]
            )
            theirs = run_level(naive, name, requests, clients, args.max_seconds, reference, offsets)
            problems = [
                f"{who}: {what}"
                for who, r in (("textcl", ours), ("naive", theirs))
                for what, bad in (
                    (f"{r['lost']} lost", r["lost"]),
                    (f"{r['answered_twice']} answered twice", r["answered_twice"]),
                    (f"{r['wrong_shape']} wrong shapes", r["wrong_shape"]),
                    (f"errors {r['errors']}", r["errors"]),
                    (f"min cosine {r['min_cosine']:.5f}", r["min_cosine"] < 0.999),
                )
                if bad
            ]
            if ours["server_inputs"] != ours["sentences"]:
                problems.append(
                    f"textcl encoded {ours['server_inputs']:.0f} inputs for "
                    f"{ours['sentences']} sentences"
                )
            ok = not problems
            if problems:
                print(f"{clients} clients: checks failed: {problems}", flush=True)
            row = {
                "clients": clients,
                "requests": f"{ours['answered']}/{len(requests)}",
                "sentences": ours["sentences"],
                "in-process sent/s": inproc,
                "textcl sent/s": ours["throughput"],
                "textcl p50 ms": ours["p50_ms"],
                "textcl p99 ms": ours["p99_ms"],
                "inputs/batch": ours["mean_batch_inputs"],
                "requests/batch": ours["mean_batch_requests"],
                "naive sent/s": theirs["throughput"],
                "naive p50 ms": theirs["p50_ms"],
                "naive p99 ms": theirs["p99_ms"],
                "textcl / in-process": f"{ours['throughput'] / inproc:.2f}x",
                "textcl / naive": f"{ours['throughput'] / theirs['throughput']:.2f}x",
                "sent/CPU-s in-process": inproc_cpu,
                "sent/CPU-s textcl": ours["per_cpu_second"],
                "sent/CPU-s naive": theirs["per_cpu_second"],
                "checks": "ok" if ok else "FAILED",
            }
            rows.append(row)
            raw.append(
                {
                    "clients": clients,
                    "in_process": inproc,
                    "in_process_per_cpu_second": inproc_cpu,
                    "textcl": ours,
                    "naive": theirs,
                }
            )
            print(
                {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()},
                flush=True,
            )
    finally:
        codes = (textcl.stop(), naive.stop())
    load_after = uptime()
    print(f"load after: {load_after}; server exit codes {codes}")
    failed = [r["clients"] for r in rows if r["checks"] != "ok"]
    notes = [
        f"Load: before `{load_before}`; after `{load_after}` (2-core box shared with other jobs: "
        "absolute rates move with the load, the ratios less).",
        "Checks per level: every request answered exactly once with its own vectors (cosine >= "
        "0.999 to in-process encode), no HTTP error, and the textcl server's `textcl_inputs_total` "
        "grew by exactly the sentences answered.",
        f"Server exit codes after SIGTERM: textcl {codes[0]}, naive {codes[1]}.",
        "sent/CPU-s: sentences per CPU-second of the serving process (user + system, all "
        "threads, from /proc; in-process: `time.process_time` around `encode`): the work "
        "each approach spends per sentence, which the load of other jobs does not change "
        "the way it changes wall-clock rates. On an oversubscribed box a server with many "
        "busy threads (the naive one: one encode per request in FastAPI's thread pool) gets "
        "a larger share of the CPU than one worker thread, so wall-clock ratios there "
        "measure the scheduler as much as the server.",
    ]
    write_result(
        "serve_load",
        rows,
        args.json,
        section="Serving (textcl serve, issue 23)",
        title="Load: dynamic batching vs a naive server vs in-process encode",
        notes=notes,
        data={"levels": raw, "max_batch_tokens": args.max_batch_tokens, "seed": args.seed},
    )
    if failed:
        print(f"checks FAILED at levels {failed}", file=sys.stderr)
        return 1
    return 0
