"""Augmentation of a whole batch on the training device: the GPU path of `transforms`.

DataLoader workers then only draw each sample's `AugmentParams` (seeded per sample, as on the CPU
path) and collate the cached uint8 sources; `BatchAugment` applies the draws with torch ops over the
batch:

- geometry: every sample's affine map (zoom, rotation, crop/pad, flip) in one `F.affine_grid` and
  one `F.grid_sample` per tensor, straight from the source to the training size (images bilinear,
  masks nearest, outside the source image 0 and mask = ignore); flipped masks swap their left/right
  classes through the label set's flip table;
- colour: brightness, contrast and saturation as one per-sample 3x3 colour matrix (`colour_matrix`),
  a hue rotation in HSV, a Gaussian blur (one depthwise convolution per axis with per-sample kernels),
  Gaussian noise.

Both paths apply the same draws with the same sampling conventions (pixel centres at integer
coordinates, `align_corners=False`), so they share one distribution; they differ only by OpenCV's
uint8 rounding between steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .labels import LabelSet, get_label_set
from .transforms import GREY, _hw

BLUR_MAX_SIGMA = 1.5  # the largest sigma `draw_params` draws


def normalised_theta(inverse: Tensor, src_hw: Sequence[int], out_hw: Sequence[int]) -> Tensor:
    """(B, 2, 3) pixel maps output -> source (pixel centres at integers) as `F.affine_grid` thetas,
    which map normalised output coordinates to normalised source coordinates (align_corners=False:
    pixel x lies at (2x + 1) / W - 1)."""
    (hs, ws), (ho, wo) = src_hw, out_hw
    b = inverse.shape[0]
    dtype = torch.float64
    inv = torch.cat([inverse.to(dtype), torch.tensor([[[0.0, 0.0, 1.0]]], dtype=dtype).expand(b, 1, 3)], 1)
    to_pixels = torch.tensor([[wo / 2, 0, (wo - 1) / 2], [0, ho / 2, (ho - 1) / 2], [0, 0, 1]], dtype=dtype)
    to_unit = torch.tensor([[2 / ws, 0, 1 / ws - 1], [0, 2 / hs, 1 / hs - 1]], dtype=dtype)
    return (to_unit @ inv @ to_pixels).float()  # (B, 2, 3)


def gaussian_kernels(sigmas: Tensor) -> Tensor:
    """(B, K) 1-D Gaussian kernels with OpenCV's support for uint8 images (ksize = round(6 sigma + 1),
    made odd), centred in a common width K; sigma 0 gives the identity."""
    radius = (round(6 * BLUR_MAX_SIGMA + 1) | 1) // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s = sigmas.to(torch.float64)[:, None]
    own_radius = torch.floor(torch.round(6 * s + 1) / 2)  # ((ksize | 1) - 1) / 2
    k = torch.exp(-(x**2) / (2 * s.clamp_min(1e-6) ** 2)) * (x.abs() <= own_radius)
    k = torch.where(s > 0, k, (x == 0).to(k.dtype))
    return (k / k.sum(1, keepdim=True)).float()


def rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate the hue of (B, 3, H, W) RGB images by `turns` (B,) of the colour circle; HSV saturation
    and value are kept (OpenCV's RGB <-> HSV)."""
    maxc, argmax = x.max(1)
    delta = maxc - x.min(1).values  # chroma
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = x.unbind(1)
    hue = torch.where(
        argmax == 0, ((g - b) / safe) % 6, torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4)
    )  # (B, H, W) in sextants [0, 6)
    hue = (hue + 6 * turns.view(-1, 1, 1)) % 6
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + hue[:, None]) % 6
    return maxc[:, None] - delta[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


class BatchAugment:
    """Applies collated `param_tensors` to a batch of uint8 sources on their device.

    ``augment(images, masks, params)``: images (B, 3, Hs, Ws) uint8, masks (B, Hs, Ws) uint8 (both
    already on the device; sources of different sizes padded at the bottom/right), params on the CPU
    (decisions such as "does any sample blur" are taken there, so nothing waits for the device).
    Returns images (B, 3, H, W) float32 in [0, 255] and masks (B, H, W) int64 at `size`.
    """

    def __init__(self, size: int | Sequence[int], label_set: LabelSet | str) -> None:
        self.size = _hw(size)
        self.label_set = get_label_set(label_set)
        self.flip_lut = torch.from_numpy(self.label_set.flip_lut()).long()
        self._luts: dict[torch.device, Tensor] = {}

    def __call__(
        self, images: Tensor, masks: Tensor | None, params: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        with torch.no_grad():
            images, masks = self.geometry(images, masks, params)
            images = self.colour(images, params)
        return images, masks

    def geometry(
        self, images: Tensor, masks: Tensor | None, params: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        device = images.device
        b = images.shape[0]
        theta = normalised_theta(params["inverse"], images.shape[-2:], self.size).to(
            device, non_blocking=True
        )
        grid = F.affine_grid(theta, [b, 1, *self.size], align_corners=False)  # (B, H, W, 2)
        x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if masks is None:
            return x, None
        ignore = self.label_set.ignore_index
        # Shifted so that grid_sample's zero padding lands on the ignore index.
        m = F.grid_sample(
            masks[:, None].float() - ignore, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        m = (m[:, 0] + ignore).round().long()  # (B, H, W)
        flip = params["flip"]
        if bool(flip.any()):
            lut = self._luts.get(device)
            if lut is None:
                lut = self._luts[device] = self.flip_lut.to(device)
            m = torch.where(flip.to(device, non_blocking=True).view(b, 1, 1), lut[m], m)
        return x, m

    def colour(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """Brightness, contrast and saturation (one colour matrix), hue, blur, noise on (B, 3, H, W)
        float images in [0, 255]; each step is skipped when no sample of the batch draws it."""
        device = x.device
        b = x.shape[0]
        colour = params["colour"]
        if not bool((colour == 1).all()):
            bright, contrast, sat = colour.to(device, non_blocking=True).unbind(1)  # (B,) each
            grey = torch.tensor(GREY, dtype=torch.float32, device=device)
            eye = torch.eye(3, device=device)
            # colour_matrix, per sample: c b (s I + (1 - s) 1 grey^T), offset (1 - c) b mean_luma
            m = (contrast * bright).view(b, 1, 1) * (
                sat.view(b, 1, 1) * eye + (1 - sat).view(b, 1, 1) * grey.view(1, 1, 3).expand(b, 3, 3)
            )
            mean_luma = torch.einsum("bc,c->b", x.mean((2, 3)), grey)
            offset = (1 - contrast) * bright * mean_luma
            x = torch.einsum("bij,bjhw->bihw", m, x) + offset.view(b, 1, 1, 1)
            x = x.clamp_(0, 255)
        hue = params["hue"]
        if bool((hue != 0).any()):
            x = rotate_hue(x, (hue.float() / 180).to(device, non_blocking=True))
        sigma = params["blur"]
        if bool((sigma > 0).any()):
            k = gaussian_kernels(sigma).to(device, non_blocking=True)  # (B, K)
            r = k.shape[1] // 2
            k = k.repeat_interleave(3, 0)  # (B * 3, K): one kernel per channel of each sample
            h, w = x.shape[-2:]
            y = F.pad(x.reshape(1, b * 3, h, w), (r, r, r, r), mode="reflect")  # OpenCV's BORDER_REFLECT_101
            y = F.conv2d(y, k.view(b * 3, 1, 1, -1), groups=b * 3)
            y = F.conv2d(y, k.view(b * 3, 1, -1, 1), groups=b * 3)
            x = y.view(b, 3, h, w)
        std = params["noise"]
        if bool((std > 0).any()):
            # One generator per batch, seeded from its samples' draws: reproducible whatever the
            # number of workers (the sampler, not the workers, decides which samples form a batch).
            seed = int(params["noise_seed"].sum()) % (2**63)
            gen = torch.Generator(device=device).manual_seed(seed)
            noise = torch.randn(x.shape, generator=gen, device=device)
            x = (x + noise * std.to(device, non_blocking=True).view(b, 1, 1, 1)).clamp_(0, 255)
        return x
