"""Other implementations of our networks holding the same weights, to time and check ours against."""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..convert.hf import HF_LAYER_NORM_EPS
from ..errors import SegformerError
from ..models import create_model

REFERENCES = {
    "hf": "segformer.bench.references:hf_reference",
    "seed": "segformer.bench.seed:seed_reference",
    "int8": "segformer.bench.references:int8_reference",
    "none": "",
}


@dataclass
class Reference:
    """Another implementation of the same network: ``forward`` maps images to logits at the input
    size (eval mode), ``loss`` maps images and labels to a training loss (train mode)."""

    name: str
    module: nn.Module
    forward: Callable[[Tensor], Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    notes: list[str] = field(default_factory=list)
    """Lines the report adds about this side."""


def hf_reference(model: nn.Module) -> Reference:
    """transformers' SegformerForSemanticSegmentation with `model`'s weights (SegFormer variants only)."""
    try:
        import transformers
    except ImportError:
        raise SegformerError("--compare hf needs transformers: pip install segformer[hf]") from None
    from ..checkpoint import save

    with tempfile.TemporaryDirectory() as tmp:  # through our HF writer and transformers' own loader
        save(model, tmp, format="hf")
        hf, info = transformers.SegformerForSemanticSegmentation.from_pretrained(
            tmp, output_loading_info=True
        )
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise SegformerError(f"transformers did not take every weight: {info}")

    def forward(x: Tensor) -> Tensor:
        logits = hf(pixel_values=x).logits  # stride 4
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def loss(x: Tensor, y: Tensor) -> Tensor:
        return hf(pixel_values=x, labels=y).loss  # CE on logits upsampled to the labels, ignore 255

    return Reference("hf transformers", hf, forward, loss)


def int8_reference(model: nn.Module) -> Reference:
    """`model` as ``segformer export --format onnx --quantize int8`` writes it (calibrated on synthetic
    faces, `segformer.inference.quantize`), run by ONNX Runtime: set it against ``--backend
    onnxruntime``, the float graph, for the speed and size int8 gives (inference only)."""
    from ..inference.onnx import OnnxRuntimeModel, onnx_bytes
    from ..inference.quantize import quantize_onnx
    from ..inference.settings import model_settings

    settings = model_settings(model)
    data = onnx_bytes(model, {"config": model.config.to_dict(), "meta": settings.to_dict()})
    # Fresh weights agree with float however they agree: timed, not judged (the export judges).
    int8, report = quantize_onnx(data, settings, min_agreement=0.0)
    runtime = OnnxRuntimeModel(int8)

    def loss(x: Tensor, y: Tensor) -> Tensor:
        raise SegformerError("--compare int8 times inference only (--mode infer)")

    note = (
        f"ONNX file: int8 {len(int8) / 2**20:.2f} MiB, float {len(data) / 2**20:.2f} MiB "
        f"({len(data) / len(int8):.1f}x smaller); int8 class ids agree with float on "
        f"{report['agreement']:.2%} of the pixels of {report['calibration']}"
    )
    return Reference("onnxruntime int8", model, runtime, loss, [note])


def load_reference(compare: str) -> Callable[[nn.Module], Reference] | None:
    """The factory named by `compare`: a key of `REFERENCES` or ``"module:function"``; None for none."""
    spec = REFERENCES.get(compare, compare)
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise SegformerError(
            f"unknown comparison {compare!r}: use {', '.join(REFERENCES)} or module:function"
        ) from None


def comparable_model(
    name: str, num_classes: int | None, compare: str, overrides: dict[str, Any] | None = None
) -> nn.Module:
    """A registered model with fresh weights and config `overrides`; for ``compare="hf"`` with
    transformers' LayerNorm eps (1e-5 everywhere), so that both sides compute the same function."""
    overrides = dict(overrides or {})
    if compare == "hf":
        overrides.update(norm_eps=HF_LAYER_NORM_EPS, embed_norm_eps=HF_LAYER_NORM_EPS)
    return create_model(name, num_classes=num_classes, **overrides)
