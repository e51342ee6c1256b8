"""Prometheus metrics of one ``textcl serve`` app, in a registry of its own.

Each app (:func:`textcl.serve.app.create_app`) gets its own
:class:`prometheus_client.CollectorRegistry`, so two apps in one process (tests, a naive
and a batching server side by side) never share or clash over counters.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Request latency histogram buckets, in seconds."""
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
"""Inputs per merged batch (one :meth:`SentenceEncoder.encode` call of the batcher)."""
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
"""Tokens per merged batch."""


class ServeMetrics:
    """The counters, gauges and histograms of one app (names prefixed ``textcl_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "textcl_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "textcl_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "textcl_batch_inputs",
            "inputs per merged batch (one encode call of the dynamic batcher)",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "textcl_batch_requests",
            "requests contributing inputs to a merged batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "textcl_batch_tokens",
            "tokens per merged batch (after truncation)",
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "textcl_batch_seconds",
            "encode time of a merged batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "textcl_queue_inputs", "inputs waiting for a forward pass", registry=r
        )
        self.tokens = Counter(
            "textcl_tokens", "input tokens embedded (after truncation)", registry=r
        )
        self.inputs = Counter("textcl_inputs", "inputs embedded", registry=r)
        self.rejected = Counter(
            "textcl_rejected", "requests refused because the queue was full (429)", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
