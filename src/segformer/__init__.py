"""segformer: SegFormer (MiT-B0..B5 + All-MLP decoder) and MicroSegFormer for semantic segmentation."""

from .config import ModelConfig
from .convert import load, save
from .errors import SegformerError
from .inference import Predictor
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "ModelConfig",
    "Predictor",
    "SegformerError",
    "__version__",
    "create_model",
    "list_models",
    "load",
    "save",
]
