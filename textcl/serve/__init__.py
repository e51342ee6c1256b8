"""``textcl serve``: an embedding and search service (OpenAI ``/v1/embeddings``, TEI
``/embed``, ``/search`` over an index, Prometheus ``/metrics``, a search page at ``/``) with
dynamic batching of concurrent requests.

Needs the optional extra ``textcl[serve]`` (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

from textcl.serve.app import ServeConfig, create_app
from textcl.serve.batcher import Batcher, BatcherClosed, QueueFull

__all__ = ["Batcher", "BatcherClosed", "QueueFull", "ServeConfig", "create_app"]
