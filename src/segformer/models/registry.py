"""Model registry: names -> `ModelConfig`, architectures -> module classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..config import ModelConfig
from ..errors import SegformerError

_MODELS: dict[str, tuple[ModelConfig, str]] = {}
_ARCHS: dict[str, type[nn.Module]] = {}


def register_model(name: str, config: ModelConfig, description: str = "") -> None:
    """Make `config` available to `create_model(name)`."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = (config, description)


def register_arch(arch: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: `build_model` builds configs with ``arch == arch`` with this class."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        _ARCHS[arch] = cls
        return cls

    return wrap


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def model_description(name: str) -> str:
    return _MODELS[name][1] if name in _MODELS else ""


def get_config(name: str, num_classes: int | None = None, **overrides: Any) -> ModelConfig:
    """The registered config of `name` with `num_classes` and field `overrides` applied."""
    if name not in _MODELS:
        raise SegformerError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    config = _MODELS[name][0]
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return config.replace(**overrides) if overrides else config


def build_model(config: ModelConfig) -> nn.Module:
    """Build the module described by `config` (weights freshly initialised from torch's RNG)."""
    return _ARCHS[config.arch](config)


def create_model(name: str | ModelConfig, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model by name (or from a `ModelConfig`), with config fields overridden.

    >>> model = create_model("microsegformer", num_classes=19)
    >>> model = create_model("segformer-b0", num_classes=150, drop_path_rate=0.0)
    """
    if isinstance(name, ModelConfig):
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return build_model(name.replace(**overrides) if overrides else name)
    return build_model(get_config(name, num_classes, **overrides))
