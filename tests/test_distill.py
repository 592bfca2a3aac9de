"""`segformer distill`: the warps move images, soft targets and labels together, and a run writes a
one-pass model, keeps the teacher's targets, and resumes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

import segformer
from segformer.apps.distill import DistillConfig, augment_pair, distill
from segformer.data.labels import get_label_set
from segformer.data.synthetic import write_synthetic_dataset
from segformer.inference.ops import flip_permutation

from conftest import run_cli, tiny_config


def test_augment_pair_moves_images_targets_and_labels_together():
    ls = get_label_set("celebamask")
    perm = flip_permutation(ls.flip_pairs, ls.num_classes)
    gen = torch.Generator().manual_seed(0)
    # blocks of 8 x 8 pixels: bilinear and nearest agree away from the blocks' edges
    masks = torch.randint(0, ls.num_classes, (4, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    # soft targets that are the labels themselves, and images that carry the label as a channel
    probs = torch.nn.functional.one_hot(masks, ls.num_classes).permute(0, 3, 1, 2).float()
    images = masks[:, None].float().repeat(1, 3, 1, 1)
    _, p, y, valid = augment_pair(images.clone(), probs.clone(), masks.clone(), perm, gen, ls.ignore_index)
    assert valid.any() and (~valid).sum() < valid.sum()
    # nearest-warped labels agree with the bilinear-warped one-hot targets where those are sure
    sure = (p.max(1).values > 0.99) & valid
    assert sure.sum() > 0.3 * valid.sum()
    assert torch.equal(p.argmax(1)[sure], y[sure])
    assert (y[~valid] == ls.ignore_index).all()


def test_a_flip_swaps_the_left_and_right_classes_of_targets_and_labels():
    ls = get_label_set("celebamask")
    perm = flip_permutation(ls.flip_pairs, ls.num_classes)
    left, right = ls.flip_pairs[0]
    masks = torch.zeros(64, 16, 16, dtype=torch.long)
    masks[:, :, :4] = left  # the left-eye class on the image's left side
    probs = torch.nn.functional.one_hot(masks, ls.num_classes).permute(0, 3, 1, 2).float()
    gen = torch.Generator().manual_seed(1)
    _, p, y, valid = augment_pair(masks[:, None].float(), probs, masks.clone(), perm, gen, ls.ignore_index)
    flipped = (y == right).any((1, 2))
    assert 0 < flipped.sum() < 64  # about half the images were mirrored
    assert not ((y == left) & (y == right)).any()
    for i in range(64):  # the mirrored ones hold the right-side class on the right, targets agree
        ids = y[i][valid[i] & (y[i] != 0)]
        if flipped[i]:
            assert (ids == right).all() and (p[i].argmax(0)[valid[i] & (y[i] != 0)] == right).all()
        else:
            assert (ids == left).all()


def test_distill_writes_a_one_pass_model_and_resumes(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, num=10, size=32, seed=0, val_fraction=0.0)
    teacher = segformer.create_model(tiny_config(num_classes=19))
    meta = {
        "image_size": 32,
        "label_set": "celebamask",
        "tta": "flip+scales",
        "scales": [1.0, 1.25],
        "data": {"val_fraction": 0.2, "split_seed": 0},
    }
    segformer.save(teacher, tmp_path / "teacher", meta=meta)
    cfg = DistillConfig(str(tmp_path / "teacher"), str(data), str(tmp_path / "run"), epochs=1, batch_size=4)
    result = distill(cfg)
    assert result["epochs_done"] == 1
    student = segformer.load(tmp_path / "run" / "last")
    assert student.meta["tta"] == "none" and student.meta["distilled"]["teacher"] == cfg.teacher
    kept = sorted((tmp_path / "run" / "targets").iterdir())
    probs = torch.cat([torch.load(p, weights_only=True) for p in kept])
    assert probs.shape == (8, 19, 32, 32)  # the 8 training images, not the 2 held out
    torch.testing.assert_close(probs.float().sum(1), torch.ones(8, 32, 32), atol=2e-2, rtol=0)
    # resume with more epochs: continues from epoch 1, one metrics line per epoch
    assert distill(dataclasses.replace(cfg, epochs=2), resume=True)["epochs_done"] == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert np.isfinite([r["soft_ce"] for r in lines]).all()
    # a new run into a non-empty folder is refused in one line
    again = run_cli("distill", cfg.teacher, "--data", str(data), "--out", cfg.out)
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1
