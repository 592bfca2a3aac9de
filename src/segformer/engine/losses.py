"""Segmentation losses on logits ``(B, K, h, w)`` and labels ``(B, H, W)``; all honour the ignore index.

Logits smaller than the labels (the stride-4 output of the decoder) are upsampled bilinearly to the
label size first (SPEC.md 1.2).

- cross entropy;
- soft Dice over the softmax (the CE7454 seed's formula): ``1 - mean_c (2 sum p_c y_c + eps) /
  (sum p_c + sum y_c + eps)`` with sums over the valid pixels of each image, averaged over all K
  classes and then over the images of the batch;
- CE + lambda * Dice (the seed recipe, lambda = 0.5);
- focal loss (Lin et al., ICCV 2017), ``-(1 - p_t)^gamma log p_t`` averaged over valid pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SegformerError

LOSSES = ("ce", "dice", "ce+dice", "focal")


def _match_size(logits: Tensor, target: Tensor) -> Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def dice_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, eps: float = 1.0) -> Tensor:
    """Soft multi-class Dice loss over the softmax: per image, averaged over classes, then images.

    Per-image sums (the seed's formula) make the loss of a batch the mean of its images' losses, so
    data-parallel training on equal shards computes exactly the single-process gradient.
    """
    b, k = logits.shape[:2]
    probs = logits.float().softmax(1)
    valid = target != ignore_index  # (B, H, W)
    labels = torch.where(valid, target, 0).long()
    # sum_pixels p_c * y_c is the probability of the true class summed per (image, class): gather +
    # scatter-add instead of materialising a (B, K, H, W) one-hot tensor.
    p_true = probs.gather(1, labels.unsqueeze(1)).squeeze(1)[valid]
    slot = (torch.arange(b, device=labels.device)[:, None, None] * k + labels)[valid]  # image * K + class
    inter = torch.zeros(b * k, dtype=probs.dtype, device=probs.device).index_add(0, slot, p_true)
    label_count = torch.bincount(slot, minlength=b * k).to(probs.dtype)
    prob_sum = (probs * valid.unsqueeze(1)).sum((2, 3))  # (B, K)
    dice = (2.0 * inter.view(b, k) + eps) / (prob_sum + label_count.view(b, k) + eps)
    return 1.0 - dice.mean()


def focal_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, gamma: float = 2.0) -> Tensor:
    """Focal loss averaged over valid pixels (0 when there are none)."""
    logp = F.log_softmax(logits.float(), 1)
    valid = target != ignore_index
    safe = torch.where(valid, target, 0).long().unsqueeze(1)
    logp_t = logp.gather(1, safe).squeeze(1)
    loss = -((1.0 - logp_t.exp()) ** gamma) * logp_t
    return (loss * valid).sum() / valid.sum().clamp(min=1)


class SegmentationLoss(nn.Module):
    """One of `LOSSES`, called as ``loss(logits, target)``; returns a scalar."""

    def __init__(
        self,
        name: str = "ce+dice",
        dice_weight: float = 0.5,
        ignore_index: int = 255,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if name not in LOSSES:
            raise SegformerError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
        self.name = name
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing

    def cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        if not (target != self.ignore_index).any():  # F.cross_entropy would return NaN (0 / 0)
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits.float(),
            target.long(),
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = _match_size(logits, target)
        if self.name == "ce":
            return self.cross_entropy(logits, target)
        if self.name == "dice":
            return dice_loss(logits, target, self.ignore_index)
        if self.name == "focal":
            return focal_loss(logits, target, self.ignore_index, self.focal_gamma)
        ce = self.cross_entropy(logits, target)
        return ce + self.dice_weight * dice_loss(logits, target, self.ignore_index)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dice_weight={self.dice_weight}, ignore_index={self.ignore_index}"
