"""Building models: `build_model` (a `ModelConfig` -> its module) and `create_model` (by name).

The registry itself (names -> `ModelConfig`, ``arch`` -> module class) lives in `segformer.config`, so
recipes are checked against it without torch; the model modules fill it when they are imported.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import (
    ModelConfig,
    arch_class,
    get_config,
    list_models,
    model_description,
    register_arch,
    register_model,
)


def build_model(config: ModelConfig) -> nn.Module:
    """Build the module described by `config` (weights freshly initialised from torch's RNG).

    This is the one place a config becomes a module: `create_model`, checkpoint loading, training
    and the CE7454 ``run.py`` all build through it.
    """
    return arch_class(config.arch)(config)


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


__all__ = [
    "build_model",
    "create_model",
    "get_config",
    "list_models",
    "model_description",
    "register_arch",
    "register_model",
]
