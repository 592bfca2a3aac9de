"""Segmentation scores, all derived from confusion matrices.

- Dataset-level (pooled) scores from one K x K confusion matrix (rows: ground truth, columns:
  prediction): per-class IoU, F1 (= Dice), precision and recall; mIoU; mean F1 over foreground
  classes (the academic CelebAMask-HQ protocol: pooled over the dataset, background excluded); pixel
  accuracy.
- The CE7454 score: for each image, the mean over the classes present in its ground truth (background
  included) of F1 = 2PR / (P + R) with P = tp / (tp + fp), R = tp / (tp + fn), then the mean over images.

Pixels labelled `ignore_index` are left out of everything. Classes with no ground truth and no
prediction have undefined (NaN) pooled scores and are left out of the means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .config.validate import provide

# The scalar scores of `SegmentationMetrics.compute` (each can select the best checkpoint: `train.monitor`).
SCALAR_SCORES = ("ce7454_f", "miou", "mean_f1_fg", "mean_f1", "pixel_acc")
provide("train.monitor", lambda: SCALAR_SCORES)  # what a recipe's train.monitor may name


def per_image_confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """(B, K, K) confusion matrices, one per image of a (B, H, W) batch."""
    b = target.shape[0]
    t = target.reshape(b, -1).to(torch.int64)
    p = pred.reshape(b, -1).to(torch.int64)
    valid = t != ignore_index
    if valid.any():
        tv, pv = t[valid], p[valid]
        if int(tv.min()) < 0 or int(tv.max()) >= num_classes:
            raise ValueError(f"labels must lie in 0..{num_classes - 1} or be {ignore_index}")
        if int(pv.min()) < 0 or int(pv.max()) >= num_classes:
            raise ValueError(f"predictions must lie in 0..{num_classes - 1}")
    k2 = num_classes * num_classes
    # Offset each image into its own block of K*K bins; invalid pixels go to a trailing dump bin.
    idx = torch.where(valid, t * num_classes + p, k2) + torch.arange(b, device=t.device)[:, None] * (k2 + 1)
    counts = torch.bincount(idx.flatten(), minlength=b * (k2 + 1)).reshape(b, k2 + 1)
    return counts[:, :k2].reshape(b, num_classes, num_classes)


def f1_per_class(cm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(precision, recall, F1) per class from a (..., K, K) confusion matrix; 0/0 -> 0."""
    cm = cm.to(torch.float64)
    tp = cm.diagonal(dim1=-2, dim2=-1)
    pred_total = cm.sum(-2)  # tp + fp
    true_total = cm.sum(-1)  # tp + fn
    precision = torch.where(pred_total > 0, tp / pred_total.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(true_total > 0, tp / true_total.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    return precision, recall, f1


def ce7454_image_scores(cm_per_image: Tensor) -> Tensor:
    """Per-image CE7454 F-scores from (B, K, K) confusion matrices (NaN for an image with no labels)."""
    _, _, f1 = f1_per_class(cm_per_image)
    present = cm_per_image.sum(-1) > 0  # classes in this image's ground truth
    n = present.sum(-1)
    score = (f1 * present).sum(-1) / n.clamp(min=1)
    return torch.where(n > 0, score, torch.full_like(score, float("nan")))


def pooled_scores(cm: Tensor, background: int | None = 0) -> dict[str, Any]:
    """Dataset-level scores from a pooled K x K confusion matrix."""
    cmf = cm.to(torch.float64)
    tp = cmf.diagonal()
    gt = cmf.sum(1)
    pr = cmf.sum(0)
    union = gt + pr - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    precision, recall, f1 = f1_per_class(cm)
    defined = union > 0
    f1 = torch.where(defined, f1, torch.full_like(f1, float("nan")))
    precision = torch.where(pr > 0, precision, torch.full_like(f1, float("nan")))
    recall = torch.where(gt > 0, recall, torch.full_like(f1, float("nan")))
    fg = torch.ones_like(defined)
    if background is not None and 0 <= background < len(fg):
        fg[background] = False
    total = cmf.sum()
    return {
        "miou": _nanmean(iou),
        "mean_f1": _nanmean(f1),
        "mean_f1_fg": _nanmean(f1[fg]),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "iou": iou,
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "support": gt.to(torch.int64),
    }


def _nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


class SegmentationMetrics:
    """Accumulates a pooled confusion matrix and the CE7454 per-image scores over batches.

    >>> m = SegmentationMetrics(19)
    >>> m.update(pred, target)          # (B, H, W) class ids, same size
    >>> m.compute()["ce7454_f"]
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        background: int | None = 0,
        class_names: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.background = background
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(
            self.num_classes, self.num_classes, dtype=torch.int64, device=self.device
        )
        self.image_score_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.num_images = torch.zeros((), dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> Tensor:
        """Add a batch of (B, H, W) predictions and labels; returns the batch's per-image scores."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
        pred = pred.to(self.device)
        target = target.to(self.device)
        per_image = per_image_confusion(pred, target, self.num_classes, self.ignore_index)
        self.confusion += per_image.sum(0)
        scores = ce7454_image_scores(per_image)
        valid = ~torch.isnan(scores)
        self.image_score_sum += scores[valid].sum()
        self.num_images += valid.sum()
        return scores

    def state_tensors(self) -> list[Tensor]:
        """The tensors to sum across processes (see `segformer.distributed.all_reduce_sum`)."""
        return [self.confusion, self.image_score_sum, self.num_images]

    def compute(self) -> dict[str, Any]:
        """Scores as plain Python numbers: ce7454_f, miou, mean_f1_fg, mean_f1, pixel_acc, per_class."""
        pooled = pooled_scores(self.confusion.cpu(), self.background)
        n = int(self.num_images)
        per_class = {}
        for i, name in enumerate(self.class_names):
            per_class[name] = {
                "iou": _num(pooled["iou"][i]),
                "f1": _num(pooled["f1"][i]),
                "precision": _num(pooled["precision"][i]),
                "recall": _num(pooled["recall"][i]),
                "support": int(pooled["support"][i]),
            }
        return {
            "ce7454_f": float(self.image_score_sum) / n if n else float("nan"),
            "miou": pooled["miou"],
            "mean_f1_fg": pooled["mean_f1_fg"],
            "mean_f1": pooled["mean_f1"],
            "pixel_acc": pooled["pixel_acc"],
            "num_images": n,
            "per_class": per_class,
        }


def _num(x: Tensor) -> float | None:
    v = float(x)
    return None if v != v else v


def format_per_class(scores: dict[str, Any]) -> str:
    """A per-class table (IoU, F1, precision, recall, pixels) followed by the summary scores."""
    lines = [f"{'class':<14}{'IoU':>8}{'F1':>8}{'prec':>8}{'recall':>8}{'pixels':>13}"]

    def cell(v: float | None) -> str:
        return f"{v:8.4f}" if v is not None else f"{'-':>8}"

    for name, s in scores["per_class"].items():
        lines.append(
            f"{name:<14}{cell(s['iou'])}{cell(s['f1'])}{cell(s['precision'])}{cell(s['recall'])}"
            f"{s['support']:>13,}"
        )
    lines.append("-" * len(lines[0]))
    lines.append(
        f"CE7454 F-score {scores['ce7454_f']:.4f}   mIoU {scores['miou']:.4f}   "
        f"mean F1 (fg) {scores['mean_f1_fg']:.4f}   pixel acc {scores['pixel_acc']:.4f}   "
        f"images {scores['num_images']}"
    )
    return "\n".join(lines)
