"""Augmentation: the flip swaps left/right classes, image and mask stay aligned under every transform,
masks are never interpolated, padding is ignore, resizes match torch's bilinear, runs are seeded; the
one-warp pipeline matches the seed's warp-then-mirror and resize-then-warp, the one-matrix colour jitter
matches the float reference, uint8 output normalised on the device equals the float output."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segformer import SegformerError
from segformer.data.check import is_mirrored
from segformer.data.io import colorize
from segformer.data.labels import CELEBAMASK
from segformer.data.synthetic import generate_face
from segformer.data.transforms import (
    GREY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    AugmentParams,
    affine_matrix,
    build_transform,
    denormalize,
    draw_params,
    hflip,
    jitter,
    normalize,
    photometric,
    random_affine,
    resize_image,
    resize_mask,
    warp,
)
from segformer.engine.data import collate_batch, to_device_batch

L_EYE, R_EYE = 4, 5


def blocks_mask(h: int = 48, w: int = 64) -> np.ndarray:
    """Large rectangles of several classes, l_eye on the image's right and r_eye on its left."""
    mask = np.zeros((h, w), np.uint8)
    y, x = h / 48, w / 64
    mask[int(4 * y) : int(44 * y), int(8 * x) : int(56 * x)] = 1
    mask[int(10 * y) : int(20 * y), int(36 * x) : int(50 * x)] = L_EYE
    mask[int(10 * y) : int(20 * y), int(14 * x) : int(28 * x)] = R_EYE
    mask[int(28 * y) : int(40 * y), int(20 * x) : int(44 * x)] = 13
    return mask


def test_flip_moves_l_eye_to_the_left_and_renames_it():
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 4:6] = L_EYE  # only l_eye, on the image's right
    image = np.zeros((4, 6, 3), np.uint8)
    image[1:3, 4:6] = 200
    img_f, mask_f = hflip(image, mask, CELEBAMASK)
    expected = np.zeros((4, 6), np.uint8)
    expected[1:3, 0:2] = R_EYE  # now on the left, and labelled r_eye
    np.testing.assert_array_equal(mask_f, expected)
    assert img_f[1:3, 0:2].min() == 200 and img_f[:, 2:].max() == 0
    img_ff, mask_ff = hflip(img_f, mask_f, "celebamask")
    np.testing.assert_array_equal(mask_ff, mask)
    np.testing.assert_array_equal(img_ff, image)


def test_resize_matches_torch_bilinear():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in [(20, 31), (64, 80)]:
        ours = resize_image(image, size).astype(np.float32)
        ref = F.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None].float(),
            size=size,
            mode="bilinear",
            align_corners=False,
        )[0].permute(1, 2, 0)
        assert np.abs(ours - ref.numpy()).max() <= 1.0  # uint8 rounding only


def test_nearest_mask_resize_matches_torch_nearest_exact():
    mask = np.random.default_rng(1).integers(0, 19, (37, 53), dtype=np.uint8)
    ours = resize_mask(mask, (20, 31))
    ref = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(20, 31), mode="nearest-exact")
    np.testing.assert_array_equal(ours, ref[0, 0].numpy().astype(np.uint8))


def test_affine_without_randomness_is_a_plain_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out, mask = random_affine(image, blocks_mask(40, 60), rng, (30, 45), scale=(1.0, 1.0), rotate=0.0)
    assert np.abs(out.astype(int) - resize_image(image, (30, 45)).astype(int)).max() <= 1
    assert (mask == resize_mask(blocks_mask(40, 60), (30, 45))).mean() > 0.97  # ties may round either way


def _paint(mask: np.ndarray) -> np.ndarray:
    """Colour each pixel by its class, left and right parts alike (so a flip keeps colours valid)."""
    return colorize(np.minimum(mask, CELEBAMASK.flip_lut()[mask]), CELEBAMASK)


def _aligned_fraction(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of interior pixels (3x3 neighbourhood of one class) whose colour is their class's colour."""
    pad = np.pad(mask, 1, mode="edge")
    uniform = np.ones(mask.shape, bool)
    for dy in range(3):
        for dx in range(3):
            uniform &= pad[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    interior = uniform & (mask != 255)
    assert interior.sum() > 500
    close = np.abs(image.astype(int) - _paint(mask).astype(int)).max(axis=2) <= 3
    return float(close[interior].mean())


def checker_mask(h: int, w: int, cell: int = 16) -> np.ndarray:
    classes = np.array([0, 1, L_EYE, 13, R_EYE, 17, 18, 2], np.uint8)
    yy, xx = np.mgrid[0:h, 0:w] // cell
    return classes[(yy * 3 + xx) % len(classes)]


@pytest.mark.parametrize("preset", ["none", "geometric"])
def test_image_and_mask_stay_aligned(preset):
    mask = checker_mask(96, 128)
    image = _paint(mask)  # every pixel's colour names its class
    t = build_transform(preset, (72, 90), CELEBAMASK)
    for seed in range(12):
        img, m = t.augment(image, mask, np.random.default_rng(seed))
        assert img.shape == (72, 90, 3) and m.shape == (72, 90)
        assert _aligned_fraction(img, m) > 0.97  # (bilinear blends where nearest rounds to one side)
        # the measure itself notices a misalignment of two pixels
        assert _aligned_fraction(np.roll(img, 2, axis=1), m) < 0.9


def test_photometric_moves_no_pixel():
    mask = blocks_mask()
    image = colorize(mask, CELEBAMASK)
    geo, both = build_transform("geometric", 40, CELEBAMASK), build_transform("both", 40, CELEBAMASK)
    photo = build_transform("photometric", 40, CELEBAMASK)
    for seed in range(5):
        img_g, m_g = geo.augment(image, mask, np.random.default_rng(seed))
        img_b, m_b = both.augment(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(m_b, m_g)  # the same geometry for the same seed, plus colour
        assert not np.array_equal(img_b, img_g)
        _, m_p = photo.augment(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(m_p, resize_mask(mask, 40))
        # without blur and noise the jitter is a function of the pixel's colour alone
        out = photometric(image, np.random.default_rng(seed), blur_p=0.0, noise_p=0.0)
        assert not np.array_equal(out, image)
        for cls in np.unique(mask):
            assert len(np.unique(out[mask == cls], axis=0)) == 1


def test_masks_are_never_interpolated_and_padding_is_ignore():
    mask = blocks_mask()
    image = colorize(mask, CELEBAMASK)
    allowed = {0, 1, L_EYE, R_EYE, 13, 255}
    t = build_transform("both", 36, CELEBAMASK)
    for seed in range(20):
        _, m = t.augment(image, mask, np.random.default_rng(seed))
        assert set(np.unique(m).tolist()) <= allowed
    # zoomed out: the canvas border is padding -- ignore in the mask, black in the image
    rng = np.random.default_rng(0)
    img, m = random_affine(image, mask, rng, 48, scale=(0.5, 0.5), rotate=0.0)
    assert m[0, 0] == 255 and m[-1, -1] == 255 and (m == 255).mean() > 0.5
    assert img[m == 255].max() <= 10  # (bilinear may bleed one pixel into the border)


def test_rotation_and_flip_keep_faces_unmirrored():
    """Only the flip may move left/right parts across, and it renames them: a correctly labelled face stays
    correctly labelled under any geometric augmentation."""
    t = build_transform("geometric", 96, CELEBAMASK)
    for seed in range(30):
        image, mask = generate_face(np.random.default_rng((7, seed)), 96)
        assert not is_mirrored(mask, CELEBAMASK)
        _, m = t.augment(image, mask, np.random.default_rng(seed))
        assert not is_mirrored(m, CELEBAMASK)


def test_seeded_and_reproducible():
    image, mask = generate_face(np.random.default_rng(3), 64)
    t = build_transform("both", 48, CELEBAMASK)
    a = t(image, mask, np.random.default_rng(5))
    b = t(image, mask, np.random.default_rng(5))
    c = t(image, mask, np.random.default_rng(6))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_output_tensors_and_eval_mode():
    image, mask = generate_face(np.random.default_rng(0), 80)
    img_t, mask_t = build_transform("both", (48, 64), CELEBAMASK)(image, mask, np.random.default_rng(0))
    assert img_t.shape == (3, 48, 64) and img_t.dtype == torch.float32
    assert mask_t.shape == (48, 64) and mask_t.dtype == torch.int64
    img_e, mask_e = build_transform("both", 48, CELEBAMASK, train=False)(image, mask)
    assert img_e.shape == (3, 48, 48)
    assert torch.equal(mask_e, torch.from_numpy(mask).long())  # the label map, untouched
    torch.testing.assert_close(img_e, normalize(resize_image(image, 48)))
    img_only, none = build_transform("none", 32, "celebamask")(image, None, None)
    assert img_only.shape == (3, 32, 32) and none is None


def test_normalize_uses_imagenet_statistics():
    mean_pixel = np.array([[[round(m * 255) for m in IMAGENET_MEAN]]], dtype=np.uint8)
    assert normalize(mean_pixel).abs().max() < 0.01
    white = normalize(np.full((1, 1, 3), 255, np.uint8))[:, 0, 0]
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    torch.testing.assert_close(white, expected)
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(denormalize(normalize(image)), image)


def test_unknown_preset_and_bad_size():
    assert PRESETS == ("none", "geometric", "photometric", "both")
    with pytest.raises(SegformerError, match=r"unknown augmentation preset 'flip'.*none, geometric"):
        build_transform("flip", 64)
    with pytest.raises(SegformerError, match="size must be positive"):
        build_transform("none", 0)


def smooth_image(h: int, w: int) -> np.ndarray:
    """Low-frequency colour waves: resampling it once or twice gives nearly the same pixels."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(2 * np.pi * (1.3 * xx + 0.4 * yy) + k) for k in range(3)]
    return (127.5 + 100 * np.stack(channels, axis=2)).round().astype(np.uint8)


def test_one_warp_matches_the_seed_warp_then_mirror():
    """The flip inside the warp matrix gives what the seed got by mirroring the warped image (its
    pipeline drew the same numbers in the same order), straight from a larger source."""
    mask = checker_mask(160, 160)
    image = smooth_image(160, 160)
    t = build_transform("geometric", 64, CELEBAMASK)
    flips = 0
    for seed in range(16):
        rng = np.random.default_rng(seed)
        old_img, old_mask = random_affine(image, mask, rng, 64)
        if rng.random() < 0.5:
            flips += 1
            old_img, old_mask = hflip(old_img, old_mask, CELEBAMASK)
        new_img, new_mask = t.augment(image, mask, np.random.default_rng(seed))
        assert np.abs(new_img.astype(int) - old_img.astype(int)).max() <= 2
        assert (new_mask == old_mask).mean() > 0.995  # nearest-neighbour ties may round either way
    assert 0 < flips < 16  # both branches were compared


def test_resolution_direct_warp_matches_resize_then_warp():
    """Warping a 4x larger source straight to the output size gives, on a smooth image, what resizing
    first and warping the small image gives (the full-resolution intermediate bought nothing)."""
    image = smooth_image(256, 256)
    small = resize_image(image, 64)
    for seed in range(8):
        p = draw_params(np.random.default_rng(seed), 64, photometric=False)
        direct, _ = warp(image, None, p, 64, CELEBAMASK)
        m = affine_matrix(p, (64, 64), 64)
        two_step = cv2.warpAffine(small, m, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        inside = cv2.warpAffine(np.ones((64, 64), np.uint8), m, (64, 64), flags=cv2.INTER_NEAREST)
        # away from the source's edge, where each blends with the black canvas at its own resolution
        kernel = np.ones((7, 7), np.uint8)
        inside = cv2.erode(inside, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        diff = np.abs(direct.astype(int) - two_step.astype(int))[inside]
        assert inside.mean() > 0.4 and diff.mean() < 1.0 and diff.max() <= 4


def reference_colour(image: np.ndarray, p: AugmentParams) -> np.ndarray:
    """The seed's float implementation of brightness, contrast and saturation (three passes)."""
    img = image.astype(np.float64) * p.brightness
    grey = img @ GREY
    c = p.contrast
    img = (img - grey.mean()) * c + grey.mean()
    grey = grey * c + grey.mean() * (1 - c)
    img = (img - grey[:, :, None]) * p.saturation + grey[:, :, None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def test_colour_matrix_equals_the_float_reference():
    image = generate_face(np.random.default_rng(2), 64)[0]
    for seed in range(10):
        d = draw_params(np.random.default_rng(seed), 64, geometric=False)
        p = AugmentParams(brightness=d.brightness, contrast=d.contrast, saturation=d.saturation)
        assert p.changes_colours
        assert np.abs(jitter(image, p).astype(int) - reference_colour(image, p).astype(int)).max() <= 1
    assert jitter(image, AugmentParams()) is image  # the identity costs nothing


def test_hue_blur_and_noise():
    image = smooth_image(48, 48)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(int)
    out = cv2.cvtColor(jitter(image, AugmentParams(hue=9)), cv2.COLOR_RGB2HSV).astype(int)
    coloured = hsv[:, :, 1] > 100  # hue is well defined there
    shift = (out[:, :, 0] - hsv[:, :, 0]) % 180
    assert np.median(shift[coloured]) == 9
    blurred = jitter(image, AugmentParams(blur_sigma=1.2))
    np.testing.assert_array_equal(blurred, cv2.GaussianBlur(image, (0, 0), sigmaX=1.2))
    grey = np.full((64, 64, 3), 128, np.uint8)
    noisy = jitter(grey, AugmentParams(noise_std=6.0, noise_seed=3))
    np.testing.assert_array_equal(noisy, jitter(grey, AugmentParams(noise_std=6.0, noise_seed=3)))
    assert not np.array_equal(noisy, jitter(grey, AugmentParams(noise_std=6.0, noise_seed=4)))
    residual = noisy.astype(float) - 128
    assert abs(residual.mean()) < 0.2 and abs(residual.std() - 6.0) < 0.2
    assert np.abs(np.corrcoef(residual[:, :, 0].ravel(), residual[:, :, 1].ravel())[0, 1]) < 0.05


def test_draws_follow_the_presets():
    """Geometry is drawn first, so a seed's geometry is the same with or without colour jitter."""
    for seed in range(20):
        both = draw_params(np.random.default_rng(seed), 64)
        geo = draw_params(np.random.default_rng(seed), 64, photometric=False)
        photo = draw_params(np.random.default_rng(seed), 64, geometric=False)
        assert (both.scale, both.angle, both.shift, both.flip) == (geo.scale, geo.angle, geo.shift, geo.flip)
        assert not geo.changes_colours and not photo.moves_pixels
        assert 0.75 <= both.scale <= 1.25 and abs(both.angle) <= 15
        assert max(abs(v) for v in both.shift) <= abs(both.scale - 1) * 32 + 1e-9
        assert abs(both.hue) <= 9 and (both.blur_sigma == 0 or 0.3 <= both.blur_sigma <= 1.5)
        assert both.noise_std == 0 or 2 <= both.noise_std <= 10


def test_uint8_output_normalised_on_the_device_equals_the_float_output():
    faces = [generate_face(np.random.default_rng(i), 64) for i in range(3)]
    f32 = build_transform("both", 48, CELEBAMASK)
    u8 = build_transform("both", 48, CELEBAMASK, output="uint8")
    batch = collate_batch([u8(im, m, np.random.default_rng(i)) for i, (im, m) in enumerate(faces)])
    assert batch[0].dtype == torch.uint8 and batch[0].shape == (3, 3, 48, 48)
    assert batch[1].dtype == torch.uint8 and batch[1].shape == (3, 48, 48)
    images, masks = to_device_batch(batch, "cpu")
    ref = [f32(im, m, np.random.default_rng(i)) for i, (im, m) in enumerate(faces)]
    torch.testing.assert_close(images, torch.stack([r[0] for r in ref]))
    assert masks.dtype == torch.int64 and torch.equal(masks, torch.stack([r[1] for r in ref]))
    cl, _ = to_device_batch(batch, "cpu", channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, images)
    with pytest.raises(SegformerError, match="transform output 'source'"):
        build_transform("both", 48, output="source", train=False)
