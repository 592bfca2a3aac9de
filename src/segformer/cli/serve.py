"""`segformer serve [MODEL]`: the HTTP API and web page (`segformer.serve`) over one Predictor."""

from __future__ import annotations

import argparse
import os

from ..errors import SegformerError
from . import add_threads_option
from .options import RUNTIME, SETTINGS, add_inference_options, config_from_args, inference_overrides
from .types import nonneg_float, nonneg_int, positive_float, positive_int

# The server's limits, each set on the `ServeConfig` field of the same name: (flag, type, default, help).
LIMITS = (
    ("--max-upload-mb", positive_float, 20.0, "largest upload in MB"),
    (
        "--max-pixels",
        positive_int,
        16_000_000,
        "largest image in pixels, checked in its header before decoding",
    ),
    ("--max-batch", positive_int, 8, "requests run together"),
    ("--max-wait-ms", nonneg_float, 5.0, "how long a batch waits to fill, ms"),
    ("--queue-size", positive_int, 32, "requests in flight at most; more are answered 503 with Retry-After"),
    ("--timeout", positive_float, 60.0, "seconds a request may take"),
)


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
    for flag, kind, default, what in LIMITS:
        shown = format(default, "g") if isinstance(default, float) else default
        p.add_argument(flag, type=kind, default=default, help=f"{what} (default {shown})")
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

    config = config_from_args(
        ServeConfig,
        args,
        threads=torch.get_num_threads(),  # what --threads chose (`segformer.cli.main`)
        cors_origins=tuple(args.cors_origin),
        access_log=not args.quiet,
    )
    config.check()  # before the model loads: a refusal costs nothing
    predictor = Predictor(args.model, **inference_overrides(args))  # as `segformer predict` builds it
    return serve(predictor, config, name=str(args.model), card=model_card(args.model))
