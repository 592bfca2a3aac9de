"""The optimizer (AdamW or SGD over parameter groups) and learning-rate schedules.

Schedules are per optimizer step (smoother than per epoch, identical at epoch boundaries): a linear
warmup from ``warmup_start * lr`` to ``lr`` over the warmup steps, then one of

- ``cosine``: half a cosine from lr to ``min_lr_ratio * lr`` (the CE7454 seed recipe);
- ``constant``: lr;
- ``step``: lr multiplied by ``step_gamma`` at each fraction of training in ``step_milestones``;
- ``poly``: ``(1 - progress) ** poly_power`` decay to ``min_lr_ratio * lr`` (the SegFormer paper recipe).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..config import SCHEDULES, TrainConfig
from ..errors import SegformerError


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0, head_prefix: str = "decoder."
) -> list[dict]:
    """AdamW groups: no weight decay on norms and biases (every tensor with ndim <= 1), and the
    decoder ("head") at ``lr * head_lr_mult``."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (p.ndim <= 1, name.startswith(head_prefix))
        groups.setdefault(key, []).append(p)
    out = []
    for (no_decay, head), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr": lr * (head_lr_mult if head else 1.0),
                "name": f"{'head' if head else 'body'}{'_no_decay' if no_decay else ''}",
            }
        )
    return out


def build_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of `tc` over `param_groups`, fused: one kernel per step, and a step that skips
    itself on the device when ``optimizer.found_inf`` is set (the way `torch.amp.GradScaler` skips
    steps), so that a non-finite loss needs no host synchronisation to be skipped."""
    groups = param_groups(model, tc.lr, tc.weight_decay, tc.head_lr_mult)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas), fused=True)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, fused=True)
    raise SegformerError(f"unknown optimizer {tc.optimizer!r} (expected adamw or sgd)")


def lr_factor(
    step: int,
    total_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    warmup_start: float = 1e-3,
    min_lr_ratio: float = 0.0,
    step_milestones: Sequence[float] = (0.6, 0.85),
    step_gamma: float = 0.1,
    poly_power: float = 1.0,
) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based) of `total_steps`."""
    if schedule not in SCHEDULES:
        raise SegformerError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return step_gamma ** sum(progress >= m for m in step_milestones)
    if schedule == "poly":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress) ** poly_power
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's lr to its base lr (``group["base_lr"]``, recorded on first use) x `factor`."""
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * factor
