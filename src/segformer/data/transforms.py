"""Augmentation and preprocessing for (image, mask) pairs: the presets of the seed's augmentation
ablation (SPEC.md §2.3), written with numpy + OpenCV so that a 2-core machine keeps up with training.

- ``none``: resize to the training size.
- ``geometric``: one affine warp = random scale, rotation and crop/pad (pad: image 0, mask = ignore),
  then a horizontal flip with probability 0.5 that also swaps the label set's left/right classes.
- ``photometric``: brightness, contrast, saturation, hue, occasional Gaussian blur and noise.
- ``both``: geometric then photometric.

Masks are only ever resampled with nearest neighbour; image resizes are bilinear with half-pixel
centres (`cv2.INTER_LINEAR`, the same sampling as `torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)`), so training and evaluation see the same kind of pixels. All randomness comes
from the `np.random.Generator` passed in, so a sample's augmentation is a function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..errors import SegformerError
from .labels import LabelSet, get_label_set

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("none", "geometric", "photometric", "both")

# OpenCV would otherwise start its own thread pool inside every DataLoader worker.
cv2.setNumThreads(1)


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def resize_image(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image to `size` = S or (H, W)."""
    h, w = _hw(size)
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) mask with pixel centres aligned like `resize_image`."""
    h, w = _hw(size)
    if mask.shape == (h, w):
        return mask
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


def hflip(
    image: np.ndarray, mask: np.ndarray | None, label_set: LabelSet | str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror left-right; the mask's left/right classes swap (a subject's left eye seen in a mirror
    lies where a right eye would be, so it must be labelled as one)."""
    image = np.ascontiguousarray(image[:, ::-1])
    if mask is not None:
        mask = get_label_set(label_set).flip_lut()[mask[:, ::-1]]
    return image, mask


def random_affine(
    image: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    size: int | Sequence[int],
    scale: tuple[float, float] = (0.75, 1.25),
    rotate: float = 15.0,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit the image to `size`, then zoom by s ~ U(scale), rotate by U(-rotate, rotate) degrees and
    shift by up to |s - 1| / 2 of the output per axis (a random crop when zoomed in, a random placement
    on the padded canvas when zoomed out) -- all in one warp, so pixels are resampled once."""
    oh, ow = _hw(size)
    h, w = image.shape[:2]
    s = rng.uniform(*scale)
    theta = math.radians(rng.uniform(-rotate, rotate))
    tx = rng.uniform(-1.0, 1.0) * abs(s - 1.0) * ow / 2
    ty = rng.uniform(-1.0, 1.0) * abs(s - 1.0) * oh / 2
    sx, sy = s * ow / w, s * oh / h
    cos, sin = math.cos(theta), math.sin(theta)
    # dst = R @ diag(sx, sy) @ (src - c_src) + c_dst + t, with pixel centres at integer coordinates
    # (c = (size - 1) / 2), which makes s = 1, theta = 0 exactly a half-pixel-aligned resize.
    a = np.array([[cos * sx, -sin * sy], [sin * sx, cos * sy]])
    c_src = np.array([(w - 1) / 2, (h - 1) / 2])
    c_dst = np.array([(ow - 1) / 2 + tx, (oh - 1) / 2 + ty])
    m = np.hstack([a, (c_dst - a @ c_src)[:, None]])
    image = cv2.warpAffine(
        image, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )
    if mask is not None:
        mask = cv2.warpAffine(
            mask,
            m,
            (ow, oh),
            flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=ignore_index,
        )
    return image, mask


_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma, as PIL's "L"


def photometric(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.25,
    contrast: float = 0.25,
    saturation: float = 0.25,
    hue: float = 0.05,
    blur_p: float = 0.25,
    noise_p: float = 0.25,
) -> np.ndarray:
    """Colour jitter of an (H, W, 3) uint8 image: factors drawn from [1 - x, 1 + x], hue shifted by up to
    `hue` of the colour circle, Gaussian blur (sigma 0.3-1.5 px) and Gaussian noise (std 2-10 grey
    levels) each with their probability."""
    img = image.astype(np.float32)
    img *= rng.uniform(1 - brightness, 1 + brightness)
    grey = img @ _GREY  # (H, W)
    c = rng.uniform(1 - contrast, 1 + contrast)
    img = (img - grey.mean()) * c + grey.mean()
    grey = grey * c + grey.mean() * (1 - c)  # luma of the contrast-adjusted image
    sat = rng.uniform(1 - saturation, 1 + saturation)
    img = (img - grey[:, :, None]) * sat + grey[:, :, None]
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    shift = rng.uniform(-hue, hue)
    if abs(shift) * 180 >= 0.5:  # OpenCV hue is in [0, 180) for uint8 images
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int16) + round(shift * 180)) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < blur_p:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.3, 1.5))
    if rng.random() < noise_p:
        noise = rng.standard_normal(out.shape, dtype=np.float32) * rng.uniform(2.0, 10.0)
        out = np.clip(out + noise + 0.5, 0, 255).astype(np.uint8)
    return out


def normalize(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ``(x / 255 - mean) / std``."""
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()  # (3, H, W)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255
    return t.sub_(m).div_(s)


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Inverse of `normalize`: (3, H, W) float -> (H, W, 3) uint8."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    x = (image.detach().cpu().float() * s + m).clamp(0, 1) * 255 + 0.5
    return x.to(torch.uint8).permute(1, 2, 0).numpy()


@dataclass
class SegTransform:
    """``(image uint8 HWC, mask uint8 HW | None, rng | None) -> (image (3, H, W) float32, mask (H, W)
    int64 | None)``.

    train=True: the preset's augmentation, resized/cropped to `size` (image and mask alike).
    train=False: the image resized to `size`, the mask returned at its own resolution, unchanged
    (evaluation compares predictions with the original label map).
    """

    preset: str
    size: tuple[int, int]
    label_set: LabelSet
    train: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: tuple[float, float] = (0.75, 1.25)
    rotate: float = 15.0
    flip_p: float = 0.5

    def augment(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The uint8 (image, mask) after augmentation and resizing, before normalisation."""
        if not self.train:
            return resize_image(image, self.size), mask
        rng = np.random.default_rng() if rng is None else rng
        if self.preset in ("geometric", "both"):
            image, mask = random_affine(
                image, mask, rng, self.size, self.scale, self.rotate, self.label_set.ignore_index
            )
            if rng.random() < self.flip_p:
                image, mask = hflip(image, mask, self.label_set)
        else:
            image = resize_image(image, self.size)
            mask = None if mask is None else resize_mask(mask, self.size)
        if self.preset in ("photometric", "both"):
            image = photometric(image, rng)
        return image, mask

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, mask = self.augment(image, mask, rng)
        mask_t = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()
        return normalize(image, self.mean, self.std), mask_t


def build_transform(
    preset: str,
    size: int | Sequence[int],
    label_set: LabelSet | str = "celebamask",
    train: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> SegTransform:
    """The transform of an augmentation preset (``none``, ``geometric``, ``photometric``, ``both``)."""
    if preset not in PRESETS:
        raise SegformerError(f"unknown augmentation preset {preset!r}; known: {', '.join(PRESETS)}")
    h, w = _hw(size)
    if h < 1 or w < 1:
        raise SegformerError(f"transform size must be positive, got {size}")
    return SegTransform(preset, (h, w), get_label_set(label_set), train, tuple(mean), tuple(std))
