"""Building models: `build_model` (a `ModelConfig` -> its module) and `create_model` (by name).

The registry itself (names -> `ModelConfig`, ``arch`` -> module class) lives in `segformer.config`, so
recipes are checked against it without torch; the model modules fill it when they are imported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config import (
    ModelConfig,
    arch_class,
    get_config,
    list_models,
    model_description,
    register_arch,
    register_model,
)
from ..errors import SegformerError


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
    "build_model",
    "create_model",
    "final_classifier",
    "get_config",
    "list_models",
    "model_description",
    "register_arch",
    "register_model",
]
