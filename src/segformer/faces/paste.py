"""Pasting the parses of faces back into the photo, where the face in front wins.

Each face's crop probabilities are warped back with the inverse of its crop transform (bilinear
`grid_sample`), tile by tile over the faces' regions only, so memory stays bounded for huge photos. A
face *claims* a pixel where, alone, it would label it a face class: its probabilities weighted by a
window that fades to 0 over the crop's outer `FADE` (a crop's edge cuts through whatever is there),
the rest of the weight background. Where several faces claim a pixel, the one in front wins (`FRONT`):
its labels, never an average with a face behind it (averaging pasted a blurred face's labels over
the sharp face in front of it). Pixels no face claims are background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..inference.ops import class_ids

TILE = 1024
"""Side of the tiles the probabilities are pasted back in (memory: a few K x TILE² floats)."""
FADE = 0.05
"""Fraction of the crop's side over which a face's weight fades to 0 at the crop's edge."""
FRONT_RULES = ("size", "sharpness", "confidence")
FRONT = "size"
"""Which face is in front where faces claim the same pixel: ``size``, the smaller face; ``sharpness``,
the sharper crop (`sharpness`); ``confidence``, the face more sure there that the pixel is a face's.
Chosen on composed scenes with a large blurred face behind a small sharp one (docs/faces.md)."""


@dataclass
class Layer:
    """One parsed face on its way back into the photo."""

    probs: Tensor
    """(K, S, S) probabilities of its crop."""
    transform: np.ndarray
    """(2, 3) matrix from photo pixels to crop pixels."""
    rank: float = 0.0
    """Larger: in front (the `size` and `sharpness` rules)."""
    whole: bool = False
    """The whole image's parse: full weight up to the image's border (nothing lies beyond it)."""


@dataclass
class Pasted:
    ids: np.ndarray
    """(H, W) uint8 class ids."""
    owners: np.ndarray | None
    """(H, W) uint8: i + 1 where layer i's labels were kept, 0 on background (when asked for)."""
    pixels: list[int]
    """Pixels of each layer's labels kept in `ids`."""
    probs: np.ndarray | None = None
    """(K, H, W) float32 probabilities (when asked for)."""


def window(size: int) -> Tensor:
    """(1, 1, S, S) weights: 1 inside, fading linearly to 0 over `FADE` of the side at the edges."""
    ramp = max(1.0, FADE * size)
    d = torch.arange(size, dtype=torch.float32)
    edge = torch.minimum(d + 0.5, size - 0.5 - d) / ramp
    w = edge.clamp(0, 1)
    return (w[:, None] * w[None, :])[None, None]


def roi(transform: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Integer (x0, y0, x1, y1) bounds, inside an image of `shape` (H, W), of the crop of `transform`."""
    inverse = np.linalg.inv(np.vstack([transform, [0, 0, 1]]))[:2]
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]])
    photo = corners @ inverse[:, :2].T + inverse[:, 2]
    x0, y0 = np.floor(photo.min(0)).astype(int)
    x1, y1 = np.ceil(photo.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def paste(
    layers: Sequence[Layer],
    shape: tuple[int, int],
    *,
    num_classes: int,
    background: int = 0,
    front: str = FRONT,
    tile: int = TILE,
    return_probs: bool = False,
    instances: bool = False,
) -> Pasted:
    """Class ids of a photo of `shape` (H, W) from its faces' `layers` (see the module docstring)."""
    h, w = shape
    ids = np.full((h, w), background, np.uint8)
    probs = None
    if return_probs:
        probs = np.zeros((num_classes, h, w), np.float32)
        probs[background] = 1.0
    owners = np.zeros((h, w), np.uint8)
    rois = [roi(layer.transform, layer.probs.shape[-1], shape) for layer in layers]
    live = [r for r in rois if r is not None]
    if live:
        x_lo, y_lo = min(r[0] for r in live), min(r[1] for r in live)
        x_hi, y_hi = max(r[2] for r in live), max(r[3] for r in live)
        for ty in range(y_lo, y_hi, tile):
            for tx in range(x_lo, x_hi, tile):
                box = (tx, ty, min(tx + tile, x_hi), min(ty + tile, y_hi))
                hits = [i for i, r in enumerate(rois) if r is not None and _overlaps(r, box)]
                if hits:
                    _paste_tile(layers, hits, box, ids, owners, probs, background, front)
    pixels = np.bincount(owners.ravel(), minlength=len(layers) + 1)[1:].tolist()
    return Pasted(ids, owners if instances else None, pixels, probs)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1]


def _sample(layer: Layer, box: tuple[int, int, int, int]) -> Tensor:
    """(K + 1, h, w): the layer's weighted probabilities and (last) its weight on the pixels of `box`."""
    k, s = layer.probs.shape[0], layer.probs.shape[-1]
    weight = torch.ones(1, s, s) if layer.whole else window(s)[0]
    weighted = torch.cat([layer.probs * weight, weight])[None]  # weight rides along as channel K
    tx, ty, tx1, ty1 = box
    ys, xs = torch.meshgrid(
        torch.arange(ty, ty1, dtype=torch.float32), torch.arange(tx, tx1, dtype=torch.float32), indexing="ij"
    )
    m = torch.from_numpy(layer.transform).float()
    u = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]  # crop pixel coordinates
    v = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    grid = torch.stack([(2 * u + 1) / s - 1, (2 * v + 1) / s - 1], -1)[None]
    # The whole image's parse is sampled like a resize (edge pixels repeat); a crop ends at its edge.
    padding = "border" if layer.whole else "zeros"
    out = F.grid_sample(weighted, grid, mode="bilinear", padding_mode=padding, align_corners=False)[0]
    assert out.shape[0] == k + 1
    return out


def _paste_tile(
    layers: Sequence[Layer],
    hits: list[int],
    box: tuple[int, int, int, int],
    ids: np.ndarray,
    owners: np.ndarray,
    probs: np.ndarray | None,
    background: int,
    front: str,
) -> None:
    """`paste` on the pixels of `box` (x0, y0, x1, y1), writing into `ids`, `owners` and `probs`."""
    tx, ty, tx1, ty1 = box
    best = torch.full((ty1 - ty, tx1 - tx), -torch.inf)
    labels = torch.full((ty1 - ty, tx1 - tx), background, dtype=torch.uint8)
    owner = torch.zeros((ty1 - ty, tx1 - tx), dtype=torch.uint8)
    total: Tensor | None = None  # the weighted sum of every layer, for pixels no face claims
    kept: Tensor | None = None  # the winning layer's probabilities
    for i in hits:
        part = _sample(layers[i], box)
        k = part.shape[0] - 1
        alone = part[:k].clone()  # this face alone: its weighted probabilities, the rest background
        alone[background] += (1 - part[k]).clamp(min=0)
        label = class_ids(alone[None])[0]
        claim = label != background
        rank = 1 - alone[background] if front == "confidence" else torch.full_like(best, layers[i].rank)
        better = claim & (rank > best)
        best = torch.where(better, rank, best)
        labels[better] = label[better].to(torch.uint8)
        owner[better] = i + 1
        if probs is not None:
            total = part if total is None else total + part
            kept = torch.where(better, alone, alone.new_zeros(()) if kept is None else kept)
    ids[ty:ty1, tx:tx1] = labels.numpy()
    owners[ty:ty1, tx:tx1] = owner.numpy()
    if probs is not None and total is not None and kept is not None:
        k = total.shape[0] - 1
        mean = total[:k] / total[k].clamp(min=1.0)
        mean[background] += (1 - total[k]).clamp(min=0)
        probs[:, ty:ty1, tx:tx1] = torch.where(owner > 0, kept, mean).numpy()


def sharpness(crop: np.ndarray) -> float:
    """How sharp an aligned (S, S, 3) uint8 crop is: the variance of the Laplacian of its grey levels
    over the face's box (the middle of the crop), the usual focus measure. Crops are at one scale, so
    a large face out of focus scores low however many photo pixels it covers."""
    s = crop.shape[0]
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lo, hi = round(0.2 * s), round(0.8 * s)
    return float(cv2.Laplacian(grey[lo:hi, lo:hi], cv2.CV_32F).var())


__all__ = ["FADE", "FRONT", "FRONT_RULES", "TILE", "Layer", "Pasted", "paste", "roi", "sharpness", "window"]
