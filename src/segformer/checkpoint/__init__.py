"""Checkpoints: model directories of our own, and loading weights from any layout people have them in.

- `native`: our model directories (``config.json`` + ``model.safetensors``): `save_model`,
  `load_model`, and the helpers that make any wrapped model saveable (`unwrap`, `plain_state_dict`).
- `loader`: `load` (native, HF transformers and NVlabs/mmseg checkpoints, never unpickling code),
  `save` (native or HF) and `convert`; the key mappings are the pure functions of `segformer.convert`.
  `resolve_model` is the one place a model argument becomes a local path (path, tag, Hub id).
- `hub`: Hugging Face Hub ids (``org/name[@revision]``) fetched through huggingface_hub's cache, and
  folder uploads.
"""

from .hub import is_hub_id, parse_hub_id
from .loader import FORMATS, convert, load, resolve_model, save, torch_load_safe
from .native import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    is_model_dir,
    load_model,
    load_state_dict_strict,
    plain_state_dict,
    read_config,
    save_model,
    unwrap,
)

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMATS",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "convert",
    "is_hub_id",
    "is_model_dir",
    "load",
    "load_model",
    "load_state_dict_strict",
    "parse_hub_id",
    "plain_state_dict",
    "read_config",
    "resolve_model",
    "save",
    "save_model",
    "torch_load_safe",
    "unwrap",
]
