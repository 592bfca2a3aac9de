"""segformer: SegFormer (MiT-B0..B5 + All-MLP decoder) and MicroSegFormer for semantic segmentation."""

from .checkpoint import load, save
from .config import ModelConfig
from .errors import SegformerError
from .inference.predictor import Predictor
from .inference.settings import InferenceSettings
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "InferenceSettings",
    "ModelConfig",
    "Predictor",
    "SegformerError",
    "__version__",
    "create_model",
    "list_models",
    "load",
    "save",
]
