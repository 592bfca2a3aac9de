"""`segformer convert SRC --out DIR [--to native|hf]`: HF / NVlabs / native checkpoints in and out."""

from __future__ import annotations

import argparse

from ..checkpoint import FORMATS, convert
from ..config import parse_overrides
from . import add_set_option
from .types import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert HF transformers / NVlabs .pth / native checkpoints",
        description="Load SRC (a native model directory, an HF transformers directory with config.json + "
        "model.safetensors or pytorch_model.bin, or an NVlabs/mmseg .pth) and write it to DIR as a native "
        "model directory or an HF transformers directory. Pickled files are only read with "
        "torch.load(weights_only=True); files that need more are refused.",
    )
    p.add_argument("src", metavar="SRC", help="checkpoint directory or .pth/.bin/.safetensors file")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory (never SRC or a folder inside it): a model an earlier convert wrote there "
        "is replaced; a folder holding other files is refused unless --overwrite, and they are kept",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that holds other files (they are kept: a file segformer convert did not "
        "write is never replaced)",
    )
    p.add_argument("--to", choices=FORMATS, default="native", help="output format (default native)")
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="classes of the decoder: required for encoder-only checkpoints (ImageNet MiT weights), "
        "re-initialises the classifier when it differs from the checkpoint's",
    )
    add_set_option(
        p,
        "KEY=VALUE",
        "set a config field the weights do not determine, e.g. --set num_heads=[1,2,3,4] (repeatable)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The output policy (segformer.fileio) is `convert`'s own: the model is written into a staging folder,
    # then its files are moved into DIR, each only where nothing but an earlier convert output is in the way.
    model = convert(
        args.src,
        args.out,
        to=args.to,
        num_classes=args.num_classes,
        overwrite=args.overwrite,
        **parse_overrides(args.overrides),
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out} ({args.to}): {params:,} parameters, {model.config.num_classes} classes")
    return 0
