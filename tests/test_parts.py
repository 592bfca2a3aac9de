"""Part masks and cut-outs (`segformer.inference.parts`, `segformer predict --parts/--cutout`): masks are the
label map's regions exactly, the cut-out's alpha is the non-background region, grow and feather do what
they promise on drawn shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segformer import Predictor, SegformerError, create_model
from segformer.checkpoint import save_model
from segformer.cli import main
from segformer.data.io import load_mask
from segformer.data.labels import ADE20K, CELEBAMASK
from segformer.inference.parts import cutout, feather_mask, grow_mask, part_masks

from conftest import tiny_config


def _disc(radius: float, size: int = 121) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 0/255 disc of `radius` centred in a size x size image, squared distance to the centre)."""
    y, x = np.ogrid[:size, :size]
    d2 = (x - size // 2) ** 2 + (y - size // 2) ** 2
    return ((d2 <= radius * radius) * 255).astype(np.uint8), d2


def _random_ids(h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, CELEBAMASK.num_classes, (h // 8, w // 8))
    return np.kron(small, np.ones((8, 8), np.int64)).astype(np.uint8)  # blocks: regions, not noise


def _probs(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(CELEBAMASK.num_classes, *ids.shape)).astype(np.float32)
    np.put_along_axis(logits, ids[None].astype(np.int64), 5.0, 0)
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


def test_part_masks_are_the_label_maps_regions():
    ids = _random_ids()
    names = ["hair", "skin", "l_eye"]
    masks = part_masks(ids, CELEBAMASK, ",".join(names))
    assert list(masks) == names
    for name, mask in masks.items():
        assert mask.dtype == np.uint8 and mask.shape == ids.shape
        np.testing.assert_array_equal(mask, np.where(ids == CELEBAMASK.index(name), 255, 0))
    probs = _probs(ids)
    soft = part_masks(ids, CELEBAMASK, names, probs=probs)
    for name, mask in soft.items():
        expected = np.round(probs[CELEBAMASK.index(name)] * 255)
        np.testing.assert_array_equal(mask, expected.astype(np.uint8))
        assert ((mask > 0) & (mask < 255)).any()  # soft values, not 0/255


@pytest.mark.parametrize(("radius", "n"), [(10, 1), (12, 3), (20, 7), (30, 12)])
def test_grow_adds_exactly_n_pixels_of_radius(radius, n):
    disc, d2 = _disc(radius)
    grown = grow_mask(disc, n) > 0
    outer = radius + n
    assert not (grown & (d2 > outer * outer)).any()  # nothing beyond radius + n
    assert grown[d2 <= (outer - 1) ** 2].all()  # everything within radius + n - 1 (digital rounding)
    centre = disc.shape[0] // 2
    assert grown[centre].sum() == grown[:, centre].sum() == 2 * outer + 1  # exactly +n along the axes
    shrunk = grow_mask(disc, -n) > 0  # a negative grow erodes by the same disk
    assert shrunk[centre].sum() == 2 * (radius - n) + 1
    assert not (shrunk & (d2 > (radius - n + 1) ** 2)).any()


@pytest.mark.parametrize("n", [4, 8, 12])
def test_feather_is_a_monotone_ramp_about_n_pixels_wide(n):
    disc, _ = _disc(40)
    soft = feather_mask(disc, n).astype(int)
    centre = disc.shape[0] // 2
    for profile in (soft[centre, centre:], soft[centre:, centre], soft[centre, centre::-1]):
        assert (np.diff(profile) <= 0).all()  # monotone from inside to outside
        assert profile[0] == 255 and profile[-1] == 0
        width = np.argmax(profile <= 0.02 * 255) - np.argmax(profile < 0.98 * 255)
        assert abs(width - n) <= 1.5, (n, width, profile[30:55].tolist())
        assert 100 <= profile[40] <= 160  # the ramp is centred on the edge
    np.testing.assert_array_equal(feather_mask(disc, 0), disc)


def test_grow_and_feather_work_on_soft_masks_and_keep_the_border():
    mask = np.zeros((30, 30), np.uint8)
    mask[:, :10] = 128  # a soft part touching the left border
    grown = grow_mask(mask, 3)
    assert (grown[:, :13] == 128).all() and (grown[:, 13:] == 0).all()
    assert (grow_mask(mask, -3)[:, :7] == 128).all()  # the border does not erode it
    assert (feather_mask(mask, 6)[:, :3] == 128).all()


def test_cutout_alpha_is_the_non_background_region():
    ids = _random_ids(seed=3)
    image = np.random.default_rng(1).integers(0, 256, (*ids.shape, 3), dtype=np.uint8)
    rgba = cutout(image, ids, CELEBAMASK)
    assert rgba.shape == (*ids.shape, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[..., :3], image)
    np.testing.assert_array_equal(rgba[..., 3], np.where(ids != 0, 255, 0))
    probs = _probs(ids, 2)
    soft = cutout(image, ids, CELEBAMASK, probs=probs)
    np.testing.assert_array_equal(soft[..., 3], np.round((1 - probs[0]) * 255).astype(np.uint8))
    grown = cutout(image, ids, CELEBAMASK, grow=2)[..., 3]
    np.testing.assert_array_equal(grown, grow_mask(rgba[..., 3], 2))


def test_bad_names_and_label_sets_are_one_line():
    ids = _random_ids()
    with pytest.raises(SegformerError) as err:
        part_masks(ids, CELEBAMASK, "hair,hiar")
    message = str(err.value)
    assert "'hiar'" in message and "background, skin, nose" in message and "\n" not in message
    with pytest.raises(SegformerError, match="no class named background"):
        cutout(np.zeros((*ids.shape, 3), np.uint8), ids % 5, ADE20K)
    with pytest.raises(SegformerError, match="no part named"):
        part_masks(ids, CELEBAMASK, " , ")
    with pytest.raises(SegformerError, match="grow must be a whole number"):
        part_masks(ids, CELEBAMASK, "hair", grow=1.5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    out = tmp_path_factory.mktemp("model") / "tiny"
    save_model(create_model(tiny_config("micro", num_classes=19)), out, meta={"label_set": "celebamask"})
    return out


def _photo(path: Path, h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def test_predict_writes_part_masks_and_cutouts(model_dir, tmp_path):
    image = _photo(tmp_path / "in" / "a.png")
    _photo(tmp_path / "in" / "b.png", seed=1)
    predictor = Predictor(model_dir, faces=False, image_size=32)
    ids = predictor(image)
    present = [CELEBAMASK.class_names[c] for c in np.unique(ids)][:3]  # random weights: whatever it finds
    out = tmp_path / "out"
    argv = ["predict", "--whole-image", "--img-size", "32", str(model_dir), str(tmp_path / "in")]
    assert main([*argv, "--out", str(out), "--parts", ",".join(present), "--cutout", "--quiet"]) == 0
    labels = load_mask(out / "a.png")
    np.testing.assert_array_equal(labels, ids)
    assert sorted(p.name for p in (out / "parts" / "a").iterdir()) == sorted(f"{n}.png" for n in present)
    for name in present:
        mask = np.asarray(Image.open(out / "parts" / "a" / f"{name}.png"))
        np.testing.assert_array_equal(mask, np.where(labels == CELEBAMASK.index(name), 255, 0))
    rgba = Image.open(out / "cutout" / "a.png")
    assert rgba.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(rgba)[..., :3], image)
    np.testing.assert_array_equal(np.asarray(rgba)[..., 3], np.where(labels != 0, 255, 0))
    assert (out / "cutout" / "b.png").is_file() and (out / "parts" / "b").is_dir()

    soft = tmp_path / "soft"
    edits = ["--soft", "--grow", "2", "--feather", "3", "--probs"]
    assert main([*argv, "--out", str(soft), "--parts", present[0], "--cutout", *edits, "--quiet"]) == 0
    probs = np.load(soft / "probs" / "a.npy").astype(np.float32)
    expected = part_masks(labels, CELEBAMASK, present[0], probs=probs, grow=2, feather=3)[present[0]]
    written = np.asarray(Image.open(soft / "parts" / "a" / f"{present[0]}.png")).astype(int)
    assert np.abs(written - expected).max() <= 1  # the file's probabilities are float16
    alpha = np.asarray(Image.open(soft / "cutout" / "a.png"))[..., 3].astype(int)
    expected = cutout(image, labels, CELEBAMASK, probs=probs, grow=2, feather=3)[..., 3]
    assert np.abs(alpha - expected).max() <= 1


def test_predict_refuses_parts_it_cannot_write(model_dir, tmp_path, capsys):
    _photo(tmp_path / "a.png")
    argv = ["predict", "--whole-image", str(model_dir), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]
    for extra, needle in [
        (["--parts", "hair,hiar"], "unknown part 'hiar': label set celebamask has background, skin,"),
        (["--soft"], "--soft: shape the --parts masks and the --cutout alpha"),
        (["--grow", "2", "--feather", "1"], "--grow, --feather: shape the --parts masks"),
    ]:
        assert main([*argv, *extra, "--quiet"]) == 1
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
