"""Run the app under uvicorn: bind, print the address, drain on Ctrl-C / SIGTERM, exit cleanly."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import uvicorn

from ..errors import SegformerError
from .app import ServeConfig, create_app, is_loopback

log = logging.getLogger("segformer.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, except that a signal ends it cleanly: Ctrl-C or SIGTERM stops accepting
    connections, lets the requests in flight finish (up to the time limit) and returns, where uvicorn
    would raise the signal again after its shutdown (exit 130 or death by SIGTERM)."""

    def __init__(self, config: uvicorn.Config, service: Any, on_start: Any) -> None:
        super().__init__(config)
        self.service = service
        self.on_start = on_start

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            print(
                "segformer serve: draining the requests in flight, then exiting", file=sys.stderr, flush=True
            )
        self.service.draining = True  # /readyz answers 503 from now on
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.on_start()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`:`port` (port 0: a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        raise SegformerError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.set_inheritable(True)
    return sock


def serve(predictor: Any, config: ServeConfig, name: str = "model", card: str | None = None) -> int:
    """Serve `predictor` until Ctrl-C or SIGTERM; returns 0 once the requests in flight are answered.
    Prints ``serving NAME on http://HOST:PORT`` (the port chosen when `config.port` is 0) on stdout
    once the server accepts connections; one log line per request goes to stderr."""
    for warning in config.check():
        warnings.warn(warning, stacklevel=2)
    _log_to_stderr(config.access_log)
    app = create_app(predictor, config, name=name, card=card)
    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    shown_host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{shown_host}:{port}"

    def started() -> None:
        auth = "token required" if config.token else "no token"
        where = "loopback only" if is_loopback(config.host) else "reachable from the network"
        print(f"serving {name} on {url} ({where}, {auth}; page {url}/, API docs {url}/docs)", flush=True)

    uv = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,  # our own line per request (segformer.serve)
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=int(config.timeout) + 5,
        # No limit_concurrency: its refusals are plain text; requests past the queue get our JSON 503.
        lifespan="on",
    )
    server = _Server(uv, app.state.service, started)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _log_to_stderr(access_log: bool) -> None:
    logger = logging.getLogger("segformer.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if access_log else logging.WARNING)
    logger.propagate = False
