"""Recipe switches of the face recipe: mirrored masks fixed when loading, a boundary-aware loss,
small regions removed after inference, and the seed recipe kept by name."""

from __future__ import annotations

import shutil
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segformer import InferenceSettings, Predictor, SegformerError, create_model
from segformer.apps.export import export_model
from segformer.config import DataConfig, load_recipe
from segformer.data.check import is_mirrored
from segformer.data.io import load_mask, save_mask
from segformer.data.labels import CELEBAMASK
from segformer.data.synthetic import write_synthetic_dataset
from segformer.engine.data import build_train_data
from segformer.engine.losses import SegmentationLoss, boundary_pixels
from segformer.inference.ops import remove_small_regions

from conftest import tiny_config

# -- small regions ----------------------------------------------------------------------------------


def _naive_small_regions(ids: np.ndarray, min_area: float) -> np.ndarray:
    """Flood fill (8-connected) of every region; a small one takes the most common label among the
    pixels 8-adjacent to it in the input map (ties: the smallest label)."""
    h, w = ids.shape
    seen = np.zeros_like(ids, dtype=bool)
    out = ids.copy()
    for sy in range(h):
        for sx in range(w):
            if seen[sy, sx]:
                continue
            c, region, queue = ids[sy, sx], [], deque([(sy, sx)])
            seen[sy, sx] = True
            while queue:
                y, x = queue.popleft()
                region.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and ids[ny, nx] == c:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            if len(region) >= min_area * h * w:
                continue
            inside = set(region)
            ring = {
                (y + dy, x + dx)
                for y, x in region
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
                if 0 <= y + dy < h and 0 <= x + dx < w and (y + dy, x + dx) not in inside
            }
            if ring:
                votes = np.bincount([ids[p] for p in ring])
                for p in region:
                    out[p] = votes.argmax()
    return out


def test_small_regions_on_a_hand_made_map():
    ids = np.zeros((10, 10), np.uint8)
    ids[:, 5:] = 1  # two halves
    ids[2:4, 6:8] = 4  # a 4-pixel "left eye" inside class 1
    ids[7, 1] = 5  # a 1-pixel speck inside class 0
    ids[0:2, 0:2] = 13  # hair, piece one: 4 pixels in a corner of class 0
    ids[8:10, 8:10] = 13  # hair, piece two: 4 pixels in a corner of class 1 (each piece judged alone)
    ids[5, 4:6] = 2  # 2 pixels across the border: its ring holds 5 pixels of 0 and 5 of 1
    below4 = ids.copy()  # regions of fewer than 4 pixels go
    below4[7, 1] = 0
    below4[5, 4:6] = 0  # a tie goes to the smaller id
    np.testing.assert_array_equal(remove_small_regions(ids, min_area=4 / 100), below4)
    below5 = below4.copy()  # the 4-pixel regions go too
    below5[2:4, 6:8] = 1
    below5[0:2, 0:2] = 0
    below5[8:10, 8:10] = 1
    np.testing.assert_array_equal(remove_small_regions(ids, min_area=5 / 100), below5)
    np.testing.assert_array_equal(remove_small_regions(ids, 0.0), ids)  # nothing is below 0


@pytest.mark.parametrize("seed", range(4))
def test_small_regions_match_a_naive_flood_fill(seed):
    rng = np.random.default_rng(seed)
    # blocky random maps: regions of many sizes, touching the border and each other
    coarse = rng.integers(0, 5, (6, 7))
    ids = np.kron(coarse, np.ones((3, 4), np.int64)).astype(np.uint8)
    ids[rng.random(ids.shape) < 0.08] = rng.integers(0, 5)
    ids = ids[: 16 + seed, : 25 - seed]
    for min_area in (0.003, 0.02, 0.05):
        np.testing.assert_array_equal(
            remove_small_regions(ids, min_area), _naive_small_regions(ids, min_area)
        )


def test_predictor_and_settings_apply_small_regions(tmp_path):
    torch.manual_seed(0)
    model = create_model(tiny_config("micro", num_classes=19))
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    raw = Predictor(model, image_size=32, label_set="celebamask", faces=False).predict(image)
    cleaned = Predictor(
        model, image_size=32, label_set="celebamask", postprocess="small-regions", min_area=0.01, faces=False
    ).predict(image)
    np.testing.assert_array_equal(cleaned, remove_small_regions(raw, 0.01))
    assert not np.array_equal(cleaned, raw)  # the random model's map has specks to remove
    model.meta = InferenceSettings(image_size=32, postprocess="small-regions", min_area=0.01).to_dict()
    from_meta = Predictor(model, label_set="celebamask", faces=False).predict(image)
    np.testing.assert_array_equal(from_meta, cleaned)
    with pytest.raises(SegformerError, match="postprocess: unknown post-processing 'blur'"):
        InferenceSettings(postprocess="blur")
    with pytest.raises(SegformerError, match=r"min_area: expected a fraction in \[0, 1\)"):
        InferenceSettings(min_area=1.5)


# -- boundary-aware loss ----------------------------------------------------------------------------


def _naive_boundary(target: np.ndarray, width: int, ignore: int = 255) -> np.ndarray:
    b, h, w = target.shape
    out = np.zeros_like(target, dtype=bool)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                if target[i, y, x] == ignore:
                    continue
                window = target[i, max(0, y - width) : y + width + 1, max(0, x - width) : x + width + 1]
                out[i, y, x] = bool(((window != ignore) & (window != target[i, y, x])).any())
    return out


def test_boundary_loss_matches_a_per_pixel_reference():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 3, 4), generator=g).repeat_interleave(3, 1).repeat_interleave(3, 2)
    target[0, :2, :5] = 255  # ignored pixels make no boundary
    logits = torch.randn(2, 4, 9, 12, generator=g)
    for width, weight in ((1, 3.0), (2, 5.0)):
        edges = _naive_boundary(target.numpy(), width)
        np.testing.assert_array_equal(boundary_pixels(target, width).numpy(), edges)
        assert 0 < edges.sum() < (target != 255).sum()
        logp = F.log_softmax(logits, 1)
        num = den = 0.0
        for i, y, x in np.ndindex(*target.shape):
            t = int(target[i, y, x])
            if t == 255:
                continue
            wgt = weight if edges[i, y, x] else 1.0
            num += -wgt * float(logp[i, t, y, x])
            den += wgt
        dice_only = SegmentationLoss("dice")(logits, target)
        loss = SegmentationLoss("ce+dice+boundary", 0.5, boundary_weight=weight, boundary_width=width)
        torch.testing.assert_close(loss(logits, target), torch.tensor(num / den) + 0.5 * dice_only)
    # weight 1 is plain CE + Dice
    same = SegmentationLoss("ce+dice+boundary", 0.5, boundary_weight=1.0)(logits, target)
    torch.testing.assert_close(same, SegmentationLoss("ce+dice", 0.5)(logits, target))


def test_boundary_loss_fields_are_validated():
    recipe = load_recipe("microsegformer-celebamask")
    cfg = recipe.override({"train.loss": "ce+dice+boundary", "train.boundary_weight": 4})
    assert cfg.train.boundary_weight == 4.0 and cfg.train.boundary_width == 2
    with pytest.raises(SegformerError, match=r"train\.boundary_width"):
        recipe.override({"train.boundary_width": 0})
    with pytest.raises(SegformerError, match=r"train\.boundary_weight"):
        recipe.override({"train.boundary_weight": -1})


# -- mirrored masks ---------------------------------------------------------------------------------


def test_mirrored_masks_are_swapped_back_when_loading(tmp_path, capsys):
    root = write_synthetic_dataset(
        tmp_path / "faces", num=6, size=32, seed=0, val_fraction=0.5, progress=False
    )
    masks = sorted((root / "train" / "masks").glob("*.png"))
    bad = masks[1]
    good = load_mask(bad, CELEBAMASK)
    assert not is_mirrored(good, CELEBAMASK)
    mirrored = CELEBAMASK.flip_lut()[good]  # the classes swapped, the picture not
    assert is_mirrored(mirrored, CELEBAMASK)
    save_mask(bad, mirrored, CELEBAMASK)
    originals = {p.stem: load_mask(p, CELEBAMASK) for p in masks}

    def loaded(fix: bool) -> dict[str, np.ndarray]:
        dc = DataConfig(root=str(root), img_size=32, cache=True, fix_mirrored=fix, workers=0)
        data = build_train_data(dc, seed=0, out=tmp_path / "run", progress=True)
        base = data.train.base  # cached: the corrected masks are what the cache holds
        return {base.stems[i]: data.train.items[i][1] for i in range(len(base))}

    plain = loaded(False)
    assert "fix_mirrored" not in capsys.readouterr().out
    fixed = loaded(True)
    assert "swapped the left/right classes back in 1 of 3 train, 0 of 3 val masks" in capsys.readouterr().out
    for stem, mask in originals.items():
        np.testing.assert_array_equal(plain[stem], mask)
        np.testing.assert_array_equal(fixed[stem], good if stem == bad.stem else mask)


# -- the seed recipe by name ------------------------------------------------------------------------


def test_face_recipe_is_the_seed_recipe_plus_the_measured_changes():
    seed = load_recipe("microsegformer-seed")
    assert not seed.data.fix_mirrored and seed.train.loss == "ce+dice" and seed.train.amp == "none"
    assert seed.data.repeat_factor == 0.0 and seed.train.class_weight == "none"
    face = load_recipe("microsegformer-celebamask")
    changed = {
        "data.fix_mirrored": True,
        "data.repeat_factor": 0.2,
        "train.dice_classes": "present",
        "train.class_weight": "sqrt_inv_freq",
        "train.logit_adjust": 0.5,
        "train.amp": "auto",
    }
    assert face == seed.override(changed)  # and nothing else differs


def test_ce7454_export_refuses_post_processing(tmp_path):
    model = create_model(tiny_config("micro", num_classes=19))
    with pytest.raises(SegformerError, match=r"the CE7454 run\.py does not post-process"):
        export_model(model, tmp_path, "ce7454", postprocess="small-regions", label_set="celebamask")
    assert not (tmp_path / "solution").exists()


# -- mixed precision "auto" ----------------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_bf16_exactly_where_the_cpu_computes_it_natively(monkeypatch, native):
    from segformer.engine.learner import amp_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert amp_dtype("bf16", cpu) == torch.bfloat16  # asked for by name: always
    assert amp_dtype("none", cpu) is None
    with pytest.raises(SegformerError, match="CUDA"):
        amp_dtype("fp16", cpu)


def test_eval_can_score_mirrored_masks_swapped_back(tmp_path):
    from segformer.engine.evaluate import evaluate_model

    root = write_synthetic_dataset(
        tmp_path / "faces", num=6, size=32, seed=1, val_fraction=0.5, progress=False
    )
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    bad = sorted((root / "val" / "masks").glob("*.png"))[0]
    save_mask(bad, CELEBAMASK.flip_lut()[load_mask(bad, CELEBAMASK)], CELEBAMASK)  # the annotation mirrored
    model = create_model(tiny_config("micro", num_classes=19))
    model.meta = InferenceSettings(image_size=32, label_set="celebamask").to_dict()
    as_is = evaluate_model(model, root, progress=False)
    fixed = evaluate_model(model, root, progress=False, fix_mirrored=True)
    truth = evaluate_model(model, clean, progress=False)
    assert (as_is["mirrored_fixed"], fixed["mirrored_fixed"], truth["mirrored_fixed"]) == (0, 1, 0)
    assert fixed["per_class"] == truth["per_class"] and fixed["ce7454_f"] == truth["ce7454_f"]
    assert as_is["per_class"] != truth["per_class"]  # (left/right pixel counts trade places)
