"""Model definitions. Importing this package registers every model."""

from . import segformer as _segformer  # noqa: F401  (registers the SegFormer variants)
from . import unet as _unet  # noqa: F401  (registers the U-Net baseline)
from .registry import (
    arch_class,
    build_model,
    create_model,
    get_config,
    list_archs,
    list_models,
    model_description,
)
from .segformer import SegFormer
from .unet import UNet

__all__ = [
    "SegFormer",
    "UNet",
    "arch_class",
    "build_model",
    "create_model",
    "get_config",
    "list_archs",
    "list_models",
    "model_description",
]
