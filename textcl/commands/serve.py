"""``textcl serve``: serve a model (and an index) over HTTP: OpenAI ``/v1/embeddings``, TEI
``/embed``, ``/search``, ``/health``, ``/info``, ``/metrics`` and a search page at ``/``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from textcl.errors import InputError
from textcl.precision import PRECISIONS, check_device
from textcl.search.index import open_index
from textcl.search.model import load_encoder

HELP = "serve a model (and an index) over HTTP: OpenAI /v1/embeddings, TEI /embed, /search"
API_KEY_ENV = "TEXTCL_API_KEY"
"""Environment variable holding the API key when ``--api-key`` is not given."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help=HELP,
        description=HELP + " (needs the serve extra: pip install 'textcl[serve]'). "
        "SIGTERM or Ctrl-C stops accepting, answers what is in flight and exits.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model folder or hub id (default with --index: the model in its manifest)",
    )
    p.add_argument("--index", default=None, help="index folder for /search (textcl encode)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (0: a free one; default 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every route but / and /health "
        f"(default: ${API_KEY_ENV}; prefer the variable: flags show in process lists)",
    )
    p.add_argument(
        "--served-model-name",
        default=None,
        help="the model name /v1/embeddings answers to (default: --model as given; its "
        "folder name is accepted too)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=16384,
        help="token budget of a merged batch: one encode call (default 16384)",
    )
    p.add_argument(
        "--max-forward-tokens",
        type=int,
        default=None,
        help="padded-token budget of each forward pass (default: encode's max_tokens='auto': "
        "2048 on CPU, no cap on GPU; at most --max-batch-tokens)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=int,
        default=0,
        help="while busy, let this many milliseconds pass after a batch before taking the "
        "next, so the clients it answered can rejoin it (default 0: none; 0..10000)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="sentences per forward pass (default 64)"
    )
    p.add_argument(
        "--max-inputs", type=int, default=512, help="inputs per request (default 512; more: 413)"
    )
    p.add_argument(
        "--max-input-chars",
        type=int,
        default=32000,
        help="characters per input (default 32000; more: 413)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=8192,
        help="inputs waiting for the model (default 8192; more: 429)",
    )
    p.add_argument(
        "--max-top-k", type=int, default=100, help="largest top_k of /search (default 100)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: torch's)")
    p.add_argument(
        "--precision",
        default=None,
        choices=[*PRECISIONS, "float32"],
        help="encode precision (default auto)",
    )
    p.add_argument(
        "--verify", action="store_true", help="check every index file's sha256 at startup"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        # lazy: the optional serve extra (fastapi, uvicorn, prometheus-client); the CLI loads
        # every command module at start
        from textcl.serve.app import ServeConfig, create_app
        from textcl.serve.server import bind_socket, run_server
    except ImportError as e:
        raise InputError(
            f"textcl serve needs the serve extra ({e.name or e} is missing): "
            "pip install 'textcl[serve]'"
        ) from None
    check_device(args.device)
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: expected 0..65535")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    index = open_index(args.index, verify=args.verify) if args.index else None
    model = args.model or (index.manifest.model if index is not None else None)
    if model is None:
        raise InputError("--model is required (or --index, to serve the index's model)")
    name = args.served_model_name or str(args.model or model)
    aliases = tuple({str(model), os.path.basename(os.path.normpath(str(model)))} - {name})
    config = ServeConfig(
        model_name=name,
        model_aliases=aliases,
        api_key=api_key,
        max_batch_tokens=args.max_batch_tokens,
        batch_size=args.batch_size,
        max_forward_tokens=args.max_forward_tokens,
        batch_wait_ms=args.batch_wait_ms,
        max_inputs=args.max_inputs,
        max_input_chars=args.max_input_chars,
        max_queue=args.max_queue,
        max_top_k=args.max_top_k,
        precision=args.precision,
    )
    sock = bind_socket(args.host, args.port)  # a busy port fails before the model loads
    try:
        encoder = load_encoder(model, args.device)
        app = create_app(encoder, index=index, config=config)
        host, port = sock.getsockname()[:2]
        if args.host not in LOOPBACK and api_key is None:
            logger.warning(
                "listening on %s without an API key: anyone who reaches this address can use "
                "the model (set %s)",
                args.host,
                API_KEY_ENV,
            )
        shown = f"[{host}]" if ":" in str(host) else host
        print(f"textcl serve: listening on http://{shown}:{port}", file=sys.stderr, flush=True)
        level = "info" if args.verbose else "warning"
        started = run_server(app, sock, log_level=level, access_log=args.verbose >= 2)
    finally:
        sock.close()
    if not started:
        print("textcl serve: error: the server did not start (see the log above)", file=sys.stderr)
        return 1
    print("textcl serve: stopped", file=sys.stderr, flush=True)
    return 0
