"""Model definitions. Importing this package registers every model."""

from . import segformer as _segformer  # noqa: F401  (registers the SegFormer variants)
from .registry import build_model, create_model, get_config, list_models, model_description
from .segformer import SegFormer

__all__ = ["SegFormer", "build_model", "create_model", "get_config", "list_models", "model_description"]
