"""Losses honour the ignore index and match naive formulas; schedules hit their endpoints."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from segformer import SegformerError
from segformer.engine.losses import SegmentationLoss, dice_loss, focal_loss
from segformer.engine.optim import lr_factor, param_groups, set_lr
from segformer.models import create_model


def naive_dice(logits, target, eps=1.0, classes="all"):
    k = logits.shape[1]
    losses = []
    for p, t in zip(logits.softmax(1), target, strict=True):  # one image at a time
        valid = (t != 255).float()
        y = F.one_hot(t.clamp(max=k - 1), k).permute(2, 0, 1).float() * valid
        p = p * valid
        keep = range(k) if classes == "all" else [c for c in range(k) if y[c].sum() > 0]
        terms = [(2 * (p[c] * y[c]).sum() + eps) / (p[c].sum() + y[c].sum() + eps) for c in keep]
        losses.append(1 - torch.stack(terms).mean())
    return torch.stack(losses).mean()


@pytest.fixture
def batch():
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    target = torch.randint(0, 5, (2, 8, 8))
    target[:, :3] = 255
    return logits, target


def test_dice_matches_naive_formula(batch):
    logits, target = batch
    torch.testing.assert_close(dice_loss(logits, target), naive_dice(logits, target))


def test_present_class_dice_matches_naive_formula():
    logits = torch.randn(3, 6, 8, 8)
    target = torch.randint(0, 3, (3, 8, 8))  # classes 3-5 absent everywhere
    target[1] = torch.randint(2, 6, (8, 8))  # image 1 has a different set of classes
    target[2, :4] = 255
    expected = naive_dice(logits, target, classes="present")
    torch.testing.assert_close(dice_loss(logits, target, classes="present"), expected)
    assert not torch.isclose(expected, naive_dice(logits, target))  # absent classes no longer dilute it
    loss = SegmentationLoss("ce+dice", dice_weight=0.5, dice_classes="present")(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, ignore_index=255) + 0.5 * expected)
    with pytest.raises(SegformerError, match="dice_classes"):
        SegmentationLoss("ce+dice", dice_classes="some")
    with pytest.raises(SegformerError, match="dice_classes"):
        dice_loss(logits, target, classes="some")


@pytest.mark.parametrize("name", ["ce", "dice", "ce+dice", "focal"])
def test_ignored_pixels_do_not_matter(batch, name):
    logits, target = batch
    loss_fn = SegmentationLoss(name)
    base = loss_fn(logits, target)
    changed = logits.detach().clone()
    changed[:, :, :3] = torch.randn_like(changed[:, :, :3]) * 100  # only ignored rows change
    torch.testing.assert_close(loss_fn(changed, target), base.detach())
    base.backward()
    assert logits.grad[:, :, :3].abs().max() == 0  # and they get no gradient


def test_combined_loss_is_ce_plus_weighted_dice(batch):
    logits, target = batch
    expected = F.cross_entropy(logits, target, ignore_index=255) + 0.5 * naive_dice(logits, target)
    torch.testing.assert_close(SegmentationLoss("ce+dice", dice_weight=0.5)(logits, target), expected)


def test_focal_with_gamma_zero_is_cross_entropy(batch):
    logits, target = batch
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target, ignore_index=255)
    )


def test_stride4_logits_are_upsampled_to_the_labels(batch):
    logits, target = batch
    small = logits.detach()[:, :, ::2, ::2]
    up = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(SegmentationLoss("ce")(small, target), SegmentationLoss("ce")(up, target))


@pytest.mark.parametrize("name", ["ce", "dice", "ce+dice", "focal"])
def test_all_ignored_gives_zero_not_nan(name):
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = SegmentationLoss(name)(logits, torch.full((1, 4, 4), 255))
    assert torch.isfinite(loss)
    loss.backward()


def test_batch_loss_is_the_mean_of_image_losses(batch):
    logits, target = batch
    for name in ("ce", "dice", "ce+dice", "focal"):
        target = torch.randint(0, 5, (2, 8, 8))  # no ignored pixels: equal pixel counts per image
        loss = SegmentationLoss(name)
        halves = (loss(logits[:1], target[:1]) + loss(logits[1:], target[1:])) / 2
        torch.testing.assert_close(loss(logits, target), halves)


def test_perfect_prediction_has_near_zero_dice():
    target = torch.randint(0, 3, (1, 16, 16))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(logits, target, eps=1e-6) < 1e-4


def test_unknown_loss():
    with pytest.raises(SegformerError, match="unknown loss"):
        SegmentationLoss("hinge")


# --- schedules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "constant", "step", "poly"])
def test_schedules_hit_their_endpoints(schedule):
    total, warm = 1000, 50
    assert lr_factor(0, total, schedule, warmup_steps=warm, warmup_start=0.01) == pytest.approx(0.01)
    assert lr_factor(warm, total, schedule, warmup_steps=warm) == pytest.approx(1.0)
    end = lr_factor(total, total, schedule, warmup_steps=warm, min_lr_ratio=0.0)
    expected_end = {"cosine": 0.0, "constant": 1.0, "step": 0.01, "poly": 0.0}[schedule]
    assert end == pytest.approx(expected_end, abs=1e-12)


def test_cosine_midpoint_and_min_lr():
    assert lr_factor(500, 1000, "cosine") == pytest.approx(0.5)
    assert lr_factor(1000, 1000, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    values = [lr_factor(s, 1000, "cosine", warmup_steps=10) for s in range(10, 1001)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_step_schedule_drops_at_milestones():
    f = [lr_factor(s, 100, "step", step_milestones=(0.5, 0.75), step_gamma=0.1) for s in (49, 50, 74, 75)]
    assert f == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_set_lr_scales_every_group_from_its_base_lr():
    model = create_model("microsegformer")
    opt = torch.optim.AdamW(param_groups(model, lr=1.0, weight_decay=0.1, head_lr_mult=10.0))
    set_lr(opt, 0.5)
    set_lr(opt, 0.25)  # relative to the base lr, not compounding
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.25, 0.25, 2.5, 2.5])


def test_param_groups_skip_decay_on_norms_and_biases_and_scale_the_head():
    model = create_model("microsegformer")
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, head_lr_mult=10.0)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"body", "body_no_decay", "head", "head_no_decay"}
    assert by_name["body_no_decay"]["weight_decay"] == 0.0 and by_name["body"]["weight_decay"] == 0.05
    assert by_name["head"]["lr"] == pytest.approx(1e-2)
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}  # every parameter exactly once
    norm_weight = model.encoder.stages[0].norm.weight
    assert any(norm_weight is p for p in by_name["body_no_decay"]["params"])
