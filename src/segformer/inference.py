"""From images to class probabilities: resizing, test-time augmentation and sliding windows.

The functions here work on normalised float batches ``(B, C, H, W)`` and return probabilities at
an explicitly requested output size; evaluation and the Predictor both build on them.

- Flip TTA averages the softmax of the image and of its mirror image; the mirror's probabilities are
  flipped back **and their left/right channels swapped** (l_eye <-> r_eye, ...), otherwise the flip
  would teach the average that a left eye is a right eye.
- Multi-scale TTA runs the model at several scales of the working size and averages the
  probabilities after resizing them to the output size.
- Sliding windows cover an image larger than the training size with overlapping crops of the
  training size and average the overlapping logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import SegformerError

TTA_MODES = ("none", "flip", "scales", "flip+scales")
DEFAULT_SCALES = (0.75, 1.0, 1.25, 1.5)


def flip_permutation(flip_pairs: Sequence[tuple[int, int]], num_classes: int) -> Tensor:
    """Channel order that swaps each left/right pair (identity elsewhere)."""
    perm = list(range(num_classes))
    for a, b in flip_pairs:
        if a < num_classes and b < num_classes:
            perm[a], perm[b] = b, a
    return torch.tensor(perm, dtype=torch.long)


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False), a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


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
    if tta not in TTA_MODES:
        raise SegformerError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_MODES)}")

    def run(inp: Tensor) -> Tensor:
        logits = slide_logits(model, inp, window) if window else model(inp)
        return resize(logits.float(), out_size).softmax(1)

    views = [1.0]
    if "scales" in tta:
        views = list(scales)
    total: Tensor | None = None
    n = 0
    h, w = x.shape[-2:]
    for s in views:
        inp = x if s == 1.0 else resize(x, (max(1, round(h * s)), max(1, round(w * s))))
        probs = run(inp)
        total = probs if total is None else total + probs
        n += 1
        if "flip" in tta:
            flipped = run(inp.flip(-1)).flip(-1)
            if flip_perm is not None:
                flipped = flipped[:, flip_perm.to(flipped.device)]
            total = total + flipped
            n += 1
    assert total is not None
    return total / n
