"""The ASGI application of `segformer serve`: FastAPI routes over one `Predictor` and its `Batcher`.

``POST /v1/parse`` is admitted (503 + Retry-After when `ServeConfig.queue_size` requests are in
flight), reads its upload within the limits (`segformer.serve.uploads`), decodes it on a worker thread,
waits for the model thread (504 past `ServeConfig.timeout`) and encodes the answer on a worker thread.
Every error is ``{"error": "<one line>"}``; every request is one log line on the ``segformer.serve``
logger; the page and its assets are package data served from memory.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from importlib import resources
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SegformerError
from .batcher import Batcher
from .model import OUTPUTS, ModelRunner, ParseJob, label_png, overlay_png, parts, summary
from .uploads import ApiError, decode_image, open_image, read_upload

log = logging.getLogger("segformer.serve")

TOKEN_ENV = "SEGFORMER_TOKEN"
STATIC = {  # name -> media type of the page's files (package data in segformer/serve/static)
    "index.html": "text/html; charset=utf-8",
    "docs.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere; this also keeps it from doing so.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


@dataclass
class ServeConfig:
    """How `segformer serve` listens and what it accepts (`check` refuses unsafe combinations)."""

    host: str = "127.0.0.1"
    port: int = 8000
    """0 picks a free port (printed at start)."""
    token: str | None = None
    """Required as ``Authorization: Bearer TOKEN`` on every /v1 call when set."""
    no_token: bool = False
    """Allow a non-loopback address without a token (a warning is printed)."""
    max_upload_mb: float = 20.0
    max_pixels: int = 16_000_000
    """Images whose header claims more pixels are refused before decoding."""
    max_batch: int = 8
    """Requests the model thread takes at once."""
    max_wait_ms: float = 5.0
    """How long the model thread waits for a batch to fill."""
    queue_size: int = 32
    """Requests in flight (waiting, decoding, running); more are answered 503."""
    timeout: float = 60.0
    """Seconds a request may take from admission to its result (408 while uploading, 504 after)."""
    threads: int | None = None
    """PyTorch threads of the model thread (default: the process's setting)."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser (none: CORS off)."""
    access_log: bool = True
    io_threads: int = 2
    """Threads that decode uploads and encode answers beside the model thread."""

    def check(self) -> list[str]:
        """Refuse to listen beyond loopback without a token (unless `no_token`), and bad limits; returns
        the warnings to show (an open server)."""
        if self.token is not None and not self.token:
            raise SegformerError("the token is empty")
        if self.token and self.no_token:
            raise SegformerError("--no-token and a token (--token or SEGFORMER_TOKEN) contradict each other")
        for name in ("max_upload_mb", "max_pixels", "max_batch", "queue_size", "timeout", "io_threads"):
            if not getattr(self, name) > 0:
                raise SegformerError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.max_wait_ms < 0:
            raise SegformerError(f"max_wait_ms must be >= 0 (got {self.max_wait_ms})")
        if is_loopback(self.host) or self.token:
            return []
        if not self.no_token:
            raise SegformerError(
                f"refusing to listen on {self.host} without a token: anyone on the network could use "
                f"the server. Set --token or {TOKEN_ENV} (or pass --no-token to serve openly)"
            )
        return [f"serving on {self.host} without a token: anyone who can reach it can use it"]

    def public(self) -> dict[str, Any]:
        """The settings a client may see (no token)."""
        shown = asdict(self)
        for key in ("token", "no_token", "access_log", "host", "port"):
            shown.pop(key)
        shown["token_required"] = bool(self.token)
        return shown


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _RequestLog:
    """Pure ASGI middleware: one log line per request (client, method, path, status, bytes, ms) and
    the security headers on every answer."""

    def __init__(self, app: Callable, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, size = 500, 0

        async def send_logged(message: dict) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            if self.enabled:
                client = scope.get("client") or ("-", 0)
                query = scope.get("query_string", b"").decode("latin-1")
                path = scope["path"] + (f"?{query}" if query else "")
                ms = (time.perf_counter() - start) * 1000
                log.info("%s %s %s %d %d B %.1f ms", client[0], scope["method"], path, status, size, ms)


# Module level: the route signatures' annotations are resolved in this module's namespace.
_BEARER = HTTPBearer(auto_error=False, description="the server's --token")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


class Service:
    """What the routes share: the predictor, the settings, the model thread and the I/O threads."""

    def __init__(self, predictor: Any, config: ServeConfig, name: str, card: str | None) -> None:
        self.predictor = predictor
        self.config = config
        self.name = name
        self.card = card
        runner = ModelRunner(predictor)
        self.batcher = Batcher(
            runner,
            max_batch=config.max_batch,
            max_wait=config.max_wait_ms / 1000,
            capacity=config.queue_size,
            threads=config.threads,
            warmup=runner.warmup,
        )
        self.limiter: anyio.CapacityLimiter | None = None
        self.draining = False

    async def start(self) -> None:
        self.limiter = anyio.CapacityLimiter(self.config.io_threads)
        self.batcher.start()

    async def stop(self) -> None:
        self.draining = True
        await self.batcher.stop()

    async def in_thread(self, fn: Callable, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)

    def model_info(self) -> dict[str, Any]:
        p = self.predictor
        labels = p.label_set
        return {
            "name": self.name,
            "label_set": {
                "name": labels.name,
                "classes": [
                    {"id": i, "name": n, "color": list(c)}
                    for i, (n, c) in enumerate(zip(labels.class_names, labels.palette, strict=True))
                ],
                "ignore_index": labels.ignore_index,
            },
            "settings": p.settings(),
            "faces": bool(p.faces),
            "backend": p.backend if self.batcher.ready.is_set() else None,  # known after warm-up
            "device": str(p.device),
            "batch_size": p.batch_size,
            "server": self.config.public(),
            "card": self.card,
        }


def _asset(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


def create_app(
    predictor: Any, config: ServeConfig | None = None, name: str = "model", card: str | None = None
):
    """The FastAPI app serving `predictor` (a `segformer.Predictor`) with `config`'s limits. The model
    thread starts and stops with the app's lifespan (``with TestClient(app)``, or under uvicorn)."""
    from .. import __version__

    config = config or ServeConfig()
    service = Service(predictor, config, name, card)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="segformer serve",
        version=__version__,
        description="Semantic segmentation and face parsing over HTTP (`segformer serve`).",
        docs_url=None,  # FastAPI's docs pages load their scripts from a CDN: /docs is ours
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service

    def check_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
    ) -> None:
        if config.token is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, config.token.encode()):
            raise ApiError(
                401,
                "missing or wrong token: send Authorization: Bearer TOKEN",
                {"WWW-Authenticate": "Bearer"},
            )

    api_dependencies = [Security(check_token)] if config.token else []

    _add_error_handlers(app)
    _add_page_routes(app)
    _add_health_routes(app, service)
    _add_model_route(app, service, api_dependencies)
    _add_parse_route(app, service, config, api_dependencies)

    app.add_middleware(_RequestLog, enabled=config.access_log)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": "<one line>"}``."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, err.detail, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in err.errors()
        )
        return _error(400, problems or "bad request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.error(
            "internal error on %s %s: %s: %s", request.method, request.url.path, type(err).__name__, err
        )
        return _error(500, "internal server error (logged by the server)")


def _add_page_routes(app: FastAPI) -> None:
    """The page and its assets, package data served from memory."""
    assets = {n: _asset(n) for n in STATIC}

    def page(name: str) -> Response:
        return Response(
            assets[name],
            media_type=STATIC[name],
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
        )

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return page("index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return page("docs.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in assets or name.endswith(".html"):
            raise ApiError(404, f"no such file: {name}")
        return page(name)


def _add_health_routes(app: FastAPI, service: Service) -> None:
    @app.get("/healthz", summary="Liveness: the server answers and its model thread runs")
    async def healthz() -> JSONResponse:
        b = service.batcher
        if not b.alive and b.ready.is_set():
            return _error(503, "the model thread has stopped")
        return JSONResponse({"status": "ok", "pending": b.pending, "processed": b.processed})

    @app.get("/readyz", summary="Readiness: the model is loaded and warm, and the server is not draining")
    async def readyz() -> JSONResponse:
        if service.draining:
            return _error(503, "shutting down")
        if not service.batcher.ready.is_set():
            return _error(503, "warming up", {"Retry-After": "1"})
        return JSONResponse({"status": "ready"})


def _add_model_route(app: FastAPI, service: Service, api_dependencies: list) -> None:
    @app.get(
        "/v1/model",
        dependencies=api_dependencies,
        summary="The model: label set with colours, inference settings, server limits, model card",
    )
    async def model() -> JSONResponse:
        return JSONResponse(service.model_info())


_PARSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "label (default) and overlay: a PNG; json and parts: JSON",
        "content": {"image/png": {}, "application/json": {}},
    },
    400: {"description": "bad request, corrupt image"},
    401: {"description": "missing or wrong token"},
    408: {"description": "the upload took longer than the time limit"},
    413: {"description": "upload over --max-upload-mb, or image over --max-pixels"},
    415: {"description": "not an image this server reads"},
    503: {"description": "queue full (see Retry-After)"},
    504: {"description": "no result within the time limit"},
}
_PARSE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _add_parse_route(app: FastAPI, service: Service, config: ServeConfig, api_dependencies: list) -> None:
    @app.post(
        "/v1/parse",
        dependencies=api_dependencies,
        summary="Segment one image",
        description="The image as the multipart field `image` or as the body (image/* content type). "
        "The label map is a palette PNG whose pixel values are class ids, byte for byte what "
        "`segformer predict` writes for the image with the same settings.",
        responses=_PARSE_RESPONSES,
        openapi_extra=_PARSE_BODY,
    )
    async def parse(
        request: Request,
        output: Annotated[
            Literal["label", "overlay", "json", "parts"],
            Query(
                description="label: the label map PNG; overlay: colours over the photo (PNG); json: faces "
                "found with boxes and the area of each class; parts: json plus the label map, the overlay "
                "and one mask per class present (base64 PNGs)"
            ),
        ] = "label",
        faces: Annotated[
            bool | None,
            Query(
                description="find faces first (default: the server's); 0 parses the whole image as one crop"
            ),
        ] = None,
    ) -> Response:
        return await _parse(service, config, request, output, faces)


async def _parse(
    service: Service, config: ServeConfig, request: Request, output: str, faces: bool | None
) -> Response:
    """``POST /v1/parse``: admit, read, decode, wait for the model thread, encode."""
    assert output in OUTPUTS
    find_faces = service.predictor.faces if faces is None else faces
    if find_faces and not service.predictor.faces:
        raise ApiError(
            400, "this server parses images whole (its model has no face classes, or --whole-image)"
        )
    batcher = service.batcher
    ticket = batcher.admit()
    if ticket is None:
        raise ApiError(
            503,
            f"busy: {batcher.capacity} requests in flight (--queue-size); retry later",
            {"Retry-After": str(batcher.retry_after())},
        )
    start = time.monotonic()
    try:
        limit = int(config.max_upload_mb * 2**20)
        headers = request.headers
        read = read_upload(
            headers.get("content-type", ""), headers.get("content-length"), request.stream(), limit
        )
        try:
            data = await asyncio.wait_for(read, config.timeout)
        except asyncio.TimeoutError:
            raise ApiError(
                408, f"upload not received within {config.timeout:g} s", {"Connection": "close"}
            ) from None
        img = open_image(data, config.max_pixels)  # the header only
        image = await service.in_thread(decode_image, img)
        del data, img
        left = config.timeout - (time.monotonic() - start)
        try:
            parsed = await ticket.run(ParseJob(image, bool(find_faces)), left)
        except asyncio.TimeoutError:
            raise ApiError(504, f"no result within {config.timeout:g} s (--timeout)") from None
        except SegformerError as err:
            raise ApiError(422, str(err)) from None
        # Encoded while the request still holds its place in the queue: memory stays bounded.
        labels = service.predictor.label_set
        if output == "label":
            return Response(await service.in_thread(label_png, parsed, labels), media_type="image/png")
        if output == "overlay":
            body = await service.in_thread(overlay_png, image, parsed, labels)
            return Response(body, media_type="image/png")
        if output == "json":
            return JSONResponse(summary(parsed, labels))
        return JSONResponse(await service.in_thread(parts, image, parsed, labels))
    finally:
        ticket.close()
