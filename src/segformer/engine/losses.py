"""Segmentation losses on logits ``(B, K, h, w)`` and labels ``(B, H, W)``; all honour the ignore index.

Logits smaller than the labels (the stride-4 output of the decoder) are upsampled bilinearly to the
label size first, as SegFormer's training does.

- cross entropy;
- soft Dice over the softmax (the CE7454 seed's formula): ``1 - mean_c (2 sum p_c y_c + eps) /
  (sum p_c + sum y_c + eps)`` with sums over the valid pixels of each image, averaged over all K
  classes and then over the images of the batch; with ``dice_classes="present"`` the mean runs over
  the classes present in each image's labels instead, the classes the CE7454 score averages over;
- CE + lambda * Dice (the seed recipe, lambda = 0.5);
- CE + lambda * Dice with boundary-aware CE: pixels within ``w`` pixels (a square neighbourhood) of
  another valid label weigh ``b`` times, others 1, and the CE is the weighted mean over valid pixels
  (thin parts such as brows, lips and earrings are mostly boundary);
- focal loss (Lin et al., ICCV 2017), ``-(1 - p_t)^gamma log p_t`` averaged over valid pixels.

Class weights (`SegmentationLoss.class_weight`, ``w[c]``) act on the cross entropy of the three CE
losses: a pixel of class c weighs ``w[c]`` (times its boundary weight), and the CE is the weighted mean
over valid pixels, ``sum_i w_i CE_i / sum_i w_i``, which is what `F.cross_entropy(weight=w)` computes
without label smoothing. With label smoothing the smoothed per-pixel CE is weighted by its pixel's
class alone (PyTorch would weight each smoothing term by its own class instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import DICE_CLASSES, LOSSES
from ..errors import SegformerError


def _match_size(logits: Tensor, target: Tensor) -> Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def classes_last(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Logits resized to the labels' size as float ``(B, H*W, K)`` and labels as ``(B, H*W)``.

    Softmax, gathers and sums over classes run several times faster with the classes contiguous;
    the model's channels-last logits give this layout without a copy.
    """
    logits = _match_size(logits, target).float()
    b, k = logits.shape[:2]
    return logits.permute(0, 2, 3, 1).reshape(b, -1, k), target.reshape(b, -1)  # (B, N, K), (B, N)


def check_dice_classes(classes: str) -> str:
    if classes not in DICE_CLASSES:
        raise SegformerError(f"unknown dice_classes {classes!r}; choose from {', '.join(DICE_CLASSES)}")
    return classes


def _dice(probs: Tensor, target: Tensor, ignore_index: int, eps: float, classes: str = "all") -> Tensor:
    """Dice loss of probabilities ``(B, N, K)`` against labels ``(B, N)`` (see `dice_loss`)."""
    valid = target != ignore_index  # (B, N)
    weight = valid.to(probs.dtype)
    labels = torch.where(valid, target, 0).long()
    # sum_pixels p_c * y_c is the probability of the true class summed per (image, class): gather +
    # scatter-add instead of materialising a (B, N, K) one-hot tensor; ignored pixels add zeros.
    p_true = probs.gather(2, labels.unsqueeze(2)).squeeze(2) * weight  # (B, N)
    inter = torch.zeros_like(probs[:, 0]).scatter_add(1, labels, p_true)  # (B, K)
    label_count = torch.zeros_like(probs[:, 0]).scatter_add(1, labels, weight)
    prob_sum = torch.bmm(weight.unsqueeze(1), probs).squeeze(1)  # sum over valid pixels, (B, K)
    dice = (2.0 * inter + eps) / (prob_sum + label_count + eps)
    if classes == "all":
        return 1.0 - dice.mean()
    present = (label_count > 0).to(dice.dtype)  # (B, K); an image without valid pixels adds 0
    per_image = ((1.0 - dice) * present).sum(1) / present.sum(1).clamp(min=1)
    return per_image.mean()


def dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int = 255, eps: float = 1.0, classes: str = "all"
) -> Tensor:
    """Soft multi-class Dice loss over the softmax: per image, averaged over classes (``"all"`` K, or
    the ``"present"`` ones), then images.

    Per-image sums (the seed's formula) make the loss of a batch the mean of its images' losses, so
    data-parallel training on equal shards computes exactly the single-process gradient.
    """
    check_dice_classes(classes)
    flat, target = classes_last(logits, target)
    return _dice(flat.softmax(-1), target, ignore_index, eps, classes)


def focal_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, gamma: float = 2.0) -> Tensor:
    """Focal loss averaged over valid pixels (0 when there are none)."""
    flat, target = classes_last(logits, target)
    logp = F.log_softmax(flat, -1)
    valid = target != ignore_index
    safe = torch.where(valid, target, 0).long().unsqueeze(2)
    logp_t = logp.gather(2, safe).squeeze(2)
    loss = -((1.0 - logp_t.exp()) ** gamma) * logp_t
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def boundary_pixels(target: Tensor, width: int, ignore_index: int = 255) -> Tensor:
    """``(B, H, W)`` bool: valid pixels with another valid label within `width` pixels (Chebyshev
    distance); ignored pixels make no boundary."""
    valid = target != ignore_index
    t = target.float().unsqueeze(1)  # (B, 1, H, W)
    k = 2 * width + 1
    # Max and min of the valid labels in each window; they differ exactly where two labels meet.
    high = F.max_pool2d(torch.where(valid.unsqueeze(1), t, -1.0), k, 1, width)
    low = -F.max_pool2d(torch.where(valid.unsqueeze(1), -t, -float(ignore_index) - 1), k, 1, width)
    return valid & (high != low).squeeze(1)


class SegmentationLoss(nn.Module):
    """One of `LOSSES`, called as ``loss(logits, target)``; returns a scalar."""

    def __init__(
        self,
        name: str = "ce+dice",
        dice_weight: float = 0.5,
        ignore_index: int = 255,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        dice_classes: str = "all",
        boundary_weight: float = 3.0,
        boundary_width: int = 2,
        class_weight: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if name not in LOSSES:
            raise SegformerError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
        if class_weight is not None:
            if name in ("dice", "focal"):
                raise SegformerError(f"class weights act on the cross entropy; loss {name!r} has none")
            class_weight = torch.as_tensor(class_weight, dtype=torch.float32)
            if class_weight.ndim != 1 or not bool((torch.isfinite(class_weight) & (class_weight > 0)).all()):
                raise SegformerError("class weights must be a vector of positive finite numbers")
        # A buffer: it moves with `.to(device)`; the trainer keeps it in the run's state.pt.
        self.class_weight: Tensor | None
        self.register_buffer("class_weight", class_weight)
        self.dice_classes = check_dice_classes(dice_classes)
        self.name = name
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        self.boundary_weight = boundary_weight
        self.boundary_width = boundary_width

    def cross_entropy(self, flat: Tensor, target: Tensor, logp: Tensor | None = None) -> Tensor:
        """Cross entropy of ``(B, N, K)`` logits (or their log-softmax `logp`) against ``(B, N)``,
        the class-weighted mean over valid pixels when `class_weight` is set."""
        if not (target != self.ignore_index).any():  # the mean over no pixels would be NaN (0 / 0)
            return flat.sum() * 0.0
        if self.class_weight is not None:
            valid = target != self.ignore_index
            safe = torch.where(valid, target, 0).long()
            weight = self.class_weight[safe] * valid  # (B, N)
            return self._weighted_mean(self._pixel_ce(flat, safe, logp), weight)
        k, target = flat.shape[-1], target.reshape(-1).long()
        if logp is not None and self.label_smoothing == 0:
            return F.nll_loss(logp.reshape(-1, k), target, ignore_index=self.ignore_index)
        return F.cross_entropy(
            flat.reshape(-1, k), target, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )

    def boundary_cross_entropy(self, flat: Tensor, labels: Tensor, logp: Tensor) -> Tensor:
        """Cross entropy of ``(B, N, K)`` logits (log-softmax `logp`) against labels ``(B, H, W)``,
        boundary pixels weighted `boundary_weight`: the weighted mean over valid pixels."""
        target = labels.reshape(labels.shape[0], -1)
        valid = target != self.ignore_index
        if not valid.any():  # the mean over no pixels would be NaN (0 / 0)
            return flat.sum() * 0.0
        safe = torch.where(valid, target, 0).long()
        edges = boundary_pixels(labels, self.boundary_width, self.ignore_index).reshape(valid.shape)
        weight = torch.where(edges, self.boundary_weight, 1.0) * valid
        if self.class_weight is not None:
            weight = weight * self.class_weight[safe]
        return self._weighted_mean(self._pixel_ce(flat, safe, logp), weight)

    def _pixel_ce(self, flat: Tensor, safe: Tensor, logp: Tensor | None) -> Tensor:
        """``(B, N)`` cross entropy of every pixel against labels `safe` (valid class ids everywhere)."""
        k = flat.shape[-1]
        if logp is not None and self.label_smoothing == 0:
            per_pixel = F.nll_loss(logp.reshape(-1, k), safe.reshape(-1), reduction="none")
        else:
            per_pixel = F.cross_entropy(
                flat.reshape(-1, k), safe.reshape(-1), reduction="none", label_smoothing=self.label_smoothing
            )
        return per_pixel.view(safe.shape)

    @staticmethod
    def _weighted_mean(per_pixel: Tensor, weight: Tensor) -> Tensor:
        return (per_pixel * weight).sum() / weight.sum().clamp(min=1e-12)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.name == "dice":
            return dice_loss(logits, target, self.ignore_index, classes=self.dice_classes)
        if self.name == "focal":
            return focal_loss(logits, target, self.ignore_index, self.focal_gamma)
        labels = target
        if self.class_weight is not None and len(self.class_weight) != logits.shape[1]:
            raise SegformerError(f"{len(self.class_weight)} class weights for {logits.shape[1]} classes")
        flat, target = classes_last(logits, target)
        if self.name == "ce":
            return self.cross_entropy(flat, target)
        # One log-softmax serves both terms: the Dice probabilities are its exponential.
        logp = F.log_softmax(flat, -1)
        if self.name == "ce+dice+boundary":
            ce = self.boundary_cross_entropy(flat, labels, logp)
        else:
            ce = self.cross_entropy(flat, target, logp)
        dice = _dice(logp.exp(), target, self.ignore_index, 1.0, self.dice_classes)
        return ce + self.dice_weight * dice

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, dice_weight={self.dice_weight}, dice_classes={self.dice_classes!r}, "
            f"boundary_weight={self.boundary_weight}, boundary_width={self.boundary_width}, "
            f"ignore_index={self.ignore_index}, class_weight={self.class_weight is not None}"
        )
