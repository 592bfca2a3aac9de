"""`segformer info MODEL`: parameters by component and FLOPs at a size, of a registered model or of any
loadable one (model directory, HF directory, ``.pth``, ``.onnx``, Hub id), with the settings it carries,
its classes (ids and colours) and the licence its model card states."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import is_hub_id, load, resolve_model
from ..checkpoint.card import find_card, licence_line, read_card
from ..config import parse_overrides
from ..inference.onnx import OnnxRuntimeModel
from ..inference.settings import InferenceSettings, model_settings
from ..models import build_model, create_model, list_models
from ..models.summary import format_table, summarize
from ..pretrained import is_tag
from . import add_set_option
from .options import add_image_size_option
from .types import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="parameters by component and FLOPs of a model",
        description="Print the parameters of MODEL by component (patch embeddings, blocks per stage, "
        "stage norms, decoder projections, fuse, classifier), the total, and the FLOPs of one "
        "forward pass at S x S (--image-size). MODEL is a registered name or a model to load (model "
        "directory, HF directory, .pth, .onnx, Hugging Face Hub id org/name[@revision]): those also show the "
        "inference settings they carry, their classes with ids and colours, the licence of their model "
        f"card, and an .onnx file its inputs and outputs. Models: {', '.join(list_models())}.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="registered model name (e.g. microsegformer, segformer-b0), pretrained tag, model directory, "
        ".pth, .onnx or Hub id (org/name)",
    )
    p.add_argument(
        "--num-classes", type=positive_int, default=None, help="number of classes (default: the model's, 19)"
    )
    add_image_size_option(p, "square input size for FLOPs (default 512)", old=("--size",), default=512)
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
    # A path, then a pretrained tag, then a Hub id win over the architecture's name (ids have a slash).
    if path.exists() or is_tag(args.model) or is_hub_id(args.model):
        local = resolve_model(args.model)
        model = load(local, args.num_classes, **overrides)
        fields = {f.name for f in dataclasses.fields(InferenceSettings)}
        meta = {k: v for k, v in model.meta.items() if k not in fields}
        card = find_card(local)
        licence = licence_line(read_card(card)) if card else "no model card"
        return model, model_settings(model, source=str(path)), {"meta": meta, "licence": licence}
    return create_model(args.model, num_classes=args.num_classes, **overrides), None, {}


def run(args: argparse.Namespace) -> int:
    model, settings, extra = _model(args)
    rows = summarize(model, args.image_size)
    total = rows[-1]
    if args.json:
        out = {
            "model": args.model,
            "num_classes": model.config.num_classes,
            "size": args.image_size,
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
            **({"classes": _classes(settings)} if settings is not None else {}),
            **extra,
        }
        print(json.dumps(out, indent=2))
        return 0
    side = args.image_size
    print(f"{args.model}  ({model.config.num_classes} classes, FLOPs at {side}x{side}, batch 1)")
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
        print("classes (id, name, colour):")
        width = max(map(len, ls.class_names))
        for c in _classes(settings):
            print(f"  {c['id']:>3}  {c['name']:<{width}}  {_hex(c['colour'])}  {tuple(c['colour'])}")
    if "licence" in extra:
        print(f"licence: {extra['licence']}")
    for key, value in extra.get("meta", {}).items():
        print(f"{key}: {json.dumps(value)}")
    return 0


def _classes(settings: InferenceSettings) -> list[dict[str, Any]]:
    """The classes the model predicts: id, name and palette colour (RGB)."""
    ls = settings.label_set
    assert ls is not None  # resolved for the model
    return [
        {"id": i, "name": name, "colour": list(rgb)}
        for i, (name, rgb) in enumerate(zip(ls.class_names, ls.palette, strict=True))
    ]


def _hex(rgb: list[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
