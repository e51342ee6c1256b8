"""Dynamic batching: the inputs of concurrent requests merged into shared encode calls.

Requests arrive on the event loop (:meth:`Batcher.submit` returns an awaitable per
request); one worker thread takes the oldest waiting inputs, as many as fit the token
budget (``max_batch_tokens``: the sum of the inputs' token counts), embeds them with one
:meth:`SentenceEncoder.encode` call (which cuts it into length-sorted forward passes of at
most ``max_forward_tokens`` padded tokens, cut into the fewest passes of at most
``batch_size`` sentences, as even as possible: :func:`forward_batch_size`) and hands each
request its rows back, in order, through its asyncio future. The event loop never runs the
model. Inputs with different prompts never share a batch (a prompt is one ``encode``
argument). The queue is bounded: :class:`QueueFull` when a request's inputs would pass
``max_queue`` waiting inputs (the app answers 429).

:meth:`Batcher.close` stops taking new requests, lets the worker finish everything queued
(``drain``) and joins it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textcl.serve.metrics import ServeMetrics

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The request's inputs do not fit the bounded queue (answer 429, retry later)."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new requests (answer 503)."""


@dataclass(eq=False)
class _Job:
    """One request: its texts, prompt, future and the rows filled so far."""

    texts: list[str]
    prompt: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]
    result: np.ndarray | None = None
    remaining: int = 0


@dataclass(eq=False)
class _Item:
    job: _Job
    row: int
    tokens: int


def _resolve(
    future: asyncio.Future[np.ndarray], value: np.ndarray | None, error: BaseException | None
) -> None:
    """Set ``future`` (on its loop) unless the request was cancelled meanwhile."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert value is not None
        future.set_result(value)


def forward_batch_size(n: int, batch_size: int) -> int:
    """Sentences per forward pass for a merged batch of ``n`` inputs: the fewest passes of at
    most ``batch_size``, as even as possible (133 inputs at 64: 45 + 45 + 43, not
    64 + 64 + 5: on CPU small passes cost several times more per sentence, see
    docs/serve.md, "Performance")."""
    if n < 1:
        return batch_size
    passes = -(-n // batch_size)
    return -(-n // passes)


@dataclass
class BatchRecord:
    """What one merged batch held (kept for the last :data:`Batcher.history` batches)."""

    inputs: int
    requests: int
    tokens: int
    seconds: float


@dataclass
class Batcher:
    """The dynamic batcher of one app (see the module doc).

    Args:
        encoder: a :class:`~textcl.SentenceEncoder` (only its public ``encode`` is called).
        max_batch_tokens: token budget of a merged batch.
        batch_size: at most this many sentences per forward pass inside a merged batch.
        max_forward_tokens: padded-token budget of each forward pass (None:
            ``max_batch_tokens``).
        max_queue: at most this many inputs waiting (more: :class:`QueueFull`).
        precision: ``encode``'s precision (None: the encoder's default).
        metrics: where batch sizes, tokens and the queue depth are recorded.
        batch_wait: seconds the worker lets pass after the end of a batch before it takes
            the next one (0: none; it stops waiting once ``max_batch_tokens`` are queued).
            Under a steady load the requests answered by one batch come back while the next
            one runs, so concurrent clients split into two cohorts that alternate in
            half-size batches; a short wait lets the answered cohort rejoin, and merged
            batches grow. An idle server never waits: the wait only follows a batch that
            ended less than ``batch_wait`` ago.
    """

    encoder: Any
    max_batch_tokens: int = 16384
    batch_size: int = 64
    max_forward_tokens: int | None = None
    max_queue: int = 4096
    precision: str | None = None
    metrics: ServeMetrics | None = None
    batch_wait: float = 0.0
    history_size: int = 1000
    history: deque[BatchRecord] = field(init=False)
    _pending: deque[_Item] = field(init=False)
    _cond: threading.Condition = field(init=False)
    _thread: threading.Thread | None = field(init=False, default=None)
    _closing: bool = field(init=False, default=False)
    _pending_tokens: int = field(init=False, default=0)
    before_batch: Callable[[list[str]], None] | None = None
    """Called in the worker thread before each merged batch (tests hold the worker here)."""

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.history_size)
        self._pending = deque()
        self._cond = threading.Condition()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="textcl-batcher", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the queued ones and stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def queued(self) -> int:
        """Inputs waiting for a forward pass."""
        return len(self._pending)

    # ------------------------------------------------------------------ requests
    def submit(
        self, texts: Sequence[str], tokens: Sequence[int], prompt: str = ""
    ) -> asyncio.Future[np.ndarray]:
        """Queue one request's ``texts`` (with their token counts; call on the event loop).

        Returns a future of the ``(len(texts), D)`` float32 embeddings (full dimension, not
        normalised), in input order. Raises :class:`QueueFull` or :class:`BatcherClosed`.
        """
        if len(texts) != len(tokens):
            raise ValueError("texts and tokens differ in length")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        job = _Job(list(texts), prompt, loop, future, remaining=len(texts))
        if not texts:
            future.set_result(np.empty((0, int(self.encoder.full_embedding_dim)), np.float32))
            return future
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            if len(self._pending) + len(texts) > self.max_queue:
                raise QueueFull(
                    f"the queue is full ({len(self._pending)} inputs waiting, at most "
                    f"{self.max_queue}); retry later"
                )
            self._pending.extend(_Item(job, i, int(n)) for i, n in enumerate(tokens))
            self._pending_tokens += sum(int(n) for n in tokens)
            if self.metrics is not None:
                self.metrics.queue_depth.set(len(self._pending))
            self._cond.notify()
        return future

    # ------------------------------------------------------------------ worker
    def _take(self) -> list[_Item]:
        """The next merged batch (the lock held): the oldest input, then every later
        waiting input with the same prompt while the token budget allows (stopping at the
        first that does not fit, so no input waits behind newer ones forever)."""
        first = self._pending[0]
        taken: list[_Item] = []
        rest: deque[_Item] = deque()
        total = 0
        full = False
        for item in self._pending:
            if full or item.job.prompt != first.job.prompt:
                rest.append(item)
                continue
            if taken and total + item.tokens > self.max_batch_tokens:
                full = True
                rest.append(item)
                continue
            taken.append(item)
            total += item.tokens
        self._pending = rest
        self._pending_tokens -= total
        return taken

    def _run(self) -> None:
        last_end = float("-inf")
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return  # closing and drained
                until = last_end + self.batch_wait
                while (
                    not self._closing
                    and self._pending_tokens < self.max_batch_tokens
                    and (left := until - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
                batch = self._take()
                if self.metrics is not None:
                    self.metrics.queue_depth.set(len(self._pending))
            self._encode(batch)
            last_end = time.monotonic()

    def _encode(self, batch: list[_Item]) -> None:
        texts = [it.job.texts[it.row] for it in batch]
        error: BaseException | None = None
        emb: np.ndarray | None = None
        t0 = time.perf_counter()
        try:
            if self.before_batch is not None:
                self.before_batch(texts)
            emb = np.asarray(
                self.encoder.encode(
                    texts,
                    batch_size=forward_batch_size(len(texts), self.batch_size),
                    max_tokens=self.max_forward_tokens or self.max_batch_tokens,
                    normalize=False,
                    truncate_dim=int(self.encoder.full_embedding_dim),
                    prompt=batch[0].job.prompt,
                    precision=self.precision,
                    show_progress=False,
                ),
                dtype=np.float32,
            )
        except Exception as e:  # the requests get the error; the worker goes on
            logger.exception("encode failed for a batch of %d inputs", len(texts))
            error = e
        seconds = time.perf_counter() - t0
        jobs = {id(it.job): it.job for it in batch}
        tokens = sum(it.tokens for it in batch)
        self.history.append(BatchRecord(len(batch), len(jobs), tokens, seconds))
        if self.metrics is not None:
            m = self.metrics
            m.batch_size.observe(len(batch))
            m.batch_requests.observe(len(jobs))
            m.batch_tokens.observe(tokens)
            m.batch_seconds.observe(seconds)
            if error is None:
                m.inputs.inc(len(batch))
                m.tokens.inc(tokens)
        if error is not None:
            for job in jobs.values():
                job.loop.call_soon_threadsafe(_resolve, job.future, None, error)
            return
        assert emb is not None
        for i, it in enumerate(batch):
            job = it.job
            if job.result is None:
                job.result = np.empty((len(job.texts), emb.shape[1]), dtype=np.float32)
            job.result[it.row] = emb[i]
            job.remaining -= 1
            if job.remaining == 0:
                job.loop.call_soon_threadsafe(_resolve, job.future, job.result, None)
