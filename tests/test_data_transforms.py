"""Augmentation: the flip swaps left/right classes, image and mask stay aligned under every transform,
masks are never interpolated, padding is ignore, resizes match torch's bilinear, runs are seeded; the
one-warp pipeline matches the seed's warp-then-mirror and resize-then-warp, the one-matrix colour jitter
matches the float reference, uint8 output normalised on the device equals the float output."""

from __future__ import annotations

from dataclasses import replace

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


# --- Exact references for OpenCV's warps -------------------------------------------------------------
# Tests compare OpenCV's uint8 warps with exact float64 bilinear / nearest sampling, within what
# OpenCV's arithmetic promises, rather than with each other:
# - `cv2.warpAffine`, INTER_LINEAR (OpenCV 4, imgwarp.cpp): each source coordinate is the sum of two
#   terms rounded to 1/1024 pixel (AB_BITS = 10), then rounded to 1/32 pixel (INTER_BITS = 5), so the
#   sampled point is off by up to 1/64 + 1/1024 pixel per axis; the four bilinear weights are 15-bit
#   fixed point (INTER_REMAP_COEF_BITS), each off by at most 2^-15. OpenCV 5 samples at float
#   coordinates with float weights, well inside this.
# - `cv2.resize`, INTER_LINEAR on uint8 (resize.cpp, the bit-exact path): exact coordinates, the two
#   weights of each axis in 8-bit fixed point summing to one, so each weight is off by at most 2^-9.
# Both round the result to uint8 once (1/2 grey level).
WARP_COORD_ERROR = 1 / 64 + 1 / 1024
WARP_WEIGHT_ERROR = 4 * 255 / 2**15
RESIZE_WEIGHT_ERROR = 1 / 512
# Nearest neighbour (OpenCV 4: the coordinate to 1/1024 pixel before it is rounded; OpenCV 5 and torch:
# float32, whose error on coordinates below 256 stays far under 1/4096) decides within this distance
# of a tie; such pixels may take either neighbour.
NEAREST_TIE = 1 / 1024 + 1 / 4096


def resize_map(src_hw: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(2, 3) output -> source pixel map of a half-pixel-aligned resize."""
    (h, w), (oh, ow) = src_hw, size
    return np.array([[w / ow, 0, (w / ow - 1) / 2], [0, h / oh, (h / oh - 1) / 2]])


def source_points(inverse: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The exact (float64) source coordinates (x, y) of every output pixel under an output -> source
    map, pixel centres at integers."""
    y, x = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    return inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2], inverse[1, 0] * x + inverse[
        1, 1
    ] * y + inverse[1, 2]


def reference_warp(image: np.ndarray, inverse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Exact bilinear sampling of an (H, W, C) image at `source_points`, outside the image 0
    (BORDER_CONSTANT): (h, w, C) float64."""
    pad = 2
    img = np.pad(image.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)))
    sx, sy = source_points(inverse, size)
    # points further out than the padding read only zeros, as at the padding's outer edge
    sx = np.clip(sx + pad, 0, img.shape[1] - 2)
    sy = np.clip(sy + pad, 0, img.shape[0] - 2)
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def local_slope(image: np.ndarray, inverse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C): per output pixel, the largest |difference| of horizontally adjacent source pixels
    plus that of vertically adjacent ones, in the 4x4 source block around its sample point (zeros
    outside). Within a bilinear cell the partial derivatives are blends of the cell's differences, and
    a point moved by less than a pixel stays within the cells of that block, so moving it by (dx, dy)
    changes the interpolated value by at most max(|dx|, |dy|) times this slope."""
    pad = 3
    img = np.pad(image.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view
    gx = win(np.abs(np.diff(img, axis=1)), (4, 3), axis=(0, 1)).max(axis=(-2, -1))
    gy = win(np.abs(np.diff(img, axis=0)), (3, 4), axis=(0, 1)).max(axis=(-2, -1))
    sx, sy = source_points(inverse, size)
    x0 = np.clip(np.floor(sx).astype(int) + pad - 1, 0, gx.shape[1] - 1)
    y0 = np.clip(np.floor(sy).astype(int) + pad - 1, 0, gx.shape[0] - 1)
    return gx[y0, x0] + gy[y0, x0]


def warp_tolerance(image: np.ndarray, inverse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """How far `cv2.warpAffine`'s INTER_LINEAR uint8 result may lie from `reference_warp`: 1/2 for the
    rounding, the sample point's error times the local slope, the weights' error times 255."""
    return 0.5 + WARP_COORD_ERROR * local_slope(image, inverse, size) + WARP_WEIGHT_ERROR


def resize_tolerance(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """How far `cv2.resize`'s INTER_LINEAR uint8 result may lie from the exact resize: 1/2 for the
    rounding, each axis' weight error times the difference it weights (bounded by the local slope)."""
    return 0.5 + RESIZE_WEIGHT_ERROR * local_slope(image, resize_map(image.shape[:2], size), size)


def nearest_candidates(
    mask: np.ndarray, inverse: np.ndarray, size: tuple[int, int], ignore: int, lut: np.ndarray | None = None
) -> np.ndarray:
    """(4, h, w): the labels nearest-neighbour sampling may give each output pixel: the nearest source
    pixel, or, within `NEAREST_TIE` of a tie, either neighbour on each tied axis; outside the mask
    `ignore`; `lut` applied (a flip's class swap)."""
    h, w = mask.shape
    sx, sy = source_points(inverse, size)
    out = []
    for ex, ey in [(-1, -1), (-1, 1), (1, -1), (1, 1)]:
        x = np.floor(sx + 0.5 + ex * NEAREST_TIE).astype(int)
        y = np.floor(sy + 0.5 + ey * NEAREST_TIE).astype(int)
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        labels = np.where(inside, mask[y.clip(0, h - 1), x.clip(0, w - 1)], ignore)
        out.append(labels if lut is None else lut[labels])
    return np.stack(out)


def is_a_nearest_sample(labels: np.ndarray, candidates: np.ndarray) -> bool:
    """Every pixel's label is one of its `nearest_candidates`."""
    return bool((labels[None] == candidates).any(axis=0).all())


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
    """Without zoom, rotation or shift the warp is the half-pixel-aligned resize: the warp and
    `resize_image` each lie within their OpenCV precision (`warp_tolerance`, `resize_tolerance`) of the
    exact resize, and both masks are nearest samples of it. The source is noise, the hardest case: its
    slopes reach 255 grey levels per pixel, so OpenCV 4's 1/32-pixel sample points alone may move a
    value by up to 8 levels where the exact warp is smooth (OpenCV 5 stays within 1)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = blocks_mask(40, 60)
    out, out_mask = random_affine(image, mask, rng, (30, 45), scale=(1.0, 1.0), rotate=0.0)
    inverse = resize_map((40, 60), (30, 45))
    exact = reference_warp(image, inverse, (30, 45))
    tolerance = warp_tolerance(image, inverse, (30, 45))
    assert (np.abs(out - exact) <= tolerance).all()
    assert (np.abs(resize_image(image, (30, 45)) - exact) <= resize_tolerance(image, (30, 45))).all()
    # the tolerance notices a sample grid off by 1/8 pixel
    shifted = reference_warp(image, inverse + np.array([[0, 0, 1 / 8], [0, 0, 0]]), (30, 45))
    assert not (np.abs(shifted - exact) <= tolerance).all()
    candidates = nearest_candidates(mask, inverse, (30, 45), CELEBAMASK.ignore_index)
    assert is_a_nearest_sample(out_mask, candidates)
    assert is_a_nearest_sample(resize_mask(mask, (30, 45)), candidates)


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
    pipeline drew the same numbers in the same order), straight from a larger source. In exact
    arithmetic the two sample the same points (checked on `reference_warp`). OpenCV computes each
    sample grid on its own (OpenCV 4 rounds every point to 1/32 pixel), so each path's image is held
    to its exact warp within `warp_tolerance` and each mask must be a nearest sample; the tolerance is
    largest where the zoomed-out source meets the black canvas (slopes of ~200 grey levels)."""
    mask = checker_mask(160, 160)
    image = smooth_image(160, 160)
    t = build_transform("geometric", 64, CELEBAMASK)
    ignore, lut = CELEBAMASK.ignore_index, CELEBAMASK.flip_lut()
    flips = 0
    for seed in range(16):
        rng = np.random.default_rng(seed)
        old_img, old_mask = random_affine(image, mask, rng, 64)
        flip = rng.random() < 0.5
        new_img, new_mask = t.augment(image, mask, np.random.default_rng(seed))
        p = t.draw(np.random.default_rng(seed))
        assert p.flip == flip
        flips += flip
        old_inv = cv2.invertAffineTransform(affine_matrix(replace(p, flip=False), (160, 160), 64))
        new_inv = cv2.invertAffineTransform(affine_matrix(p, (160, 160), 64))
        old_exact, new_exact = (
            reference_warp(image, old_inv, (64, 64)),
            reference_warp(image, new_inv, (64, 64)),
        )
        np.testing.assert_allclose(new_exact, old_exact[:, ::-1] if flip else old_exact, atol=1e-6)
        assert (np.abs(old_img - old_exact) <= warp_tolerance(image, old_inv, (64, 64))).all()
        assert (np.abs(new_img - new_exact) <= warp_tolerance(image, new_inv, (64, 64))).all()
        assert is_a_nearest_sample(old_mask, nearest_candidates(mask, old_inv, (64, 64), ignore))
        assert is_a_nearest_sample(
            new_mask, nearest_candidates(mask, new_inv, (64, 64), ignore, lut if flip else None)
        )
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
