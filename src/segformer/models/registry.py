"""The model registry (names -> `ModelConfig`, ``arch`` -> module class) and building models:
`build_model` (a `ModelConfig` -> its module) and `create_model` (by name).

The model modules fill the registry when they are imported (`register_arch`, `register_model`). The
config, below the models, checks a recipe's ``model.name``, ``arch`` and ``decoder`` against it through
the lookups this module hands down (`segformer.config.validate.provide`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..config.validate import provide
from ..errors import SegformerError

T = TypeVar("T")

_MODELS: dict[str, tuple[ModelConfig, str]] = {}
_ARCHS: dict[str, tuple[Callable[[ModelConfig], Any], tuple[str, ...]]] = {}


def register_arch(arch: str, decoders: Iterable[str] = ()) -> Callable[[T], T]:
    """Class decorator: `ModelConfig.arch` == `arch` is built by this class. `decoders` are the
    ``ModelConfig.decoder`` kinds it builds (none: the class has no choice of decoder)."""

    def wrap(cls: T) -> T:
        _ARCHS[arch] = (cls, tuple(decoders))  # type: ignore[assignment]
        return cls

    return wrap


def arch_class(arch: str) -> Callable[[ModelConfig], Any]:
    """The module class registered for `arch`."""
    if arch not in _ARCHS:
        raise SegformerError(f"model.arch: unknown arch {arch!r}; registered: {', '.join(_ARCHS)}")
    return _ARCHS[arch][0]


def list_archs() -> list[str]:
    return list(_ARCHS)


def arch_decoders(arch: str) -> tuple[str, ...]:
    """The ``ModelConfig.decoder`` kinds `arch` builds (empty: it has no choice of decoder)."""
    return _ARCHS[arch][1] if arch in _ARCHS else ()


def register_model(name: str, config: ModelConfig, description: str = "") -> None:
    """Make `config` available to `create_model(name)` and to recipes as ``model.name``."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = (config, description)


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


provide("model.arch", list_archs)
provide("model.decoders", arch_decoders)
provide("model.name", get_config)


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


def final_classifier(model: nn.Module) -> nn.Conv2d:
    """The 1x1 convolution that turns a model's features into class logits (``decoder.classifier``
    of the SegFormer family, ``classifier`` of the U-Net)."""
    classifier = getattr(getattr(model, "decoder", model), "classifier", None)
    if not isinstance(classifier, nn.Conv2d) or classifier.bias is None:
        raise SegformerError(f"{type(model).__name__} has no final classifier with a bias")
    return classifier


def adjust_logits(model: nn.Module, weight: Tensor, strength: float) -> None:
    """Lower `model`'s logit of class c by ``strength * log(weight[c])``, in its classifier's bias.

    A cross entropy weighted by ``weight`` shifts each logit by ``log weight[c]`` at its optimum, so
    the classes it up-weights win more pixels than they own (recall above precision); `strength` 1
    takes that shift back out (post-hoc logit adjustment), 0.5 half of it.
    """
    bias = final_classifier(model).bias
    if weight.shape != bias.shape:
        raise SegformerError(f"{len(weight)} class weights for a model of {len(bias)} classes")
    with torch.no_grad():
        bias.sub_(strength * torch.log(weight.to(bias.device, torch.float32)).to(bias.dtype))


__all__ = [
    "adjust_logits",
    "arch_class",
    "arch_decoders",
    "build_model",
    "create_model",
    "final_classifier",
    "get_config",
    "list_archs",
    "list_models",
    "model_description",
    "register_arch",
    "register_model",
]
