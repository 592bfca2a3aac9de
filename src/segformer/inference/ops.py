"""From images to class probabilities and ids: the tensor operations of inference.

The functions here work on normalised float batches ``(B, C, H, W)`` and return probabilities (or
class ids) at an explicitly requested output size; evaluation, the `Predictor` and the standalone
CE7454 ``run.py`` (generated from this source) all build on them, so all three give the same masks.

- Flip TTA averages the softmax of the image and of its mirror image; the mirror's probabilities are
  flipped back **and their left/right channels swapped** (l_eye <-> r_eye, ...), otherwise the flip
  would teach the average that a left eye is a right eye.
- Multi-scale TTA runs the model at several scales of the working size and averages the
  probabilities after resizing them to the output size.
- Sliding windows cover an image larger than the training size with overlapping crops of the
  training size and average the overlapping logits.
- The logits of every view stay at the size the model ran at; they are upsampled to the output size
  a band of rows at a time (`resize_rows`), so that class ids of a 10000 x 10000 photo need a few
  hundred MB instead of the 7.6 GB of its full-size probabilities. Every output row is computed by
  the same arithmetic whatever the band, so banded ids are exactly the ids of the whole image.

`preprocess` / `predict_batch` are the single preprocessing path: normalise, then a bilinear resize
of the float tensor to the working size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TTA_MODES
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from ..errors import SegformerError
from ..models.summary import forward_bytes
from ..runtime import check_memory
from .settings import DEFAULT_SCALES, InferenceSettings

# Upper bound on B x K x rows x W of one band of upsampled probabilities (float32: 64 MB); a few such
# temporaries are alive at once.
BAND_ELEMENTS = 1 << 24


def check_inference_memory(
    config: Any, settings: InferenceSettings, batch: int = 1, device: str | torch.device = "cpu"
) -> None:
    """A one-line `SegformerError` naming the working size when a forward pass of `batch` images at the
    largest input `settings` give the model (the working size at the largest TTA scale; the window in
    ``slide`` mode) cannot fit in the memory `device` has (`segformer.runtime.check_memory`)."""
    h, w = settings.image_size
    scale = max(1.0, *settings.scales) if "scales" in settings.tta and settings.eval_mode == "resize" else 1.0
    view = (round(h * scale), round(w * scale))
    scaled = f" (x{scale:g} for TTA scales)" if scale != 1 else ""
    what = f"image_size {h}x{w}{scaled}: a forward pass"
    check_memory(forward_bytes(config, view, batch), what, device)


def flip_permutation(flip_pairs: Sequence[Sequence[int]], num_classes: int) -> Tensor:
    """Channel order that swaps each left/right pair (identity elsewhere)."""
    perm = list(range(num_classes))
    for a, b in flip_pairs:
        if a < num_classes and b < num_classes:
            perm[a], perm[b] = b, a
    return torch.tensor(perm, dtype=torch.long)


def hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` as ``(H, W)``."""
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False), a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _taps(in_size: int, out_size: int, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and weights of output rows [start, stop) of a bilinear resize from `in_size` to
    `out_size` (align_corners=False: half-pixel centres, clamped at the border), as PyTorch computes
    them in float32."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = ((torch.arange(start, stop, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    lam = (src - i0).clamp(0, 1)
    return i0, (i0 + 1).clamp(max=in_size - 1), 1 - lam, lam


def resize_rows(x: Tensor, size: Sequence[int], start: int = 0, stop: int | None = None) -> Tensor:
    """Rows [start, stop) of `x` resized bilinearly to `size` (align_corners=False).

    The width is resized first (`F.interpolate`, only on the source rows the band needs), then each
    output row is blended from its two source rows. A row's value does not depend on the band it is
    computed in, and agrees with ``resize(x, size)`` to float rounding.
    """
    h, w = hw(size)
    stop = h if stop is None else stop
    if x.shape[-2] == h:
        band = x[..., start:stop, :]
        return resize(band, (stop - start, w))
    i0, i1, w0, w1 = _taps(x.shape[-2], h, start, stop)
    lo, hi = int(i0.min()), int(i1.max()) + 1
    rows = resize(x[..., lo:hi, :], (hi - lo, w))  # the height is kept: an exact row-wise resize
    i0, i1 = (i0 - lo).to(x.device), (i1 - lo).to(x.device)
    w0, w1 = w0.to(x.device, x.dtype)[:, None], w1.to(x.device, x.dtype)[:, None]
    return rows[..., i0, :] * w0 + rows[..., i1, :] * w1


def slide_logits(model: nn.Module, x: Tensor, window: int, overlap: float = 1 / 3) -> Tensor:
    """Logits at x's size from overlapping `window` x `window` crops (averaged where they overlap).

    Images smaller than the window in a dimension are run whole in that dimension.
    """
    b, _, h, w = x.shape
    stride = max(1, int(window * (1 - overlap)))

    def starts(n: int) -> list[int]:
        if n <= window:
            return [0]
        count = math.ceil((n - window) / stride) + 1
        return sorted({min(i * stride, n - window) for i in range(count)})

    out: Tensor | None = None
    hits = torch.zeros(1, 1, h, w, device=x.device)
    for top in starts(h):
        for left in starts(w):
            crop = x[..., top : top + window, left : left + window]
            logits = model(crop)  # at the crop's size
            if out is None:
                out = torch.zeros(b, logits.shape[1], h, w, device=x.device, dtype=logits.dtype)
            out[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += logits
            hits[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += 1
    assert out is not None
    return out / hits


def view_logits(
    model: nn.Module,
    x: Tensor,
    *,
    tta: str = "none",
    scales: Sequence[float] = DEFAULT_SCALES,
    window: int | None = None,
) -> list[tuple[Tensor, bool]]:
    """Float logits of every test-time view of the normalised batch `x`, at the size the model ran
    at, each with whether it is the mirror image (its probabilities still to be flipped back)."""
    if tta not in TTA_MODES:
        raise SegformerError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_MODES)}")

    def run(inp: Tensor) -> Tensor:
        return (slide_logits(model, inp, window) if window else model(inp)).float()

    views: list[tuple[Tensor, bool]] = []
    h, w = x.shape[-2:]
    for s in list(scales) if "scales" in tta else [1.0]:
        inp = x if s == 1.0 else resize(x, (max(1, round(h * s)), max(1, round(w * s))))
        views.append((run(inp), False))
        if "flip" in tta:
            views.append((run(inp.flip(-1)), True))
    return views


def view_probs(
    views: Sequence[tuple[Tensor, bool]],
    out_size: Sequence[int],
    flip_perm: Tensor | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Tensor:
    """Rows [start, stop) of the mean softmax probabilities of `views` at `out_size`; mirrored views
    are flipped back and their left/right channels swapped with `flip_perm`."""
    total: Tensor | None = None
    for logits, mirrored in views:
        probs = resize_rows(logits, out_size, start, stop).softmax(1)
        if mirrored:
            probs = probs.flip(-1)
            if flip_perm is not None:
                probs = probs[:, flip_perm.to(probs.device)]
        total = probs if total is None else total + probs
    assert total is not None
    return total if len(views) == 1 else total / len(views)


def predict_probs(
    model: nn.Module,
    x: Tensor,
    out_size: Sequence[int],
    *,
    tta: str = "none",
    flip_perm: Tensor | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    window: int | None = None,
) -> Tensor:
    """Softmax probabilities ``(B, K, *out_size)`` for a normalised batch `x`.

    `x` is already at the model's working size (or, with `window`, at full size for sliding-window
    inference with `window`-sized crops). `tta` is one of `TTA_MODES`; flip TTA needs `flip_perm`
    from `flip_permutation` (identity when the label set has no left/right pairs).
    """
    views = view_logits(model, x, tta=tta, scales=scales, window=window)
    return view_probs(views, out_size, flip_perm)


def class_ids(probs: Tensor) -> Tensor:
    """``probs.argmax(1)`` (int64, ties to the lowest id), computed class by class: the same ids at a
    fraction of the time, since torch reduces over the strided channel axis slowly (35 -> 15 ms for
    19 x 512 x 512 on CPU)."""
    best = probs[:, 0]
    ids = torch.zeros(best.shape, dtype=torch.long, device=probs.device)
    for k in range(1, probs.shape[1]):
        better = probs[:, k] > best  # strictly: an exact tie keeps the lower id, as argmax does
        ids.masked_fill_(better, k)
        best = torch.where(better, probs[:, k], best)
    return ids


def view_class_ids(
    views: Sequence[tuple[Tensor, bool]],
    out_size: Sequence[int],
    flip_perm: Tensor | None = None,
    band_elements: int | None = None,
) -> Tensor:
    """``class_ids(view_probs(views, out_size, flip_perm))`` as uint8 (int64 beyond 256 classes),
    computed in bands of rows of at most `band_elements` (default `BAND_ELEMENTS`) probabilities, so
    memory stays bounded whatever the output size; the ids are exactly those of the whole image."""
    band_elements = band_elements or BAND_ELEMENTS
    h, w = hw(out_size)
    b, k = views[0][0].shape[:2]
    rows = max(1, band_elements // max(1, b * k * w))
    out = torch.empty(b, h, w, dtype=torch.uint8 if k <= 256 else torch.long, device=views[0][0].device)
    for start in range(0, h, rows):
        stop = min(h, start + rows)
        out[:, start:stop] = class_ids(view_probs(views, (h, w), flip_perm, start, stop))
    return out


def remove_small_regions(ids: np.ndarray, min_area: float) -> np.ndarray:
    """Class ids ``(H, W)`` with every 8-connected region smaller than `min_area` x H x W pixels
    relabelled to the most common label on its outer ring (ties: the smallest id).

    Stray specks of a class (an "eye" in the hair) are argmax noise; a part that is legitimately in
    several pieces (hair, cloth) keeps every piece of at least that size. The ring is read in the
    unchanged map, so the result does not depend on the order regions are visited.
    """
    h, w = ids.shape
    limit = min_area * h * w
    out = ids.copy()
    ring_kernel = np.ones((3, 3), np.uint8)  # 8-neighbourhood, as the regions are 8-connected
    for c in np.unique(ids):
        n, labels, stats, _ = cv2.connectedComponentsWithStats((ids == c).astype(np.uint8), connectivity=8)
        for k in range(1, n):
            x, y, bw, bh, area = stats[k]
            if area >= limit:
                continue
            y0, y1, x0, x1 = max(y - 1, 0), min(y + bh + 1, h), max(x - 1, 0), min(x + bw + 1, w)
            region = (labels[y0:y1, x0:x1] == k).astype(np.uint8)
            ring = cv2.dilate(region, ring_kernel).astype(bool) & ~region.astype(bool)
            around = ids[y0:y1, x0:x1][ring]
            if around.size:  # a region covering the whole image has no surroundings
                out[y0:y1, x0:x1][region.astype(bool)] = np.bincount(around).argmax()
    return out


def preprocess(
    image: np.ndarray,
    size: int | Sequence[int] | None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32: normalised, then resized to `size` (None: kept).

    The resize works on the normalised float tensor (`resize`: bilinear, half-pixel centres, no
    antialiasing -- the sampling of `cv2.INTER_LINEAR`, which training uses). Bilinear interpolation
    treats every image of a batch alike, so this per-image result is bit for bit what `predict_batch`
    feeds the model for the same image in any batch.
    """
    x = normalize(image, mean, std)[None]  # (1, 3, H, W)
    return (x if size is None else resize(x, hw(size)))[0]


def predict_views(
    model: nn.Module,
    images: Sequence[np.ndarray],
    settings: InferenceSettings,
    device: str | torch.device = "cpu",
) -> list[tuple[Tensor, bool]]:
    """`view_logits` of same-size (H, W, 3) uint8 RGB `images` with `settings` (normalisation, mode,
    TTA and scales).

    ``eval_mode="resize"`` runs the model at the working size (the logits are resized back later);
    ``eval_mode="slide"`` keeps the full resolution and runs working-size windows (`slide_logits`).
    """
    s = settings
    x = torch.stack([preprocess(im, s.input_size, s.mean, s.std) for im in images])
    return view_logits(model, x.to(device), tta=s.tta, scales=s.scales, window=s.window)


def predict_batch(
    model: nn.Module,
    images: Sequence[np.ndarray],
    settings: InferenceSettings,
    flip_perm: Tensor | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Softmax probabilities ``(B, K, H, W)`` of same-size (H, W, 3) uint8 RGB `images`, at their size
    (see `predict_views`); mirrored views have their left/right channels swapped with `flip_perm`."""
    views = predict_views(model, images, settings, device)
    return view_probs(views, images[0].shape[:2], flip_perm)


class Preprocess:
    """Evaluation transform: ``(image, mask) -> (preprocess(image, size), mask)``, the mask kept at its
    own resolution; ``size=None`` keeps the image's resolution too (sliding-window evaluation)."""

    def __init__(
        self,
        size: int | Sequence[int] | None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = None if size is None else hw(size)
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def of(cls, settings: InferenceSettings) -> Preprocess:
        """The transform of `settings`: their normalisation, at the working size (full size in
        ``slide`` mode)."""
        return cls(settings.input_size, settings.mean, settings.std)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None = None, rng: Any = None
    ) -> tuple[Tensor, Tensor | None]:
        m = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()
        return preprocess(image, self.size, self.mean, self.std), m
