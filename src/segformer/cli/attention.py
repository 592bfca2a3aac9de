"""`segformer attention MODEL IMAGE --out DIR`: attention maps per stage, with and without SR for stage 1."""

from __future__ import annotations

import argparse
import math

from . import add_threads_option
from .options import add_image_size_option


def parse_point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected X,Y in image pixels, e.g. 256,240") from None
    if not (math.isfinite(x) and math.isfinite(y) and x >= 0 and y >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: X,Y must be pixel coordinates >= 0")
    return x, y


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention",
        help="attention maps of each encoder stage for query points, overlaid on an image",
        description="Run MODEL (a model directory, HF directory or .pth that `segformer.load` reads) on "
        "IMAGE at its working size and write OUT/stage1.png ... (heatmaps of softmax(q k^T / sqrt(d)) of "
        "the query points over the keys of each stage's last block, mean over heads), "
        "OUT/stage1_sr_vs_full.png (stage 1 with sequence reduction, as the model runs, beside the same "
        "query over un-reduced full-resolution keys) and OUT/attention.json.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="model directory, pretrained tag, HF directory or .pth file"
    )
    p.add_argument("image", metavar="IMAGE", help="image file to query")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the figures and attention.json")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out holding other files (they are kept)",
    )
    p.add_argument(
        "--point",
        dest="points",
        action="append",
        type=parse_point,
        metavar="X,Y",
        help="query pixel in IMAGE coordinates (repeatable; default: centre and two eye-height points)",
    )
    add_image_size_option(p, "working size (default: the model's training size)", ("--size", "--img-size"))
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.attention import write_attention_maps
    from ..checkpoint import load

    paths = write_attention_maps(
        load(args.model), args.image, args.out, args.points, args.image_size, overwrite=args.overwrite
    )
    for path in paths:
        print(path)
    return 0
