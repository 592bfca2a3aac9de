"""Pretrained tags, timm-style: trained models shipped inside the package, loaded by name, offline.

``segformer.load("microsegformer-celebamask")`` reads ``segformer/pretrained/<file>``: ONE safetensors
file per model whose metadata (str -> str, JSON values) carries everything a model directory's
``config.json`` does::

    {"format": "segformer-pretrained", "format_version": "1",
     "model": "<ModelConfig JSON>", "meta": "<InferenceSettings + training record JSON>"}

Weights may be stored in float16 (half the wheel size); they are cast back to float32 on load.
`segformer export MODEL --format pretrained --out FILE [--fp16]` writes such a file and its model card
(`write_pretrained`). A tag names trained weights; an architecture name (``microsegformer``) builds
random weights with `segformer.create_model`. When both could be meant, a tag wins in `load`; an
existing path of that name wins over both.

The folder searched for the files is this package's ``pretrained/`` unless ``SEGFORMER_PRETRAINED_DIR``
names another (tests point it at tiny models).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from ..config import ModelConfig
from ..errors import SegformerError
from ..fileio import atomic_path

FORMAT = "segformer-pretrained"
FORMAT_VERSION = 1
DIR_ENV = "SEGFORMER_PRETRAINED_DIR"


@dataclass(frozen=True)
class PretrainedEntry:
    """A shipped model: its weights file and model card (names inside the pretrained folder)."""

    file: str
    card: str
    description: str


PRETRAINED: dict[str, PretrainedEntry] = {
    "microsegformer-celebamask": PretrainedEntry(
        file="microsegformer-celebamask.safetensors",
        card="microsegformer-celebamask.md",
        description=(
            "MicroSegFormer face parser (19 CelebAMask-HQ classes), trained on 810 of the 900 CE7454 "
            "training faces (90 held out)"
        ),
    ),
}
DEFAULT_TAG = "microsegformer-celebamask"
"""What `segformer predict IMAGES --out DIR` uses when no model is named."""


def pretrained_dir() -> Path:
    """The folder that holds the shipped files (``SEGFORMER_PRETRAINED_DIR`` overrides it)."""
    return Path(os.environ.get(DIR_ENV) or Path(__file__).parent)


def list_pretrained() -> list[str]:
    return sorted(PRETRAINED)


def is_tag(name: Any) -> bool:
    """Whether `name` is a pretrained tag rather than a path (an existing path of that name wins)."""
    return isinstance(name, (str, Path)) and str(name) in PRETRAINED and not Path(name).exists()


def pretrained_path(tag: str) -> Path:
    """The weights file of `tag`; a one-line error when this installation lacks it."""
    if tag not in PRETRAINED:
        raise SegformerError(f"unknown pretrained tag {tag!r}; shipped: {', '.join(list_pretrained())}")
    path = pretrained_dir() / PRETRAINED[tag].file
    if not path.is_file():
        raise SegformerError(f"this build ships no weights for {tag} (no {path})")
    return path


def is_pretrained_file(path: str | Path) -> bool:
    """Whether `path` is a safetensors file written by `write_pretrained`."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (OSError, SafetensorError):
        return False


def write_pretrained(model: nn.Module, path: str | Path, meta: dict[str, Any], fp16: bool = False) -> Path:
    """`model` (unwrapped, with ``model.config``) and `meta` (`InferenceSettings.to_dict` entries and
    the training record) as one safetensors file; floating-point tensors in float16 with `fp16`."""
    config: ModelConfig = model.config
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if fp16 and value.is_floating_point():
            value = value.half()
        state[key] = value.contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model": json.dumps(config.to_dict()),
        "meta": json.dumps(meta),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(save(state, metadata=metadata))
    return path


def read_pretrained(path: str | Path) -> tuple[ModelConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """The config, meta and float32 weights of a file `write_pretrained` wrote."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (OSError, SafetensorError) as err:
        raise SegformerError(f"{path}: cannot read weights ({err})") from None
    if metadata.get("format") != FORMAT:
        raise SegformerError(f'{path}: not a segformer pretrained file (no "format": "{FORMAT}")')
    version = metadata.get("format_version", "1")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise SegformerError(f"{path}: written by a newer segformer (format {version})")
    try:
        model_doc, meta = json.loads(metadata.get("model", "{}")), json.loads(metadata.get("meta", "{}"))
    except ValueError as err:
        raise SegformerError(f"{path}: invalid JSON in its metadata ({err})") from None
    if not isinstance(meta, dict):
        raise SegformerError(f"{path}: meta must be a mapping, got {meta!r}")
    try:
        config = ModelConfig.from_dict(model_doc)
    except SegformerError as err:
        raise SegformerError(f"{err} (in {path})") from None
    # float16 storage halves the file; the model computes in float32 like every other.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return config, meta, state


__all__ = [
    "DEFAULT_TAG",
    "DIR_ENV",
    "PRETRAINED",
    "PretrainedEntry",
    "is_pretrained_file",
    "is_tag",
    "list_pretrained",
    "pretrained_dir",
    "pretrained_path",
    "read_pretrained",
    "write_pretrained",
]
