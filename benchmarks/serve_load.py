"""Serving load: ``textcl serve`` (dynamic batching) against a naive FastAPI server and
in-process ``SentenceEncoder.encode``, at 1, 8, 32 and 128 concurrent clients.

Loopback only. Each client is one keep-alive HTTP/1.1 connection (asyncio streams; the
request bytes are built before the clock starts and the answers parsed after it stops, so the
load generator costs little CPU, which is measured and reported) sending OpenAI
``/v1/embeddings`` requests (``encoding_format=base64``, what the ``openai`` client sends by
default; ``--float-levels`` repeats levels with ``float``) of 1-16 Wikipedia sentences each
(``corpus/wiki_sentences_11914.txt`` of the shared data; sizes drawn with ``--seed``), one
after another, until the level's requests are sent (``--requests``, at least 2 per client)
or ``--max-seconds`` passed (requests not sent by then are reported, not hidden). Both
servers run the same model (all-MiniLM-L6-v2, fp32) in their own process:

* ``textcl serve`` (the real CLI, ``--port 0``): concurrent requests merged into shared
  encode calls (``--max-batch-tokens``);
* the naive server: a plain FastAPI ``def`` endpoint calling ``encoder.encode(texts)`` once
  per request (FastAPI runs it in its thread pool), as most hand-written servers do.

The in-process baseline encodes the level's sentences with one ``encode`` call
(``batch_size=64``) in this process; at ``--ceiling-level`` the same requests are also
encoded one call per request (the naive server's work without HTTP): the ratio of the two
bounds what batching can gain over the naive server on this CPU (second table). Reported per
level: throughput (sentences/s), p50 and p99 request latency, the textcl server's mean
inputs and requests per merged batch (from its ``/metrics``), the ratios, and the CPU
accounting: sentences per CPU-second of each server (and in-process), the share of the
textcl server's CPU on its event-loop thread, and the load generator's own CPU seconds.
Checks: every request answered exactly once with one vector per input (``index`` 0..n-1 in
order), each the in-process one (cosine >= 0.999), and the server's ``textcl_inputs_total``
grew by exactly the sentences answered (no input lost or encoded twice).

Run::

    TEXTCL_CPU_BF16=0 nice .venv/bin/python -m benchmarks serve_load \\
        --json benchmarks/results/392_serve_load.json
    python -m benchmarks serve_load --levels 1,8 --requests 20   # a quick look

The clients run on the same machine as the servers (2 cores here): their (small, reported)
CPU time counts against both servers alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, deque
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
    table,
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


def metric(url: str, name: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# ----------------------------------------------------------------------------- load


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of process ``pid``: its main thread (the event loop of a
    uvicorn server) and everything else (the model: batcher, torch, prefetch threads; the
    process total counts threads that have ended, ``/proc/PID/task`` would miss them)."""
    total = _stat_cpu(Path(f"/proc/{pid}/stat"))
    main = _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))
    return main, total - main


def request_bytes(
    host: str, port: int, model: str, texts: list[str], encoding_format: str
) -> bytes:
    """One complete HTTP/1.1 keep-alive POST of ``/v1/embeddings`` (built before the clock
    starts, so the load generator only writes bytes and reads answers)."""
    body = json.dumps({"model": model, "input": texts, "encoding_format": encoding_format})
    raw = body.encode()
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a ``Content-Length`` (what uvicorn
    sends for these JSON answers); anything else raises ``ValueError``."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ValueError(f"response without Content-Length: {head[:200]!r}")
    return status, await reader.readexactly(length)


async def _load(
    url: str, bodies: list[tuple[int, bytes]], clients: int, max_seconds: float
) -> dict[str, Any]:
    """``clients`` keep-alive connections, each sending the next pre-built request as soon
    as its previous answer is in; the answers are kept as bytes and checked afterwards."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    todo = deque(bodies)
    answers: list[tuple[int, int, bytes]] = []
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    not_sent = 0
    start = time.perf_counter()
    deadline = start + max_seconds

    async def client() -> None:
        nonlocal not_sent
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while todo:
                rid, raw = todo.popleft()
                if time.perf_counter() > deadline:
                    not_sent += 1
                    continue
                t0 = time.perf_counter()
                writer.write(raw)
                try:
                    status, body = await read_response(reader)
                except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                    errors[type(e).__name__] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                latencies.append(time.perf_counter() - t0)
                answers.append((rid, status, body))
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return {
        "wall": time.perf_counter() - start,
        "answers": answers,
        "latencies": latencies,
        "errors": errors,
        "not_sent": not_sent,
    }


def check_answers(
    answers: list[tuple[int, int, bytes]],
    sizes: dict[int, int],
    reference: np.ndarray,
    offsets: dict[int, int],
    errors: Counter[str],
) -> dict[str, Any]:
    """Every answer parsed after the timed window: status 200, one embedding per input with
    ``index`` 0..n-1 in order, each the in-process vector (cosine); requests answered twice
    counted."""
    seen: Counter[int] = Counter()
    wrong = 0
    min_cos = 1.0
    for rid, status, body in answers:
        seen[rid] += 1
        if status != 200:
            errors[str(status)] += 1
            continue
        data = json.loads(body)["data"]
        if [d["index"] for d in data] != list(range(sizes[rid])):
            wrong += 1
            continue
        got = np.stack(
            [
                np.frombuffer(base64.b64decode(e), dtype="<f4")
                if isinstance(e := d["embedding"], str)
                else np.asarray(e, dtype=np.float32)
                for d in data
            ]
        )
        want = reference[offsets[rid] : offsets[rid] + sizes[rid]]
        if got.shape != want.shape:
            wrong += 1
            continue
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        min_cos = min(min_cos, float(cos.min()))
    ok = [rid for rid, status, _ in answers if status == 200]
    return {
        "answered": len(set(ok)),
        "answered_twice": sum(1 for n in seen.values() if n > 1),
        "wrong": wrong,
        "min_cosine": min_cos,
        "sentences": sum(sizes[rid] for rid in set(ok)),
    }


def run_level(
    server: Server,
    model: str,
    requests: list[tuple[int, list[str]]],
    clients: int,
    max_seconds: float,
    reference: np.ndarray,
    offsets: dict[int, int],
    encoding_format: str = "base64",
) -> dict[str, Any]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    bodies = [
        (rid, request_bytes(host, int(port), model, texts, encoding_format))
        for rid, texts in requests
    ]
    main0, other0 = thread_cpu(server.proc.pid)
    client0 = time.process_time()
    res = asyncio.run(_load(server.url, bodies, clients, max_seconds))
    client_cpu = time.process_time() - client0
    main1, other1 = thread_cpu(server.proc.pid)
    sizes = {rid: len(texts) for rid, texts in requests}
    errors: Counter[str] = res["errors"]
    checked = check_answers(res["answers"], sizes, reference, offsets, errors)
    cpu = (main1 - main0) + (other1 - other0)
    sentences = checked["sentences"]
    lat = np.asarray(res["latencies"]) * 1000
    sent = len(requests) - res["not_sent"]
    return {
        "clients": clients,
        "encoding_format": encoding_format,
        "requests": len(requests),
        "sent": sent,
        "answered": checked["answered"],
        "lost": sent - checked["answered"],
        "answered_twice": checked["answered_twice"],
        "wrong_shape": checked["wrong"],
        "errors": dict(errors),
        "not_sent": res["not_sent"],
        "sentences": sentences,
        "wall_s": res["wall"],
        "throughput": sentences / res["wall"],
        "server_cpu_s": cpu,
        "server_loop_cpu_s": main1 - main0,
        "server_model_cpu_s": other1 - other0,
        "client_cpu_s": client_cpu,
        "per_cpu_second": sentences / cpu if cpu > 0 else None,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "min_cosine": checked["min_cosine"],
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


def offsets_of(requests: list[tuple[int, list[str]]]) -> dict[int, int]:
    """Where each request's rows start in the flat list of all its sentences."""
    offsets: dict[int, int] = {}
    n = 0
    for rid, texts in requests:
        offsets[rid] = n
        n += len(texts)
    return offsets


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def in_process(
    encoder: Any, requests: list[tuple[int, list[str]]], per_request: bool
) -> tuple[np.ndarray | None, float, float]:
    """In-process ``encode`` of the requests' sentences: all in one call (``batch_size=64``,
    ``max_tokens="auto"``), or one call per request (the naive server's work without HTTP).
    Returns the normalised vectors (all at once), sentences/s and sentences/CPU-s."""
    flat = [t for _, texts in requests for t in texts]
    t0, c0 = time.perf_counter(), time.process_time()
    if per_request:
        for _, texts in requests:
            encoder.encode(texts, normalize=True)
        vectors = None
    else:
        vectors = encoder.encode(flat, batch_size=64, normalize=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return vectors, len(flat) / wall, len(flat) / cpu


def in_process_batches(
    encoder: Any, requests: list[tuple[int, list[str]]], batch_inputs: float
) -> float:
    """Sentences per CPU-second of in-process ``encode`` over the requests cut, in arrival
    order, into merged batches of about ``batch_inputs`` sentences run as the server runs
    them (even passes, the CPU token budget): the cost of the server's batch shapes alone,
    without HTTP, threads or the load generator."""
    from textcl.serve.batcher import forward_batch_size  # lazy: the serve extra

    flat = [t for _, texts in requests for t in texts]
    size = max(1, round(batch_inputs))
    c0 = time.process_time()
    for start in range(0, len(flat), size):
        chunk = flat[start : start + size]
        encoder.encode(chunk, batch_size=forward_batch_size(len(chunk), 64), normalize=False)
    return len(flat) / (time.process_time() - c0)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


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
    parser.add_argument(
        "--float-levels",
        default="32",
        help="levels where textcl serve also answers encoding_format=float (default 32; "
        "'' for none)",
    )
    parser.add_argument(
        "--ceiling-level",
        type=int,
        default=32,
        help="level whose requests are also encoded in-process one call per request (the "
        "naive server's ceiling; 0: skip)",
    )
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
    float_levels = {int(x) for x in args.float_levels.split(",") if x.strip()}
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
    ceiling: dict[str, Any] | None = None
    pos = 0
    try:
        warm, _ = plan_requests(corpus, 8, rng, 0)
        warm_ref, _, _ = in_process(encoder, warm, per_request=False)
        assert warm_ref is not None
        for server in (textcl, naive):  # warm-up: connections, first batches
            run_level(server, name, warm, 4, 60, warm_ref, offsets_of(warm))
        for clients in levels:
            requests, pos = plan_requests(corpus, max(args.requests, 2 * clients), rng, pos)
            offsets = offsets_of(requests)
            n = sum(len(texts) for _, texts in requests)
            reference, inproc, inproc_cpu = in_process(encoder, requests, per_request=False)
            assert reference is not None
            if clients == args.ceiling_level:
                _, per_req, per_req_cpu = in_process(encoder, requests, per_request=True)
                ceiling = {
                    "clients": clients,
                    "sentences": n,
                    "all_at_once": inproc,
                    "all_at_once_per_cpu_second": inproc_cpu,
                    "per_request": per_req,
                    "per_request_per_cpu_second": per_req_cpu,
                }
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
            shaped = in_process_batches(encoder, requests, ours["mean_batch_inputs"])
            theirs = run_level(naive, name, requests, clients, args.max_seconds, reference, offsets)
            floats = None
            if clients in float_levels:
                floats = run_level(
                    textcl, name, requests, clients, args.max_seconds, reference, offsets, "float"
                )
            problems = [
                f"{who}: {what}"
                for who, r in (("textcl", ours), ("naive", theirs), ("textcl float", floats))
                if r is not None
                for what, bad in (
                    (f"{r['lost']} lost", r["lost"]),
                    (f"{r['answered_twice']} answered twice", r["answered_twice"]),
                    (f"{r['wrong_shape']} wrong shapes or indexes", r["wrong_shape"]),
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
                "textcl / in-process": _ratio(ours["throughput"], inproc),
                "textcl / naive": _ratio(ours["throughput"], theirs["throughput"]),
                "sent/CPU-s in-process": inproc_cpu,
                "sent/CPU-s in-process, textcl's batch sizes": shaped,
                "sent/CPU-s textcl": ours["per_cpu_second"],
                "sent/CPU-s naive": theirs["per_cpu_second"],
                "textcl loop CPU %": 100 * ours["server_loop_cpu_s"] / ours["server_cpu_s"],
                "client CPU-s (textcl, naive)": (
                    f"{ours['client_cpu_s']:.2f}, {theirs['client_cpu_s']:.2f}"
                ),
                "float: textcl sent/s": floats["throughput"] if floats else None,
                "float: sent/CPU-s": floats["per_cpu_second"] if floats else None,
                "checks": "ok" if ok else "FAILED",
            }
            rows.append(row)
            raw.append(
                {
                    "clients": clients,
                    "in_process": inproc,
                    "in_process_per_cpu_second": inproc_cpu,
                    "in_process_server_batches_per_cpu_second": shaped,
                    "textcl": ours,
                    "naive": theirs,
                    "textcl_float": floats,
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
    tables = []
    if ceiling is not None:
        tables.append(
            table(
                [
                    {
                        "clients (requests of)": ceiling["clients"],
                        "sentences": ceiling["sentences"],
                        "all at once sent/s": ceiling["all_at_once"],
                        "one call per request sent/s": ceiling["per_request"],
                        "ceiling (wall)": _ratio(ceiling["all_at_once"], ceiling["per_request"]),
                        "all at once sent/CPU-s": ceiling["all_at_once_per_cpu_second"],
                        "one call per request sent/CPU-s": ceiling["per_request_per_cpu_second"],
                        "ceiling (CPU)": _ratio(
                            ceiling["all_at_once_per_cpu_second"],
                            ceiling["per_request_per_cpu_second"],
                        ),
                        "target": "3x",
                    }
                ],
                notes=[
                    "The naive server's ceiling: in-process encode of one level's requests "
                    "with one call per request (1-16 sentences each, what the naive server "
                    "runs per request, without HTTP) against one call for all of them. No "
                    "batching server can beat the naive one by more than this on this CPU "
                    "(its batches are at best the all-at-once ones), unless the naive server "
                    "also loses to its own thread pool."
                ],
            )
        )
    notes = [
        f"Load: before `{load_before}`; after `{load_after}` (2-core box shared with other jobs: "
        "absolute rates move with the load, the ratios less).",
        "Load generator: one keep-alive HTTP/1.1 connection per client (asyncio streams), "
        "request bytes built before the clock starts, answers kept as bytes and parsed only "
        "after the timed window; its own CPU time is the `client CPU-s` column.",
        "Checks per level: every request answered exactly once with its own vectors (indexes "
        "0..n-1 in order, cosine >= 0.999 to in-process encode), no HTTP error, and the "
        "textcl server's `textcl_inputs_total` grew by exactly the sentences answered.",
        f"Server exit codes after SIGTERM: textcl {codes[0]}, naive {codes[1]}.",
        "sent/CPU-s: sentences per CPU-second of the serving process (user + system, all "
        "threads, from /proc; in-process: `time.process_time` around `encode`). `textcl loop "
        "CPU %`: the share of the server's CPU spent on its main thread (the event loop: HTTP, "
        "validation, tokenizing for the usage count, JSON); the rest is the model (batcher, "
        "torch and prefetch threads). `sent/CPU-s in-process, textcl's batch sizes`: "
        "in-process encode of the same sentences cut, in request order, into merged batches "
        "of the level's mean `inputs/batch`, run as the server runs them: what the batch "
        "shapes alone cost, without HTTP or threads.",
        "Requests use `encoding_format=base64`, what the official openai client sends by "
        "default; the float columns repeat the level with `encoding_format=float` (textcl "
        "only).",
    ]
    write_result(
        "serve_load",
        rows,
        args.json,
        tables=tables,
        section="Serving (textcl serve, issue 23)",
        title="Load: dynamic batching vs a naive server vs in-process encode",
        notes=notes,
        data={
            "levels": raw,
            "ceiling": ceiling,
            "max_batch_tokens": args.max_batch_tokens,
            "seed": args.seed,
        },
    )
    if failed:
        print(f"checks FAILED at levels {failed}", file=sys.stderr)
        return 1
    return 0
