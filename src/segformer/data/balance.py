"""Class frequencies of a training set, and two ways to give rare classes more weight: repeat-factor
sampling (Gupta et al., "LVIS: A Dataset for Large Vocabulary Instance Segmentation", CVPR 2019) and
inverse-square-root-frequency weights of the cross entropy.

Everything here starts from one table, ``pixels[i, c]``: the pixels of class c in the mask of training
image i (`class_pixels`). NumPy only; the engine turns the results into a sampler and loss weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MAX_CLASS_WEIGHT = 10.0  # sqrt_inv_freq weights are clipped here: a class seen in a handful of pixels
# would otherwise dominate the loss
_ROUNDING_STEPS = 1 << 24  # fractional repeat factors are resolved in steps of 2^-24
_REPEAT_STREAM = 0x72657065  # keeps the sampler's random stream apart from the augmentation's


def class_pixels(masks: Iterable[np.ndarray | None], num_classes: int) -> np.ndarray:
    """``(N, K)`` int64: pixels of each class in each mask. Values >= `num_classes` (the ignore index)
    are not counted; a missing mask (None) counts nothing."""
    rows = []
    for mask in masks:
        if mask is None:
            rows.append(np.zeros(num_classes, np.int64))
        else:
            counts = np.bincount(np.asarray(mask).ravel(), minlength=num_classes)
            rows.append(counts[:num_classes].astype(np.int64))
    return np.stack(rows) if rows else np.zeros((0, num_classes), np.int64)


def class_repeat_factors(pixels: np.ndarray, threshold: float) -> np.ndarray:
    """``(K,)``: r(c) = max(1, sqrt(t / f(c))), f(c) the fraction of images whose mask holds class c;
    1 for a class in no image (it raises no image's factor)."""
    image_fraction = (pixels > 0).mean(0) if len(pixels) else np.zeros(pixels.shape[1])
    seen = image_fraction > 0
    out = np.ones(pixels.shape[1])
    out[seen] = np.maximum(1.0, np.sqrt(threshold / image_fraction[seen]))
    return out


def repeat_factors(pixels: np.ndarray, threshold: float) -> np.ndarray:
    """``(N,)``: r(i) = max of `class_repeat_factors` over the classes present in mask i (1 for a mask
    with no class)."""
    per_class = class_repeat_factors(pixels, threshold)
    return np.where(pixels > 0, per_class, 1.0).max(1, initial=1.0)


def epoch_length(factors: np.ndarray) -> int:
    """Samples in every epoch drawn by `epoch_indices`: sum floor(r) + floor(sum frac(r))."""
    whole, frac = _split(factors)
    return int(whole.sum() + frac.sum() // _ROUNDING_STEPS)


def epoch_indices(factors: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The shuffled image indices of one epoch, `epoch_length` of them: image i appears floor(r(i))
    times, and once more with probability frac(r(i)).

    The extra copies are drawn by systematic sampling over a random order of the images: the
    fractions are laid end to end on a line and the images under the points u, u + 1, u + 2, ... get
    one (u uniform in [0, 1)). Each image then gets its extra with exactly its probability, as with
    independent coin flips, but their number varies by at most one, so that every epoch has the same
    number of steps; the one sample beyond `epoch_length` that some epochs draw is dropped after the
    shuffle, as the last incomplete batch is. The generator is seeded by (seed, epoch): a resumed
    run and every process of a distributed one draw the same epoch.
    """
    rng = np.random.default_rng((seed, epoch, _REPEAT_STREAM))
    whole, frac = _split(factors)
    order = rng.permutation(len(factors))
    end = np.cumsum(frac[order])  # in units of 2^-24: exact integers
    start = end - frac[order]
    u = int(rng.integers(_ROUNDING_STEPS))
    # the points u + k * STEPS (k = 0, 1, ...) in [start, end) number
    # ceil((end - u) / STEPS) - ceil((start - u) / STEPS)
    extra = -((u - end) // _ROUNDING_STEPS) + (u - start) // _ROUNDING_STEPS
    counts = whole.copy()
    counts[order] += extra
    indices = rng.permutation(np.repeat(np.arange(len(factors)), counts))
    return indices[: epoch_length(factors)]


def _split(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole part (int64) and fractional part in units of 2^-24 (int64) of each factor >= 1."""
    factors = np.asarray(factors, dtype=np.float64)
    if factors.ndim != 1 or not np.all(factors >= 1.0):
        raise ValueError("repeat factors must be a vector of numbers >= 1")
    whole = np.floor(factors)
    frac = np.round((factors - whole) * _ROUNDING_STEPS).astype(np.int64)
    return whole.astype(np.int64), frac


def class_weights(pixels: np.ndarray, max_weight: float = MAX_CLASS_WEIGHT) -> np.ndarray:
    """``(K,)`` sqrt_inv_freq weights: w(c) proportional to 1 / sqrt(p(c)), p(c) the share of class c
    among all counted pixels, scaled so that sum_c p(c) w(c) = 1 (the mean weight of a pixel), then
    clipped to `max_weight`; a class with no pixel weighs 1."""
    total = pixels.sum(0).astype(np.float64)  # (K,)
    seen = total > 0
    out = np.ones(len(total))
    if seen.any():
        share = total[seen] / total[seen].sum()
        raw = 1.0 / np.sqrt(share)
        out[seen] = np.minimum(raw / (share * raw).sum(), max_weight)
    return out


__all__ = [
    "MAX_CLASS_WEIGHT",
    "class_pixels",
    "class_repeat_factors",
    "class_weights",
    "epoch_indices",
    "epoch_length",
    "repeat_factors",
]
