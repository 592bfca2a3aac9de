"""Augmentation and preprocessing for (image, mask) pairs: the presets of the seed's augmentation
ablation, written with numpy + OpenCV so that a 2-core machine keeps up with training.

- ``none``: resize to the training size.
- ``geometric``: random scale, rotation and crop/pad (pad: image 0, mask = ignore) and a horizontal
  flip with probability 0.5 that also swaps the label set's left/right classes.
- ``photometric``: brightness, contrast, saturation, hue, occasional Gaussian blur and noise.
- ``both``: geometric then photometric.

A sample's augmentation is drawn once as `AugmentParams` (`draw_params`), then applied either here
(`apply_params`: one `cv2.warpAffine` from the cached source straight to the training size, colour
changes on the small image) or on the training device for a whole batch (`batch_augment`). Both paths
apply the same draws, so they share one distribution.

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

from ..config.validate import provide
from ..errors import SegformerError
from .labels import IGNORE_INDEX, LabelSet, get_label_set

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("none", "geometric", "photometric", "both")
provide("data.augment", lambda: PRESETS)  # what a recipe's data.augment may name

# OpenCV would otherwise start its own thread pool inside every DataLoader worker. It must be set
# before OpenCV first runs in parallel, not in the workers: a worker forked after the parent's pool
# started hangs (setting it in `worker_init_fn` instead deadlocked the persistent-workers test).
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


@dataclass(frozen=True)
class AugmentParams:
    """One sample's augmentation, drawn once (`draw_params`) and applied either here with OpenCV
    (`apply_params`) or on the training device over a whole batch (`batch_augment`): both paths
    therefore share one distribution by construction. The defaults are the identity."""

    scale: float = 1.0
    angle: float = 0.0
    """Rotation in degrees (counter-clockwise on screen)."""
    shift: tuple[float, float] = (0.0, 0.0)
    """(x, y) translation of the output in output pixels."""
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: int = 0
    """Hue rotation in OpenCV units (1/180 of the colour circle)."""
    blur_sigma: float = 0.0
    """Gaussian blur sigma in output pixels; 0 = no blur."""
    noise_std: float = 0.0
    """Standard deviation of additive Gaussian noise in grey levels; 0 = no noise."""
    noise_seed: int = 0

    @property
    def moves_pixels(self) -> bool:
        return (self.scale, self.angle, self.shift, self.flip) != (1.0, 0.0, (0.0, 0.0), False)

    @property
    def changes_colours(self) -> bool:
        return (
            self.brightness,
            self.contrast,
            self.saturation,
            self.hue,
            self.blur_sigma,
            self.noise_std,
        ) != (1.0, 1.0, 1.0, 0, 0.0, 0.0)


def draw_params(
    rng: np.random.Generator,
    size: int | Sequence[int],
    geometric: bool = True,
    photometric: bool = True,
    scale: tuple[float, float] = (0.75, 1.25),
    rotate: float = 15.0,
    flip_p: float = 0.5,
    brightness: float = 0.25,
    contrast: float = 0.25,
    saturation: float = 0.25,
    hue: float = 0.05,
    blur_p: float = 0.25,
    noise_p: float = 0.25,
) -> AugmentParams:
    """Draw one sample's augmentation for an output of `size`, always in the same order (geometry
    first), so the geometry of a seed does not depend on whether colours are jittered too.

    Geometry: zoom s ~ U(scale), rotation U(-rotate, rotate) degrees, a shift of up to |s - 1| / 2 of
    the output per axis (a random crop when zoomed in, a random placement on the padded canvas when
    zoomed out), a horizontal flip with probability `flip_p`. Colour: brightness, contrast and
    saturation factors from [1 - x, 1 + x], a hue rotation of up to `hue` of the colour circle,
    Gaussian blur (sigma 0.3-1.5 px) and noise (std 2-10 grey levels) each with their probability.
    """
    oh, ow = _hw(size)
    geo: dict = {}
    if geometric:
        s = float(rng.uniform(*scale))
        angle = float(rng.uniform(-rotate, rotate))
        tx = float(rng.uniform(-1.0, 1.0)) * abs(s - 1.0) * ow / 2
        ty = float(rng.uniform(-1.0, 1.0)) * abs(s - 1.0) * oh / 2
        flip = flip_p > 0 and bool(rng.random() < flip_p)  # (no draw when flips are off)
        geo = {"scale": s, "angle": angle, "shift": (tx, ty), "flip": flip}
    if not photometric:
        return AugmentParams(**geo)
    b = float(rng.uniform(1 - brightness, 1 + brightness))
    c = float(rng.uniform(1 - contrast, 1 + contrast))
    sat = float(rng.uniform(1 - saturation, 1 + saturation))
    shift = float(rng.uniform(-hue, hue))
    units = round(shift * 180) if abs(shift) * 180 >= 0.5 else 0  # OpenCV hue is in [0, 180) for uint8
    sigma = float(rng.uniform(0.3, 1.5)) if rng.random() < blur_p else 0.0
    std, seed = 0.0, 0
    if rng.random() < noise_p:
        std, seed = float(rng.uniform(2.0, 10.0)), int(rng.integers(2**31))
    return AugmentParams(
        **geo,
        brightness=b,
        contrast=c,
        saturation=sat,
        hue=units,
        blur_sigma=sigma,
        noise_std=std,
        noise_seed=seed,
    )


def affine_matrix(p: AugmentParams, src_hw: Sequence[int], size: int | Sequence[int]) -> np.ndarray:
    """(2, 3) float64 map from source to output pixels of `p`'s geometry: the source fitted to `size`,
    zoomed, rotated, shifted and (when `p.flip`) mirrored -- one matrix, so pixels are resampled once
    straight from the source to the output resolution."""
    oh, ow = _hw(size)
    h, w = src_hw
    sx, sy = p.scale * ow / w, p.scale * oh / h
    theta = math.radians(p.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # dst = R @ diag(sx, sy) @ (src - c_src) + c_dst + t, with pixel centres at integer coordinates
    # (c = (size - 1) / 2), which makes the identity exactly a half-pixel-aligned resize.
    a = np.array([[cos * sx, -sin * sy], [sin * sx, cos * sy]])
    c_src = np.array([(w - 1) / 2, (h - 1) / 2])
    c_dst = np.array([(ow - 1) / 2 + p.shift[0], (oh - 1) / 2 + p.shift[1]])
    m = np.hstack([a, (c_dst - a @ c_src)[:, None]])
    if p.flip:  # x -> (ow - 1) - x: the mirror image of the output
        m[0] = -m[0]
        m[0, 2] += ow - 1
    return m


def _warp_affine(
    image: np.ndarray, mask: np.ndarray | None, m: np.ndarray, size: tuple[int, int], ignore_index: int
) -> tuple[np.ndarray, np.ndarray | None]:
    oh, ow = size
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


def warp(
    image: np.ndarray,
    mask: np.ndarray | None,
    p: AugmentParams,
    size: int | Sequence[int],
    label_set: LabelSet | str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`p`'s geometry in one `cv2.warpAffine` per array (image bilinear, mask nearest; outside the
    source: image 0, mask = ignore); a flip also swaps the mask's left/right classes (a subject's left
    eye seen in a mirror lies where a right eye would be). Without any geometry: a plain resize."""
    hw = _hw(size)
    if not p.moves_pixels:
        return resize_image(image, hw), None if mask is None else resize_mask(mask, hw)
    label_set = get_label_set(label_set)
    image, mask = _warp_affine(image, mask, affine_matrix(p, image.shape[:2], hw), hw, label_set.ignore_index)
    if mask is not None and p.flip:
        mask = cv2.LUT(mask, label_set.flip_lut())
    return image, mask


def random_affine(
    image: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    size: int | Sequence[int],
    scale: tuple[float, float] = (0.75, 1.25),
    rotate: float = 15.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit the image to `size`, then zoom, rotate and shift it as `draw_params` says (no flip) -- all
    in one warp, so pixels are resampled once."""
    p = draw_params(rng, size, photometric=False, scale=scale, rotate=rotate, flip_p=0.0)
    hw = _hw(size)
    return _warp_affine(image, mask, affine_matrix(p, image.shape[:2], hw), hw, ignore_index)


GREY = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as PIL's "L"


def colour_matrix(p: AugmentParams, mean_luma: float) -> np.ndarray:
    """(3, 4) affine map of RGB values: brightness, then contrast around the image's mean luma, then
    saturation around each pixel's luma. All three are linear, so they compose into one matrix
    (applied once per pixel instead of three float passes over the image)."""
    b, c, s = p.brightness, p.contrast, p.saturation
    m = c * b * (s * np.eye(3) + (1 - s) * np.outer(np.ones(3), GREY))
    offset = (1 - c) * b * mean_luma  # the grey level contrast pivots on: luma mean after brightness
    return np.hstack([m, np.full((3, 1), offset)])


def jitter(image: np.ndarray, p: AugmentParams) -> np.ndarray:
    """`p`'s colour changes on an (H, W, 3) uint8 image: `colour_matrix` (one pass, rounded and clipped
    to uint8), hue rotation in OpenCV's uint8 HSV, Gaussian blur, Gaussian noise."""
    if not p.changes_colours:
        return image
    mean_luma = float(np.dot(cv2.mean(image)[:3], GREY))
    out = cv2.transform(image, colour_matrix(p, mean_luma))
    if p.hue:
        lut = np.repeat(np.arange(256, dtype=np.int64)[:, None], 3, axis=1)
        lut[:180, 0] = (lut[:180, 0] + p.hue) % 180
        hsv = cv2.LUT(cv2.cvtColor(out, cv2.COLOR_RGB2HSV), lut.astype(np.uint8)[:, None, :])
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if p.blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=p.blur_sigma)
    if p.noise_std > 0:
        # OpenCV's normal generator is ~4x faster than numpy's; seeding it from the sample's own draw
        # keeps the noise a function of the sample's seed. Rounding the noise before adding it to
        # integer pixels equals rounding their sum.
        cv2.setRNGSeed(p.noise_seed)
        noise = np.empty(out.shape, np.int16)
        cv2.randn(noise.reshape(-1), 0.0, p.noise_std)  # flat: one channel, so every value is drawn
        out = cv2.add(out, noise, dtype=cv2.CV_8U)  # saturating
    return out


COLOUR_RANGES = ("brightness", "contrast", "saturation", "hue", "blur_p", "noise_p")
"""The keywords of `draw_params` that shape the colour jitter."""


def photometric(image: np.ndarray, rng: np.random.Generator, **ranges: float) -> np.ndarray:
    """Colour jitter of an (H, W, 3) uint8 image drawn from `rng`; `ranges` are any of `COLOUR_RANGES`,
    with `draw_params`'s meaning and defaults."""
    unknown = sorted(set(ranges) - set(COLOUR_RANGES))
    if unknown:
        raise TypeError(f"photometric() takes {', '.join(COLOUR_RANGES)}, not {', '.join(unknown)}")
    return jitter(image, draw_params(rng, image.shape[:2], geometric=False, **ranges))


def apply_params(
    image: np.ndarray,
    mask: np.ndarray | None,
    p: AugmentParams,
    size: int | Sequence[int],
    label_set: LabelSet | str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`p` applied with OpenCV: one warp from the source straight to `size`, then the colour changes on
    the small image."""
    image, mask = warp(image, mask, p, size, label_set)
    return jitter(image, p), mask


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


def param_tensors(
    p: AugmentParams, src_hw: Sequence[int], size: int | Sequence[int]
) -> dict[str, torch.Tensor]:
    """`p` as tensors for `batch_augment` (the DataLoader collates them into batches): ``inverse``, the
    (2, 3) float64 map from output to source pixels (flip included); ``flip`` (bool); ``colour``
    (brightness, contrast, saturation); ``hue`` (OpenCV units); ``blur`` sigma; ``noise`` std and
    ``noise_seed``."""
    inverse = cv2.invertAffineTransform(affine_matrix(p, src_hw, size))
    return {
        "inverse": torch.from_numpy(inverse),
        "flip": torch.tensor(p.flip),
        "colour": torch.tensor([p.brightness, p.contrast, p.saturation], dtype=torch.float32),
        "hue": torch.tensor(p.hue),
        "blur": torch.tensor(p.blur_sigma, dtype=torch.float32),
        "noise": torch.tensor(p.noise_std, dtype=torch.float32),
        "noise_seed": torch.tensor(p.noise_seed),
    }


OUTPUTS = ("float", "uint8", "source")


@dataclass
class SegTransform:
    """``(image uint8 HWC, mask uint8 HW | None, rng | None) -> (image, mask)`` tensors.

    train=True: the preset's augmentation, resized/cropped to `size` (image and mask alike).
    train=False: the image resized to `size`, the mask returned at its own resolution, unchanged
    (evaluation compares predictions with the original label map).

    `output` says what comes out:

    - ``float``: image (3, H, W) float32 normalised with `mean` / `std`, mask (H, W) int64;
    - ``uint8``: image (3, H, W) uint8 and mask (H, W) uint8, a quarter and an eighth of the bytes to
      move between processes and to the device; `engine.data.to_device_batch` normalises there;
    - ``source``: the untouched source image and mask (uint8) plus the sample's drawn augmentation as
      `param_tensors`; `batch_augment` applies it to the whole batch on the training device.
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
    output: str = "float"

    def draw(self, rng: np.random.Generator) -> AugmentParams:
        """The augmentation of one sample under this preset."""
        return draw_params(
            rng,
            self.size,
            geometric=self.preset in ("geometric", "both"),
            photometric=self.preset in ("photometric", "both"),
            scale=self.scale,
            rotate=self.rotate,
            flip_p=self.flip_p,
        )

    def augment(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The uint8 (image, mask) after augmentation and resizing, before normalisation."""
        if not self.train:
            return resize_image(image, self.size), mask
        p = self.draw(np.random.default_rng() if rng is None else rng)
        return apply_params(image, mask, p, self.size, self.label_set)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None = None, rng: np.random.Generator | None = None
    ):
        if self.output == "source":
            p = self.draw(np.random.default_rng() if rng is None else rng)
            m = None if mask is None else torch.from_numpy(np.require(mask, requirements="W"))
            return _chw(image), m, param_tensors(p, image.shape[:2], self.size)
        image, mask = self.augment(image, mask, rng)
        if self.output == "uint8":
            return _chw(image), None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))
        mask_t = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()
        return normalize(image, self.mean, self.std), mask_t


def _chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor. `cv2.split` into the planes is ~5x faster
    than a strided copy (`permute` then collate), a fifth of the cost of augmenting a sample."""
    out = np.empty((3, *image.shape[:2]), np.uint8)
    cv2.split(image, [out[0], out[1], out[2]])
    return torch.from_numpy(out)


def build_transform(
    preset: str,
    size: int | Sequence[int],
    label_set: LabelSet | str = "celebamask",
    train: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    output: str = "float",
) -> SegTransform:
    """The transform of an augmentation preset (``none``, ``geometric``, ``photometric``, ``both``);
    `output` is one of `OUTPUTS` (see `SegTransform`)."""
    if preset not in PRESETS:
        raise SegformerError(f"unknown augmentation preset {preset!r}; known: {', '.join(PRESETS)}")
    h, w = _hw(size)
    if h < 1 or w < 1:
        raise SegformerError(f"transform size must be positive, got {size}")
    if output not in OUTPUTS or (output == "source" and not train):
        raise SegformerError(
            f"transform output {output!r}: expected {', '.join(OUTPUTS)} (source only for training)"
        )
    ls = get_label_set(label_set)
    return SegTransform(preset, (h, w), ls, train, tuple(mean), tuple(std), output=output)
