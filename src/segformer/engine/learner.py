"""One optimizer step: the `Learner` (model, optimizer, loss, mixed precision, the EMA of the weights)
and what it needs around it.

Nothing in a step waits for the device: the loss is accumulated on the device, a step with a
non-finite loss (on any process) is skipped by the optimizer itself, and the EMA update leaves the
average unchanged after a skipped step.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..config import ModelConfig, TrainConfig
from ..data.balance import class_weights
from ..data.batch_augment import BatchAugment
from ..devices import has_fast_bf16
from ..errors import SegformerError
from ..models.registry import adjust_logits, build_model, final_classifier
from ..runtime import check_memory, peak_memory
from .data import TrainData, to_device_batch
from .losses import SegmentationLoss
from .optim import build_optimizer

AUTOCAST_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        amp = "bf16" if has_fast_bf16(device) else "none"
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise SegformerError("amp fp16 needs a CUDA device; use bf16 on CPU")
        return torch.float16
    raise SegformerError(f"unknown amp mode {amp!r} (expected none, auto, bf16 or fp16)")


@dataclass
class Learner:
    """What an optimizer step touches: the model (plain, and wrapped for DDP / torch.compile),
    optimizer, loss, mixed precision and the EMA of the weights."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    device: torch.device
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
    ema_decay: float = 0.0
    grad_clip: float = 0.0
    channels_last: bool = False
    augment: BatchAugment | None = None  # augmentation on the device (`TrainData.batch_augment`)

    def step(self, batches: Iterable[tuple[Tensor, Tensor]], accum: int) -> tuple[Tensor, Tensor]:
        """One optimizer step over `accum` micro-batches; returns the step's loss and 1.0 when the
        step was skipped because the loss or the gradients were not finite on some process, both
        on the device (nothing here waits for it)."""
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(itertools.islice(batches, accum)):
            images, masks = to_device_batch(batch, self.device, self.channels_last, self.augment)
            # DDP all-reduces gradients on the last micro-batch only
            accumulating = i < accum - 1 and isinstance(self.net, DistributedDataParallel)
            with (
                self.net.no_sync() if accumulating else nullcontext(),
                torch.autocast(
                    self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
                ),
            ):
                loss = self.criterion(self.net(images), masks) / accum
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += loss.detach().float()
        skip = (~torch.isfinite(loss_sum)).float()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            if self.scaler is None:  # (fp16 overflows are the scaler's to handle)
                skip = torch.maximum(skip, (~torch.isfinite(norm)).float())
        # Every process must take the same decision, or their weights part ways.
        distributed.all_reduce_max([skip])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips on non-finite gradients, as NaN losses give
            self.scaler.update()
        else:
            self.optimizer.found_inf = skip  # the fused optimizer skips the step on the device
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            update_ema(self.ema, self.model, self.ema_decay, skip)
        return loss_sum, skip


def update_ema(
    ema: torch.optim.swa_utils.AveragedModel, model: nn.Module, decay: float, skip: Tensor
) -> None:
    """What ``ema.update_parameters(model)`` computes with `get_ema_multi_avg_fn` (a copy at the first
    update, then ``lerp(ema, model, 1 - decay)``), without its host synchronisations, and leaving the
    average unchanged after a skipped step (`skip` = 1, on the device)."""
    first = int(ema.n_averaged) == 0  # (a CPU counter)
    weight = (1.0 - skip) * (1.0 if first else 1.0 - decay)
    averaged = list(itertools.chain(ema.module.parameters(), ema.module.buffers()))
    current = list(itertools.chain(model.parameters(), model.buffers()))
    floats = [
        (a.detach(), c.detach()) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()
    ]
    if floats:
        torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
    for a, c in zip(averaged, current, strict=True):
        if not a.is_floating_point():
            a.detach().copy_(c.detach())  # counters such as BatchNorm's num_batches_tracked
    ema.n_averaged += 1


def build_learner(model: nn.Module, tc: TrainConfig, data: TrainData, device: torch.device) -> Learner:
    dtype = amp_dtype(tc.amp, device)
    net: nn.Module = model
    if distributed.world_size() > 1:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)
    ema = None
    if tc.ema > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema), use_buffers=True
        )
    criterion = SegmentationLoss(
        tc.loss,
        tc.dice_weight,
        data.label_set.ignore_index,
        label_smoothing=tc.label_smoothing,
        dice_classes=tc.dice_classes,
        boundary_weight=tc.boundary_weight,
        boundary_width=tc.boundary_width,
        class_weight=class_weights(data.class_pixels) if tc.class_weight == "sqrt_inv_freq" else None,
    ).to(device)
    return Learner(
        model=model,
        net=net,
        optimizer=build_optimizer(model, tc),
        criterion=criterion,
        device=device,
        dtype=dtype,
        scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        ema=ema,
        ema_decay=tc.ema,
        grad_clip=tc.grad_clip,
        channels_last=tc.channels_last,
        augment=data.batch_augment,
    )


@functools.lru_cache(maxsize=16)
def step_memory(config: ModelConfig, batch: int, image_size: int, optimizer_states: int, ema: bool) -> int:
    """Bytes a training step of `config` on `batch` images of `image_size` px holds at its peak
    (float32, `segformer.runtime.peak_memory`), with the optimizer's `optimizer_states` copies of the
    weights and the EMA's copy."""
    with torch.device("meta"):
        model = build_model(config)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    shape = (batch, config.in_channels, image_size, image_size)
    return peak_memory(model, shape, train=True) + params * (optimizer_states + ema)


def check_step_memory(
    config: ModelConfig, tc: TrainConfig, batch: int, image_size: int, device: torch.device
) -> None:
    """Refuse, before anything is allocated, a training step that cannot fit in the memory `device`
    has available (one line, with the estimate): an image size or batch far too large fails here
    rather than in the allocator, minutes later or with the machine swapping."""
    needed = step_memory(config, batch, image_size, 2 if tc.optimizer == "adamw" else 1, tc.ema > 0)
    check_memory(
        needed,
        f"training at data.image_size={image_size} with {batch} images per step (estimated; lower "
        "--image-size, or --batch-size / train.grad_accum)",
        device,
    )


def class_weight_of(learner: Learner) -> Tensor | None:
    """The loss's class weights (``train.class_weight``) on the CPU; None without them."""
    weight = getattr(learner.criterion, "class_weight", None)
    return None if weight is None else weight.detach().cpu()


@contextmanager
def logit_adjusted(model: nn.Module, weight: Tensor | None, strength: float) -> Iterator[None]:
    """`model` with its logits adjusted for the class weights `weight` (`adjust_logits`) inside the
    block; its classifier's bias is restored exactly afterwards."""
    if not strength or weight is None:
        yield
        return
    bias = final_classifier(model).bias
    saved = bias.detach().clone()
    adjust_logits(model, weight, strength)
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


__all__ = [
    "AUTOCAST_NAMES",
    "Learner",
    "amp_dtype",
    "build_learner",
    "check_step_memory",
    "class_weight_of",
    "logit_adjusted",
    "step_memory",
    "update_ema",
]
