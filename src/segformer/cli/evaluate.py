"""`segformer eval MODEL_DIR --data ROOT`: score a trained model on a dataset split."""

from __future__ import annotations

import argparse
import json

from . import add_threads_option
from .options import add_inference_options, inference_overrides
from .types import nonneg_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a model on a dataset split (CE7454 F-score, mIoU, F1, per class)",
        description="Evaluate MODEL (a model directory or a pretrained tag) on a labelled split of ROOT "
        "at each mask's resolution. For a folder dataset without ROOT/val, --split val is the seeded "
        "hold-out of train that training used. Prints a per-class table, or one JSON object with --json.",
    )
    p.add_argument("model", metavar="MODEL", help="model directory (e.g. RUN/best) or pretrained tag")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root")
    p.add_argument("--split", default="val", help="split to score (default val)")
    add_inference_options(p, ("tta", "scales", "image_size", "eval_mode", "postprocess"))
    p.add_argument(
        "--fix-mirrored",
        action="store_true",
        help="score masks whose every left/right pair is on the wrong side (mirrored annotations) with "
        "the sides swapped back, as training validates with data.fix_mirrored (default: as on disk)",
    )
    add_inference_options(p, (), ("batch_size", "device"), batch_size=4)
    p.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load
    from ..engine.evaluate import evaluate_model
    from ..metrics import format_per_class

    model = load(args.model, device=args.device)
    overrides = inference_overrides(args)
    scores = evaluate_model(
        model,
        args.data,
        args.split,
        workers=args.workers,
        progress=not args.json,
        fix_mirrored=args.fix_mirrored,
        **overrides,
    )
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        fixed = f", {scores['mirrored_fixed']} mirrored masks swapped back" if args.fix_mirrored else ""
        print(
            f"{args.model} on {args.data} [{args.split}], tta={scores['tta']}, {scores['img_size']}px{fixed}"
        )
        print(format_per_class(scores))
    return 0
