"""`segformer info MODEL`: parameters by component and FLOPs at a size."""

from __future__ import annotations

import argparse
import json

from ..config import parse_overrides
from ..models import create_model, list_models
from ..summary import format_table, summarize
from . import add_set_option
from .types import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="parameters by component and FLOPs of a model",
        description="Print the parameters of MODEL by component (patch embeddings, blocks per stage, "
        "stage norms, decoder projections, fuse, classifier), the total, and the FLOPs of one "
        f"forward pass at SIZE x SIZE. Models: {', '.join(list_models())}.",
    )
    p.add_argument("model", metavar="MODEL", help="registered model name, e.g. microsegformer, segformer-b0")
    p.add_argument(
        "--num-classes", type=positive_int, default=None, help="number of classes (default: the model's, 19)"
    )
    p.add_argument("--size", type=positive_int, default=512, help="square input size for FLOPs (default 512)")
    add_set_option(p, "KEY=VALUE", "override a config field, e.g. --set depths=[1,1,1,1] (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = create_model(args.model, num_classes=args.num_classes, **parse_overrides(args.overrides))
    rows = summarize(model, args.size)
    total = rows[-1]
    if args.json:
        out = {
            "model": args.model,
            "num_classes": model.config.num_classes,
            "size": args.size,
            "params": total.params,
            "gflops": total.flops / 1e9,
            "gmacs": total.flops / 2e9,
            "components": [
                {
                    "component": r.component,
                    "params": r.params,
                    "gflops": None if r.flops is None else r.flops / 1e9,
                }
                for r in rows
            ],
            "config": model.config.to_dict(),
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.model}  ({model.config.num_classes} classes, FLOPs at {args.size}x{args.size}, batch 1)")
    print(format_table(rows))
    return 0
