"""`segformer serve [MODEL]`: the HTTP API and web page (`segformer.serve`) over one Predictor."""

from __future__ import annotations

import argparse
import os

from ..errors import SegformerError
from . import add_threads_option
from .options import RUNTIME, SETTINGS, add_inference_options, inference_overrides
from .types import nonneg_int, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..pretrained import DEFAULT_TAG

    p = sub.add_parser(
        "serve",
        help="an HTTP API and a web page that segment uploaded images",
        description="Serve MODEL (anything `segformer predict` takes; default the shipped "
        f"{DEFAULT_TAG}) over HTTP: POST /v1/parse answers the label map PNG of an image (byte for byte "
        "what `segformer predict` writes with the same settings; ?output=overlay|json|parts, ?faces=0), "
        "GET /v1/model the label set and settings, /healthz and /readyz the state, /docs the API, / a web "
        "page. Listens on loopback unless --host says otherwise, which needs a token. Concurrent requests "
        "are batched on one model thread; past --queue-size they are answered 503. Ctrl-C or SIGTERM "
        'lets the requests in flight finish and exits 0. Needs `pip install "segformer[serve]"`.',
    )
    p.add_argument("model", nargs="?", default=DEFAULT_TAG, help=f"the model (default {DEFAULT_TAG})")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=nonneg_int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--token",
        default=os.environ.get("SEGFORMER_TOKEN") or None,
        help="require 'Authorization: Bearer TOKEN' on every /v1 call (default: $SEGFORMER_TOKEN, which "
        "keeps it out of the process list; needed to listen beyond loopback). /healthz, /readyz, the page "
        "and the API docs stay open",
    )
    p.add_argument(
        "--no-token", action="store_true", help="listen beyond loopback without a token (anyone may use it)"
    )
    p.add_argument(
        "--max-upload-mb", type=positive_float, default=20.0, help="largest upload in MB (default 20)"
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=16_000_000,
        help="largest image in pixels, checked in its header before decoding (default 16000000)",
    )
    p.add_argument("--max-batch", type=positive_int, default=8, help="requests run together (default 8)")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill, ms (default 5)"
    )
    p.add_argument(
        "--queue-size",
        type=positive_int,
        default=32,
        help="requests in flight at most; more are answered 503 with Retry-After (default 32)",
    )
    p.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds a request may take (default 60)"
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN to call the API (repeatable; default: CORS off)",
    )
    p.add_argument("--quiet", action="store_true", help="no log line per request")
    add_inference_options(p, SETTINGS, RUNTIME)
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve import ServeConfig, model_card, serve
    except ImportError as err:
        raise SegformerError(
            f'segformer serve needs the serve extra ({err.name} is missing): pip install "segformer[serve]"'
        ) from None
    import torch

    from .. import Predictor

    config = ServeConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        no_token=args.no_token,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        timeout=args.timeout,
        threads=torch.get_num_threads(),  # what --threads chose (`segformer.cli.main`)
        cors_origins=tuple(args.cors_origin),
        access_log=not args.quiet,
    )
    config.check()  # before the model loads: a refusal costs nothing
    predictor = Predictor(args.model, **inference_overrides(args))  # as `segformer predict` builds it
    return serve(predictor, config, name=str(args.model), card=model_card(args.model))
