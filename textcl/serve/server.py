"""Running an app under uvicorn: in the foreground with graceful SIGTERM handling
(``textcl serve``), or in a background thread (tests, benchmarks).

The listening socket is bound here, before uvicorn starts, so a busy port is an ordinary
``OSError`` naming the address (exit code 5) and ``port=0`` picks a free port.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

KEEP_ALIVE_SECONDS = 75
"""How long an idle keep-alive connection stays open (uvicorn's default is 5 s). A client
pool holding many connections reuses one after a while; closing it from the server side
then races with the client's next request on it (a read error, request never seen). 75 s
is nginx's default."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` contains ``:``), ready for
    uvicorn; ``port=0`` lets the system choose a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(
    app: Any, *, log_level: str = "warning", access_log: bool = False
) -> uvicorn.Config:
    """uvicorn's settings for ``app``: no graceful-shutdown timeout (every request in flight
    is answered), idle keep-alive connections kept :data:`KEEP_ALIVE_SECONDS`, no server
    header."""
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=None,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        server_header=False,
        lifespan="on",
    )


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """Replaces the default SIGTERM action while serving: uvicorn re-raises the signal after
    its graceful shutdown, which must then end the process normally (exit code 0)."""


def run_server(
    app: Any, sock: socket.socket, *, log_level: str = "warning", access_log: bool = False
) -> bool:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT: stop accepting, answer every
    request in flight, run the app's shutdown (the batcher drains), return. Returns whether
    the server started (False: startup failed, e.g. the app's lifespan raised)."""
    previous = signal.signal(signal.SIGTERM, _ignore)
    try:
        server = uvicorn.Server(uvicorn_config(app, log_level=log_level, access_log=access_log))
        server.run(sockets=[sock])
        return bool(server.started)
    finally:
        signal.signal(signal.SIGTERM, previous)


class ServerThread:
    """``app`` served by uvicorn in a daemon thread on ``host`` and a free port (no signal
    handling: stop it with :meth:`stop`). Use as a context manager."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind_socket(host, port)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.server = uvicorn.Server(uvicorn_config(app))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="uvicorn", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
