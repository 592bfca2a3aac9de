"""Metrics against naive per-image / per-class references and hand-computed confusion matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segformer.metrics import SegmentationMetrics, per_image_confusion, pooled_scores

K = 6
IGNORE = 255


def naive_image_fscore(pred: np.ndarray, gt: np.ndarray) -> float:
    """CE7454 definition, straight from the challenge's definition, with boolean masks per class."""
    valid = gt != IGNORE
    scores = []
    for c in np.unique(gt[valid]):
        p = (pred == c) & valid
        g = (gt == c) & valid
        tp = np.sum(p & g)
        precision = tp / p.sum() if p.sum() else 0.0
        recall = tp / g.sum() if g.sum() else 0.0
        scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores))


def naive_pooled(preds, gts):
    iou, f1 = {}, {}
    for c in range(K):
        tp = fp = fn = 0
        for p, g in zip(preds, gts, strict=True):
            valid = g != IGNORE
            tp += np.sum((p == c) & (g == c) & valid)
            fp += np.sum((p == c) & (g != c) & valid)
            fn += np.sum((p != c) & (g == c) & valid)
        if tp + fp + fn:
            iou[c] = tp / (tp + fp + fn)
            f1[c] = 2 * tp / (2 * tp + fp + fn)
    return iou, f1


def random_batch(rng, b=4, h=13, w=17):
    gt = rng.integers(0, K, size=(b, h, w))
    gt[0][gt[0] == 3] = 1  # class 3 absent from image 0's ground truth
    gt[:, :, 5] = IGNORE  # an ignored column
    pred = np.where(rng.random((b, h, w)) < 0.6, gt % K, rng.integers(0, K, size=(b, h, w)))
    pred[gt == IGNORE] = rng.integers(0, K, size=int((gt == IGNORE).sum()))
    gt[:, gt.shape[1] // 2] = np.where(gt[:, gt.shape[1] // 2] == 4, 2, gt[:, gt.shape[1] // 2])
    gt[..., :] = np.where(gt == 5, 0, gt)  # class 5 never in ground truth ...
    pred[0, 0, 0] = 5  # ... but predicted once: IoU 0, not undefined
    return torch.from_numpy(pred), torch.from_numpy(gt)


def test_metrics_equal_naive_references():
    rng = np.random.default_rng(0)
    m = SegmentationMetrics(K, IGNORE, background=0)
    preds, gts = [], []
    for _ in range(3):
        pred, gt = random_batch(rng)
        m.update(pred, gt)
        preds += list(pred.numpy())
        gts += list(gt.numpy())
    scores = m.compute()

    expected_f = np.mean([naive_image_fscore(p, g) for p, g in zip(preds, gts, strict=True)])
    assert scores["ce7454_f"] == pytest.approx(expected_f, abs=1e-12)
    assert scores["num_images"] == len(preds)

    iou, f1 = naive_pooled(preds, gts)
    assert scores["miou"] == pytest.approx(np.mean(list(iou.values())), abs=1e-12)
    assert scores["mean_f1_fg"] == pytest.approx(np.mean([f1[c] for c in f1 if c != 0]), abs=1e-12)
    assert scores["per_class"]["5"]["iou"] == 0.0 and scores["per_class"]["5"]["support"] == 0
    valid = [g != IGNORE for g in gts]
    correct = sum(np.sum((p == g) & v) for p, g, v in zip(preds, gts, valid, strict=True))
    assert scores["pixel_acc"] == pytest.approx(correct / sum(v.sum() for v in valid), abs=1e-12)
    for c, v in iou.items():
        assert scores["per_class"][str(c)]["iou"] == pytest.approx(v, abs=1e-12)


def test_hand_computed_confusion_matrix():
    gt = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
    cm = per_image_confusion(pred, gt, 3)[0]
    # rows: ground truth 0, 1, 2; columns: prediction; the ignored pixel is not counted
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    s = pooled_scores(cm, background=0)
    assert s["iou"].tolist() == pytest.approx([1 / 2, 2 / 4, 0.0])
    assert s["f1"].tolist() == pytest.approx([2 / 3, 2 * 2 / (4 + 2), 0.0])
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    # CE7454: classes 0, 1, 2 present; F1s 2/3, 2/3 (P=2/4, R=1), 0
    m = SegmentationMetrics(3)
    m.update(pred, gt)
    assert m.compute()["ce7454_f"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_class_absent_from_everything_is_undefined_and_excluded():
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    gt[0, :2] = 1
    pred = gt.clone()
    m = SegmentationMetrics(4)
    m.update(pred, gt)
    s = m.compute()
    assert s["miou"] == 1.0 and s["ce7454_f"] == 1.0 and s["mean_f1_fg"] == 1.0
    assert s["per_class"]["3"]["iou"] is None and s["per_class"]["3"]["f1"] is None


def test_image_with_only_ignored_pixels_is_not_counted():
    m = SegmentationMetrics(3)
    m.update(torch.zeros(2, 3, 3, dtype=torch.long), torch.full((2, 3, 3), 255))
    assert m.compute()["num_images"] == 0 and math.isnan(m.compute()["ce7454_f"])


def test_out_of_range_labels_are_rejected():
    m = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="labels must lie"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))


def test_reduction_state_is_additive():
    rng = np.random.default_rng(1)
    a, b, both = SegmentationMetrics(K), SegmentationMetrics(K), SegmentationMetrics(K)
    p1, g1 = random_batch(rng)
    p2, g2 = random_batch(rng)
    a.update(p1, g1)
    b.update(p2, g2)
    both.update(torch.cat([p1, p2]), torch.cat([g1, g2]))
    for x, y in zip(a.state_tensors(), b.state_tensors(), strict=True):
        x += y  # what all_reduce_sum does across ranks
    assert a.compute() == both.compute()
