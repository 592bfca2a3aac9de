"""Augmentation on the training device (`BatchAugment`): the flip swaps left/right classes, masks stay
aligned with their images, each sample's draw gives what OpenCV gives for it, the two paths share one
distribution, and a training batch of sources becomes model input through `to_device_batch`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from segformer import SegformerError
from segformer.data.batch_augment import BatchAugment, gaussian_kernels, normalised_theta, rotate_hue
from segformer.data.labels import CELEBAMASK
from segformer.data.synthetic import generate_face
from segformer.data.transforms import (
    AugmentParams,
    affine_matrix,
    apply_params,
    build_transform,
    draw_params,
    param_tensors,
    resize_image,
)
from segformer.engine.data import augment_on_device, collate_batch, to_device_batch
from test_data_transforms import (
    L_EYE,
    R_EYE,
    _aligned_fraction,
    _paint,
    checker_mask,
    is_a_nearest_sample,
    nearest_candidates,
)


def on_device(samples: list[tuple[np.ndarray, np.ndarray, AugmentParams]], size: int):
    """Apply each sample's params with `BatchAugment`, as one batch: ((B, H, W, 3) float, (B, H, W))."""
    batch = collate_batch(
        [
            (torch.from_numpy(im).permute(2, 0, 1), torch.from_numpy(m), param_tensors(p, im.shape[:2], size))
            for im, m, p in samples
        ]
    )
    images, masks = BatchAugment(size, CELEBAMASK)(*batch)
    return images.permute(0, 2, 3, 1).numpy(), masks.numpy()


def test_device_flip_mirrors_and_swaps_classes():
    mask = np.zeros((8, 12), np.uint8)
    mask[2:6, 8:12] = L_EYE  # only l_eye, on the image's right
    image = np.zeros((8, 12, 3), np.uint8)
    image[2:6, 8:12] = 200
    size = (8, 12)
    images, masks = on_device([(image, mask, AugmentParams(flip=True)), (image, mask, AugmentParams())], size)
    expected = np.zeros((8, 12), np.uint8)
    expected[2:6, 0:4] = R_EYE  # now on the left, and labelled r_eye
    np.testing.assert_array_equal(masks[0], expected)
    np.testing.assert_allclose(images[0], image[:, ::-1], atol=1e-3)
    np.testing.assert_array_equal(masks[1], mask)  # the unflipped sample of the same batch
    np.testing.assert_allclose(images[1], image, atol=1e-3)


def test_device_geometry_and_colour_match_opencv_sample_by_sample():
    """The same draws give the same pixels as the OpenCV path: images within OpenCV's uint8 rounding
    between steps (HSV in particular); masks the same nearest-neighbour samples of the source. Where a
    pixel's exact source point lies within `NEAREST_TIE` of a tie between two source pixels, the two
    paths decide it at different precision (OpenCV 4: to 1/1024 pixel; torch: float32), so there
    either neighbour is right; such pixels are few (a few per thousand), and everywhere else the
    masks are equal."""
    samples, expected = [], []
    for seed in range(12):
        image, mask = generate_face(np.random.default_rng(seed), 80)
        p = draw_params(np.random.default_rng(seed), 48, noise_p=0.0)  # noise: see the statistics test
        samples.append((image, mask, p))
        expected.append(apply_params(image, mask, p, 48, CELEBAMASK))
    assert any(p.flip for _, _, p in samples) and any(p.blur_sigma for _, _, p in samples)
    images, masks = on_device(samples, 48)
    for k, (img, m) in enumerate(expected):
        source_mask, p = samples[k][1], samples[k][2]
        inverse = cv2.invertAffineTransform(affine_matrix(p, source_mask.shape, 48))
        lut = CELEBAMASK.flip_lut() if p.flip else None
        candidates = nearest_candidates(source_mask, inverse, (48, 48), CELEBAMASK.ignore_index, lut)
        assert is_a_nearest_sample(masks[k], candidates) and is_a_nearest_sample(m, candidates)
        ties = (candidates != candidates[:1]).any(axis=0)
        assert ties.mean() < 0.01
        np.testing.assert_array_equal(masks[k][~ties], m[~ties])
        diff = np.abs(images[k] - img)
        assert diff.mean() < 1.0 and np.percentile(diff, 99) < 4 and diff.max() < 10


def test_device_noise_has_the_drawn_strength():
    """Noise differs in its realisation (another generator) but not in its strength, per sample."""
    grey = np.full((64, 64, 3), 128, np.uint8)
    mask = np.ones((64, 64), np.uint8)
    draws = [AugmentParams(noise_std=std, noise_seed=k) for k, std in enumerate([2.0, 5.0, 9.5])]
    images, _ = on_device([(grey, mask, p) for p in draws], 64)
    for img, p in zip(images, draws, strict=True):
        cpu = apply_params(grey, mask, p, 64, CELEBAMASK)[0].astype(float)
        assert abs((img - 128).std() / (cpu - 128).std() - 1) < 0.05
        assert abs((img - 128).std() / p.noise_std - 1) < 0.05 and abs((img - 128).mean()) < 0.2
    assert not np.allclose(images[0], images[1])


def test_masks_stay_aligned_with_images_on_the_device():
    mask = checker_mask(96, 128)
    image = _paint(mask)  # every pixel's colour names its class
    samples = [
        (image, mask, draw_params(np.random.default_rng(s), (72, 90), photometric=False)) for s in range(8)
    ]
    images, masks = on_device(samples, (72, 90))
    for img, m in zip(images.round().astype(np.uint8), masks.astype(np.uint8), strict=True):
        assert _aligned_fraction(img, m) > 0.97
        assert _aligned_fraction(np.roll(img, 2, axis=1), m) < 0.9  # the measure notices 2 pixels


def measurements(images: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample statistics of augmented copies of `statistics_source`: zoom (square root of the body's
    area), orientation of the body, flip (r_eye visible), brightness and noise on the body's interior."""
    body = (masks != 0) & (masks != 255)
    area = body.sum((1, 2)).astype(float)
    angles = []
    for b in body:
        ys, xs = np.nonzero(b)
        dx, dy = xs - xs.mean(), ys - ys.mean()
        angles.append(np.degrees(0.5 * np.arctan2(2 * (dx * dy).mean(), (dx * dx).mean() - (dy * dy).mean())))
    grey = images.mean(3)
    interior = (masks == 1) & np.roll(masks == 1, 3, 1) & np.roll(masks == 1, -3, 1)
    interior &= np.roll(interior, 3, 2) & np.roll(interior, -3, 2)
    bright = np.array([g[i].mean() for g, i in zip(grey, interior, strict=True)])
    rough = np.array(
        [np.abs(np.diff(g, axis=1))[i[:, 1:]].mean() for g, i in zip(grey, interior, strict=True)]
    )
    return {
        "zoom": np.sqrt(area),
        "angle": np.abs(angles),
        "flip": (masks == R_EYE).any((1, 2)).astype(float),
        "brightness": bright,
        "roughness": rough,
    }


def statistics_source() -> tuple[np.ndarray, np.ndarray]:
    """An elongated grey body with an l_eye block on its right (the flip shows as r_eye)."""
    mask = np.zeros((96, 96), np.uint8)
    mask[30:66, 16:80] = 1
    mask[36:46, 60:72] = L_EYE
    image = np.full((96, 96, 3), 40, np.uint8)
    image[mask == 1] = (150, 120, 100)
    image[mask == L_EYE] = (30, 30, 200)
    return image, mask


def test_the_two_paths_share_one_distribution():
    """Independent draws (different seeds) through each path: the means of zoom, rotation, flip rate,
    brightness and noise agree within 4 standard errors and their spreads within 25%. Paired seeds
    would agree by construction; this compares what each path produces across the preset's whole
    distribution."""
    image, mask = statistics_source()
    t = build_transform("both", 64, CELEBAMASK)
    n = 160
    cpu = [t.augment(image, mask, np.random.default_rng((1, s))) for s in range(n)]
    cpu_stats = measurements(np.stack([c[0] for c in cpu]).astype(float), np.stack([c[1] for c in cpu]))
    samples = [(image, mask, t.draw(np.random.default_rng((2, s)))) for s in range(n)]
    dev_stats = measurements(*on_device(samples, 64))
    for key in cpu_stats:
        a, b = cpu_stats[key], dev_stats[key]
        se = np.sqrt(a.var() / n + b.var() / n)
        assert a.std() > 0 and abs(a.mean() - b.mean()) < 4 * se, key
        assert 0.75 < b.std() / a.std() < 1.33, key
    # the statistics are sharp enough to tell presets apart
    geo_t = build_transform("geometric", 64, CELEBAMASK)
    geo = [geo_t.augment(image, mask, np.random.default_rng((3, s))) for s in range(n)]
    geo_stats = measurements(np.stack([g[0] for g in geo]).astype(float), np.stack([g[1] for g in geo]))
    assert geo_stats["brightness"].std() < 0.5 * cpu_stats["brightness"].std()
    assert geo_stats["roughness"].mean() < cpu_stats["roughness"].mean() - 0.1


def test_building_blocks_against_references():
    # theta of the identity pixel map between equal sizes is the identity
    identity = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]], dtype=torch.float64)
    torch.testing.assert_close(normalised_theta(identity, (30, 40), (30, 40)), identity.float())
    # kernels: OpenCV's for each sigma, the identity for 0
    import cv2

    k = gaussian_kernels(torch.tensor([0.0, 0.8, 1.5]))
    assert k.shape == (3, 11) and k[0, 5] == 1 and k[0].sum() == 1
    for row, sigma in ((1, 0.8), (2, 1.5)):
        ref = cv2.getGaussianKernel(round(6 * sigma + 1) | 1, sigma)[:, 0]
        r = len(ref) // 2
        torch.testing.assert_close(k[row, 5 - r : 6 + r], torch.tensor(ref, dtype=torch.float32))
    # hue rotation agrees with OpenCV's HSV, and a full turn changes nothing
    rgb = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(rotate_hue(x, torch.tensor([1.0])), x, atol=1e-3, rtol=0)
    hsv = cv2.cvtColor(rgb[0], cv2.COLOR_RGB2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + 30) % 180
    ref = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(float)
    ours = rotate_hue(x, torch.tensor([30 / 180]))[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).mean() < 2.0


def test_to_device_batch_of_sources():
    faces = [generate_face(np.random.default_rng(i), 64) for i in range(4)]
    faces[3] = (resize_image(faces[3][0], (56, 72)), faces[3][1][:56, :72].copy())  # a different size
    faces[3][1][:] = 1
    src = build_transform("both", 32, CELEBAMASK, output="source")
    batch = collate_batch([src(im, m, np.random.default_rng(i)) for i, (im, m) in enumerate(faces)])
    assert batch[0].shape == (4, 3, 64, 72) and batch[0].dtype == torch.uint8  # padded to the largest
    assert batch[1][0, 0, -1] == 255 and batch[0][0, :, 0, -1].max() == 0
    images, masks = to_device_batch(batch, "cpu", augment=BatchAugment(32, CELEBAMASK))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (4, 32, 32) and masks.dtype == torch.int64
    assert images.min() > -2.2 and images.max() < 2.7  # normalised
    # the odd-sized sample: its padding never shows (only its own class, or ignore outside it)
    assert set(masks[3].unique().tolist()) <= {1, 255} and (masks[3] == 1).any()
    with pytest.raises(SegformerError, match="no augment was given"):
        to_device_batch(batch, "cpu")


def test_draws_do_not_depend_on_the_worker_count():
    """Sources travel with their draws through worker processes: the same batches whatever the count."""
    faces = [generate_face(np.random.default_rng(i), 40) for i in range(4)]

    class Faces(torch.utils.data.Dataset):
        transform = build_transform("both", 24, CELEBAMASK, output="source")

        def __len__(self) -> int:
            return len(faces)

        def __getitem__(self, i: int):
            return self.transform(*faces[i], np.random.default_rng((0, 0, i)))

    runs = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            Faces(), batch_size=2, num_workers=workers, collate_fn=collate_batch
        )
        runs.append([to_device_batch(b, "cpu", augment=BatchAugment(24, CELEBAMASK)) for b in loader])
    for (x0, m0), (x2, m2) in zip(*runs, strict=True):
        assert torch.equal(x0, x2) and torch.equal(m0, m2)


def test_augment_device_setting():
    assert not augment_on_device("auto", "cpu") and augment_on_device("auto", "cuda")
    assert augment_on_device("device", "cpu") and not augment_on_device("cpu", "cuda")
    with pytest.raises(SegformerError, match=r"data.augment_device: unknown value 'gpu'"):
        augment_on_device("gpu", "cpu")
