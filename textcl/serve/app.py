"""The ``textcl serve`` application: a FastAPI app around one encoder (and an index).

Routes (see docs/serve.md): ``POST /v1/embeddings`` (OpenAI), ``POST /embed`` (TEI),
``POST /search`` (the loaded index), ``GET /health``, ``GET /info``, ``GET /metrics``
(Prometheus), ``GET /v1/models`` and the search page at ``/``. Every route but ``/`` and
``/health`` needs ``Authorization: Bearer KEY`` when an API key is set.

Embedding requests are checked (sizes, prompt names, lengths) on the event loop, then their
inputs go to the :class:`~textcl.serve.batcher.Batcher`, which merges concurrent requests
into shared encode calls on one worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from textcl.errors import InputError
from textcl.inference import AUTO, resolve_max_tokens
from textcl.precision import resolve_inference_precision
from textcl.search.index import EmbeddingIndex
from textcl.serve.batcher import Batcher, BatcherClosed, QueueFull
from textcl.serve.metrics import ServeMetrics
from textcl.serve.page import PAGE_HTML
from textcl.serve.schemas import (
    ApiError,
    OpenAIEmbeddingRequest,
    SearchRequest,
    TEIEmbedRequest,
    encode_base64,
    finish_vectors,
    parse_body,
    text_list,
)
from textcl.version import __version__

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/", "/health"})
"""Routes answered without the API key (the page holds no data; it asks for the key)."""
ROUTES = frozenset(
    {"/", "/health", "/info", "/metrics", "/v1/embeddings", "/v1/models", "/embed", "/search"}
)
"""Route labels of the request metrics (anything else counts as ``other``)."""
LIMIT_FIELDS = (
    "max_batch_tokens",
    "batch_size",
    "max_inputs",
    "max_input_chars",
    "max_queue",
    "max_top_k",
    "retry_after",
)
"""The positive-integer limits of :class:`ServeConfig` (reported by ``/info``)."""
TOKENIZE_OFF_LOOP_CHARS = 20_000
"""Requests with more characters than this are tokenized in a thread, off the event loop."""


@dataclass(frozen=True)
class ServeConfig:
    """Limits and settings of a ``textcl serve`` app (the CLI flags).

    Args:
        model_name: the name ``/v1/embeddings`` answers to (and reports); ``model_aliases``
            are accepted too.
        api_key: when set, every route but ``/`` and ``/health`` needs
            ``Authorization: Bearer <api_key>`` (else 401).
        max_batch_tokens: token budget of a merged batch (one ``encode`` call).
        batch_size: sentences per forward pass inside a merged batch.
        max_forward_tokens: padded-token budget of each forward pass; None: what
            ``encode(max_tokens="auto")`` uses in-process
            (:data:`~textcl.inference.CPU_MAX_TOKENS` on CPU, no cap elsewhere), at most
            ``max_batch_tokens``.
        batch_wait_ms: milliseconds the batcher lets pass after a batch before it takes the
            next while busy (0: none; see :class:`~textcl.serve.batcher.Batcher`).
        max_inputs: inputs (or queries) per request (more: 413).
        max_input_chars: characters per input (more: 413).
        max_queue: inputs waiting for the model (a request that would pass it: 429).
        max_top_k: largest ``top_k`` of ``/search`` (more: 422).
        precision: ``encode``'s precision (None: the encoder's, ``auto``).
        retry_after: seconds in the ``Retry-After`` header of a 429.
    """

    model_name: str = "textcl"
    model_aliases: tuple[str, ...] = ()
    api_key: str | None = None
    max_batch_tokens: int = 16384
    batch_size: int = 64
    max_forward_tokens: int | None = None
    batch_wait_ms: int = 0
    max_inputs: int = 512
    max_input_chars: int = 32_000
    max_queue: int = 8192
    max_top_k: int = 100
    precision: str | None = None
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(
                    f"{name.replace('_', '-')} must be a positive integer, got {value!r}"
                )
        forward = self.max_forward_tokens
        if forward is not None and (
            isinstance(forward, bool) or not isinstance(forward, int) or forward < 1
        ):
            raise InputError(f"max-forward-tokens must be a positive integer, got {forward!r}")
        wait = self.batch_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, int) or not 0 <= wait <= 10_000:
            raise InputError(f"batch-wait-ms must be an integer in 0..10000, got {wait!r}")
        if self.max_inputs > self.max_queue:
            raise InputError(
                f"max-inputs {self.max_inputs} is more than max-queue {self.max_queue}: such a "
                "request could never be queued"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("the API key is empty: pass a non-empty --api-key or none")

    def public_limits(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in LIMIT_FIELDS}


class ServeState:
    """What the routes share: the encoder, the index, the batcher, the metrics."""

    def __init__(self, encoder: Any, index: EmbeddingIndex | None, config: ServeConfig) -> None:
        self.encoder = encoder
        self.index = index
        self.config = config
        self.metrics = ServeMetrics()
        self.max_length = int(encoder.effective_max_length)
        self.precision = resolve_inference_precision(
            config.precision or encoder.precision, encoder.device
        )
        auto = resolve_max_tokens(AUTO, encoder.device)
        self.forward_tokens = min(
            config.max_forward_tokens or auto or config.max_batch_tokens, config.max_batch_tokens
        )
        self.batcher = Batcher(
            encoder,
            max_batch_tokens=config.max_batch_tokens,
            batch_size=config.batch_size,
            max_forward_tokens=self.forward_tokens,
            batch_wait=config.batch_wait_ms / 1000,
            max_queue=config.max_queue,
            precision=config.precision,
            metrics=self.metrics,
        )
        self.index_lock = threading.Lock()
        self.names = {config.model_name, *config.model_aliases}

    # ------------------------------------------------------------------ prompts, tokens
    def prompt(self, prompt_name: str | None) -> str:
        """The prompt text of ``prompt_name`` (None: the model's default prompt, if any);
        an unknown name is a 422 naming the model's prompts."""
        prompts: dict[str, str] = dict(self.encoder.prompts)
        if prompt_name is not None:
            if prompt_name not in prompts:
                raise ApiError(
                    422,
                    f"prompt_name {prompt_name!r} is not one of the model's prompts "
                    f"{sorted(prompts)}",
                    "Validation",
                    param="prompt_name",
                    code="unknown_prompt",
                )
            return prompts[prompt_name]
        default = self.encoder.default_prompt_name
        return prompts.get(default, "") if default else ""

    def token_counts(self, texts: Sequence[str], prompt: str) -> list[int]:
        """Tokens of each input (with the prompt and special tokens), before truncation."""
        ids = self.encoder.tokenizer(
            [prompt + t for t in texts],
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        return [len(x) for x in ids]

    async def embed(
        self, texts: list[str], prompt: str, *, truncate: bool, field_name: str, empty_status: int
    ) -> tuple[np.ndarray, int]:
        """Check ``texts`` against the limits, queue them, await their full-dimension
        embeddings (not normalised); also returns the token count (after truncation)."""
        cfg = self.config
        if not texts:
            raise ApiError(
                empty_status,
                f"{field_name} cannot be empty",
                "Empty",
                param=field_name,
                code="empty",
            )
        if len(texts) > cfg.max_inputs:
            raise ApiError(
                413,
                f"{field_name}: {len(texts)} inputs in one request, at most {cfg.max_inputs} "
                "(--max-inputs)",
                "Validation",
                param=field_name,
                code="too_many_inputs",
            )
        for i, t in enumerate(texts):
            if len(t) > cfg.max_input_chars:
                raise ApiError(
                    413,
                    f"{field_name}[{i}]: {len(t)} characters, at most {cfg.max_input_chars} "
                    "(--max-input-chars)",
                    "Validation",
                    param=field_name,
                    code="input_too_long",
                )
        if sum(len(t) for t in texts) > TOKENIZE_OFF_LOOP_CHARS:
            counts = await asyncio.to_thread(self.token_counts, texts, prompt)
        else:
            counts = self.token_counts(texts, prompt)
        if not truncate:
            for i, n in enumerate(counts):
                if n > self.max_length:
                    raise ApiError(
                        413,
                        f"Input validation error: `{field_name}` must have less than "
                        f"{self.max_length} tokens. Given: {n} (input {i}; send truncate=true "
                        "to truncate)",
                        "Validation",
                        param=field_name,
                        code="input_too_long",
                    )
        tokens = [min(n, self.max_length) for n in counts]
        try:
            future = self.batcher.submit(texts, tokens, prompt)
        except QueueFull as e:
            self.metrics.rejected.inc()
            raise ApiError(
                429,
                f"Model is overloaded: {e}",
                "Overloaded",
                code="queue_full",
                headers={"Retry-After": str(cfg.retry_after)},
            ) from None
        except BatcherClosed as e:
            raise ApiError(503, str(e), "Unhealthy", code="shutting_down") from None
        vectors = await future
        return vectors, sum(tokens)

    def check_dimensions(self, dimensions: int | None) -> int:
        full = int(self.encoder.full_embedding_dim)
        if dimensions is None:
            return int(self.encoder.embedding_dim)
        if dimensions > full:
            raise ApiError(
                422,
                f"dimensions {dimensions} is more than the model's {full}",
                "Validation",
                param="dimensions",
                code="invalid_dimensions",
            )
        return dimensions

    # ------------------------------------------------------------------ search
    def search_index(self, vectors: np.ndarray, top_k: int) -> list[list[dict[str, Any]]]:
        """Top-k hits of each query vector (runs in a thread; one search at a time)."""
        assert self.index is not None
        with self.index_lock:
            scores, indices = self.index.search_vectors(vectors, top_k)
            out: list[list[dict[str, Any]]] = []
            for qi in range(len(vectors)):
                valid = [
                    (float(s), int(j))
                    for s, j in zip(scores[qi], indices[qi], strict=True)
                    if j >= 0
                ]
                recs = self.index.records([j for _, j in valid])
                out.append(
                    [
                        {"rank": r, "id": rid, "text": text, "score": s, "index": j}
                        for r, ((s, j), (rid, text)) in enumerate(zip(valid, recs, strict=True))
                    ]
                )
        return out

    def info(self) -> dict[str, Any]:
        enc = self.encoder
        index = None
        if self.index is not None:
            m = self.index.manifest
            index = {
                "folder": str(self.index.folder),
                "rows": len(self.index),
                "dimension": self.index.dimension,
                "normalized": bool(m.normalized),
                "model": m.model,
            }
        return {
            "model_name": self.config.model_name,
            "model": _model_path(enc),
            "dimension": int(enc.embedding_dim),
            "full_dimension": int(enc.full_embedding_dim),
            "pooling": enc.pooling.strategy,
            "normalize": bool(enc.normalize),
            "precision": self.precision,
            "device": str(enc.device),
            "max_length": self.max_length,
            "prompts": sorted(enc.prompts),
            "default_prompt_name": enc.default_prompt_name,
            "index": index,
            "limits": {
                **self.config.public_limits(),
                "max_forward_tokens": self.forward_tokens,
                "batch_wait_ms": self.config.batch_wait_ms,
            },
            "auth": self.config.api_key is not None,
            "version": __version__,
        }


def _model_path(encoder: Any) -> str:
    name = str(getattr(getattr(encoder.model, "config", None), "_name_or_path", "") or "")
    return str(Path(name).resolve()) if name and Path(name).exists() else name


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(
            422, f"the body is not valid JSON ({e})", "Validation", code="invalid_json"
        ) from None


def _error_response(request: Request, err: ApiError) -> JSONResponse:
    body = err.openai_body() if request.url.path.startswith("/v1") else err.tei_body()
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def create_app(
    encoder: Any, *, index: EmbeddingIndex | None = None, config: ServeConfig | None = None
) -> FastAPI:
    """The FastAPI app serving ``encoder`` (and ``index``: its model check,
    :meth:`EmbeddingIndex.check_encoder`, runs here, before any request).

    The batcher's worker starts and stops with the app's lifespan (uvicorn, or
    ``with TestClient(app)``); at shutdown it finishes every queued input first.
    """
    cfg = config or ServeConfig()
    if index is not None:
        index.check_encoder(encoder)
    state = ServeState(encoder, index, cfg)
    encoder.encode(["warm up"], precision=cfg.precision, show_progress=False)  # inference copies

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.batcher.close)

    app = FastAPI(
        title="textcl serve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.textcl = state
    metrics = state.metrics
    expected = f"Bearer {cfg.api_key}".encode() if cfg.api_key else None

    @app.middleware("http")
    async def auth_and_metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        route = path if path in ROUTES else "other"
        t0 = time.perf_counter()
        if expected is not None and path not in PUBLIC_PATHS:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                response: Response = _error_response(
                    request,
                    ApiError(
                        401,
                        "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                        "Unauthorized",
                        code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"},
                    ),
                )
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "Validation")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += " (routes: " + ", ".join(sorted(ROUTES)) + ")"
        return _error_response(request, ApiError(exc.status_code, message, kind, code=kind.lower()))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("error serving %s", request.url.path)
        return _error_response(
            request, ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "Backend")
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return state.info()

    @app.get("/metrics")
    async def metrics_route() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "textcl"}],
        }

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request) -> Response:
        req: OpenAIEmbeddingRequest = parse_body(OpenAIEmbeddingRequest, await _json_body(request))
        if req.model not in state.names:
            raise ApiError(
                404,
                f"The model `{req.model}` does not exist: this server serves {sorted(state.names)}",
                "NotFound",
                param="model",
                code="model_not_found",
            )
        texts = text_list(req.input, "input")
        dims = state.check_dimensions(req.dimensions)
        vectors, tokens = await state.embed(
            texts, state.prompt(None), truncate=True, field_name="input", empty_status=422
        )
        out = finish_vectors(vectors, dims, normalize=True)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": encode_base64(v) if req.encoding_format == "base64" else v.tolist(),
            }
            for i, v in enumerate(out)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": cfg.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.post("/embed")
    async def tei_embed(request: Request) -> Response:
        req: TEIEmbedRequest = parse_body(TEIEmbedRequest, await _json_body(request))
        if req.truncation_direction.lower() != "right":
            raise ApiError(
                422,
                "truncation_direction Left is not supported (textcl truncates on the right)",
                "Validation",
                param="truncation_direction",
            )
        texts = text_list(req.inputs, "inputs")
        dims = state.check_dimensions(req.dimensions)
        vectors, _ = await state.embed(
            texts,
            state.prompt(req.prompt_name),
            truncate=bool(req.truncate),
            field_name="inputs",
            empty_status=400,
        )
        out = finish_vectors(vectors, dims, normalize=req.normalize)
        return JSONResponse(out.tolist())

    @app.post("/search")
    async def search_route(request: Request) -> Response:
        req: SearchRequest = parse_body(SearchRequest, await _json_body(request))
        if state.index is None:
            raise ApiError(
                404,
                "no index loaded: start textcl serve with --index FOLDER",
                "NotFound",
                code="no_index",
            )
        queries = [req.query] if isinstance(req.query, str) else list(req.query)
        for i, q in enumerate(queries):
            if not q.strip():
                raise ApiError(422, f"query {i} is blank", "Validation", param="query")
        if req.top_k > cfg.max_top_k:
            raise ApiError(
                422,
                f"top_k {req.top_k} is more than {cfg.max_top_k} (--max-top-k)",
                "Validation",
                param="top_k",
            )
        vectors, _ = await state.embed(
            queries,
            state.prompt(req.prompt_name),
            truncate=True,
            field_name="query",
            empty_status=400,
        )
        assert state.index is not None
        qv = finish_vectors(
            vectors, int(encoder.embedding_dim), normalize=bool(state.index.manifest.normalized)
        )
        hits = await asyncio.to_thread(state.search_index, qv, req.top_k)
        return JSONResponse(
            {
                "model": cfg.model_name,
                "results": [
                    {"query": query, "hits": h} for query, h in zip(queries, hits, strict=True)
                ],
            }
        )

    return app


def config_dict(config: ServeConfig) -> dict[str, Any]:
    """``config`` as plain data, the API key masked (for logs)."""
    d = asdict(config)
    if d.get("api_key"):
        d["api_key"] = "***"
    return d
