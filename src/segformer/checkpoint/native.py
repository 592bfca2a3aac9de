"""Native model directories: ``config.json`` + ``model.safetensors``.

A model directory holds everything needed to rebuild and use a model without this package's training
code: the `ModelConfig`, the weights (safetensors, so loading never unpickles anything) and a `meta`
mapping: the `InferenceSettings` (working size, normalisation, mode, label set, TTA) and what training
records about the run (epoch, scores, data split). Directories written before the settings existed
hold the same entries (the label set by name); `InferenceSettings.from_meta` reads both.

``config.json``::

    {"format": "segformer", "format_version": 1, "model": {...ModelConfig...}, "meta": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ..config import ModelConfig
from ..errors import SegformerError
from ..fileio import atomic_dir
from ..models import build_model

FORMAT = "segformer"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors of the unwrapped model (no `module.`/`_orig_mod.` prefixes)."""
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def is_model_dir(path: str | Path) -> bool:
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        return False
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    """`state` as a safetensors file. Serialised in memory and written by Python, so that a full disk
    is an `OSError` naming the system's reason (safetensors' own writer reports it as a string)."""
    path.write_bytes(save(state, metadata={"format": "pt"}))


def save_model(
    model: nn.Module, directory: str | Path, meta: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Write `model` as a native model directory (atomically replacing a model directory there).

    `meta` is merged over the model's own ``model.meta`` (if any) and stored in config.json: the
    model's `InferenceSettings` (``InferenceSettings.to_dict()`` entries) and whatever else describes
    it (training writes ``epoch``, ``scores`` and the ``data`` split). A non-empty `directory` that is
    not a model directory is refused; with `overwrite` the model is written next to the files there,
    which are kept (see `segformer.fileio.check_output_dir`).
    """
    model = unwrap(model)
    config: ModelConfig = model.config
    merged = {**getattr(model, "meta", {}), **(meta or {})}
    directory = Path(directory)
    with atomic_dir(directory, "model", overwrite) as tmp:
        write_safetensors(tmp / WEIGHTS_FILE, plain_state_dict(model))
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config.to_dict(), "meta": merged}
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The `ModelConfig` and `meta` of a native model directory; a wrong type in any field is a
    `SegformerError` naming the file and the field."""
    path = Path(directory) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except OSError as err:
        raise SegformerError(f"{path}: cannot read ({err.strerror or err})") from None
    except ValueError as err:
        raise SegformerError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SegformerError(f'{path}: not a segformer model config (no "format": "{FORMAT}")')
    version = doc.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise SegformerError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise SegformerError(f"{path}: written by a newer segformer (format {version})")
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        raise SegformerError(f'{path}: "meta" must be a mapping, got {meta!r}')
    try:
        config = ModelConfig.from_dict(doc.get("model", {}))
    except SegformerError as err:  # names the field (model.<field>: ...); the file goes last
        raise SegformerError(f"{err} (in {path})") from None
    return config, dict(meta)


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict` whose missing, unexpected or mis-shaped keys become a `SegformerError`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:3]}")
        raise SegformerError(f"{source}: weights do not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state)


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a native model directory, in eval mode, with ``model.meta`` set."""
    directory = Path(directory)
    config, meta = read_config(directory)
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device=str(device))
    except (OSError, SafetensorError) as err:
        raise SegformerError(f"{weights}: cannot read weights ({err})") from None
    model = build_model(config)
    load_state_dict_strict(model, state, str(weights))
    model.meta = meta
    return model.to(device).eval()
