"""segformer: SegFormer (MiT-B0..B5 + All-MLP decoder) and MicroSegFormer for semantic segmentation.

The names below are imported when first used (PEP 562): ``import segformer`` alone does not load torch,
so the `segformer` command can answer Ctrl-C, ``--help`` and usage errors before the seconds that
importing torch takes."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import SegformerError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "load": ".checkpoint",
    "save": ".checkpoint",
    "ModelConfig": ".config",
    "Predictor": ".inference.predictor",
    "InferenceSettings": ".inference.settings",
    "part_masks": ".inference.parts",
    "cutout": ".inference.parts",
    "create_model": ".models",
    "list_models": ".models",
}

__all__ = [
    "InferenceSettings",
    "ModelConfig",
    "Predictor",
    "SegformerError",
    "__version__",
    "create_model",
    "cutout",
    "list_models",
    "load",
    "part_masks",
    "save",
]

if TYPE_CHECKING:
    from .checkpoint import load, save
    from .config import ModelConfig
    from .inference.parts import cutout, part_masks
    from .inference.predictor import Predictor
    from .inference.settings import InferenceSettings
    from .models import create_model, list_models


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
