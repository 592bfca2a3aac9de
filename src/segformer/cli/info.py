"""`segformer info MODEL`: parameters by component and FLOPs at a size, of a registered model or of any
loadable one (model directory, HF directory, ``.pth``, ``.onnx``), with the settings it carries."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import load
from ..config import parse_overrides
from ..inference.onnx import OnnxRuntimeModel
from ..inference.settings import InferenceSettings, model_settings
from ..models import build_model, create_model, list_models
from ..models.summary import format_table, summarize
from ..pretrained import is_tag
from . import add_set_option
from .types import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="parameters by component and FLOPs of a model",
        description="Print the parameters of MODEL by component (patch embeddings, blocks per stage, "
        "stage norms, decoder projections, fuse, classifier), the total, and the FLOPs of one "
        "forward pass at SIZE x SIZE. MODEL is a registered name or a model to load (model directory, "
        "HF directory, .pth, .onnx): those also show the inference settings they carry, and an "
        f".onnx file its inputs and outputs. Models: {', '.join(list_models())}.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="registered model name (e.g. microsegformer, segformer-b0), pretrained tag, model directory, "
        ".pth or .onnx",
    )
    p.add_argument(
        "--num-classes", type=positive_int, default=None, help="number of classes (default: the model's, 19)"
    )
    p.add_argument("--size", type=positive_int, default=512, help="square input size for FLOPs (default 512)")
    add_set_option(p, "KEY=VALUE", "override a config field, e.g. --set depths=[1,1,1,1] (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def _model(args: argparse.Namespace) -> tuple[nn.Module, InferenceSettings | None, dict[str, Any]]:
    """The model MODEL names, the settings it carries (None for a registered name) and what else is
    known about it."""
    overrides = parse_overrides(args.overrides)
    path = Path(args.model)
    if path.suffix == ".onnx":
        runtime = OnnxRuntimeModel(path)
        session = runtime.session
        io = {
            kind: [{"name": t.name, "shape": list(t.shape), "type": t.type} for t in tensors]
            for kind, tensors in (("inputs", session.get_inputs()), ("outputs", session.get_outputs()))
        }
        # The graph computes what its config builds: count on the PyTorch model of the same config.
        return build_model(runtime.config), model_settings(runtime, source=str(path)), {"onnx": io}
    if path.exists() or is_tag(args.model):  # a pretrained tag wins over the architecture's name
        model = load(args.model, args.num_classes, **overrides)
        fields = {f.name for f in dataclasses.fields(InferenceSettings)}
        meta = {k: v for k, v in model.meta.items() if k not in fields}
        return model, model_settings(model, source=str(path)), {"meta": meta}
    return create_model(args.model, num_classes=args.num_classes, **overrides), None, {}


def run(args: argparse.Namespace) -> int:
    model, settings, extra = _model(args)
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
            **({"settings": settings.to_dict()} if settings is not None else {}),
            **extra,
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.model}  ({model.config.num_classes} classes, FLOPs at {args.size}x{args.size}, batch 1)")
    print(format_table(rows))
    for kind in ("inputs", "outputs"):
        for t in extra.get("onnx", {}).get(kind, []):
            print(f"{kind[:-1]} {t['name']}: {t['type']} {t['shape']}")
    if settings is not None:
        (h, w), ls = settings.image_size, settings.label_set
        assert ls is not None  # resolved for the model
        print(
            f"settings: {h}x{w} px, {settings.eval_mode}, TTA {settings.tta}, label set {ls.name} "
            f"({ls.num_classes} classes), mean {list(settings.mean)}, std {list(settings.std)}"
        )
    for key, value in extra.get("meta", {}).items():
        print(f"{key}: {json.dumps(value)}")
    return 0
