"""Masks of named parts and cut-outs, for editing photos: the hair as a mask, the person on a transparent
background.

>>> ids, probs = predictor("face.jpg", return_probs=True)
>>> masks = part_masks(ids, predictor.label_set, ["hair", "skin"], grow=2, feather=4)
>>> masks["hair"]                                  # (H, W) uint8: 255 on the hair, 0 elsewhere
>>> rgba = cutout(image, ids, predictor.label_set, probs=probs)   # alpha from the probabilities

A part's mask is 255 where the label map holds that class and 0 elsewhere; given the probabilities
(`probs`, ``(K, H, W)``) it is the class's probability scaled to 0-255 instead (soft edges where the
model hesitates). A cut-out is the image as RGBA whose alpha covers every class but the background (a
class named ``background``), hard from the label map or soft from the probabilities (``1 - P(background)``).

Two edits for compositing, in this order:

- `grow` N dilates the mask by N pixels (a negative N erodes it) with a Euclidean disk of radius N as
  the structuring element, so a disc's radius grows by exactly N (OpenCV's ``MORPH_ELLIPSE`` kernel is
  not a disk: for N = 2 its rows reach pixels √5 away);
- `feather` N blurs the mask with a Gaussian of sigma N / 4, which turns a hard edge into a monotone ramp
  about N pixels wide (from ~2% to ~98% over ±2 sigma), centred on the edge.

OpenCV does the morphology and the blur (`cv2.dilate` / `cv2.erode` / `cv2.GaussianBlur`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from ..data.labels import LabelSet
from ..errors import SegformerError

BACKGROUND = "background"
FEATHER_SIGMAS = 4.0
"""A feather of N pixels blurs with sigma N / FEATHER_SIGMAS: the ramp spans ±2 sigma = N."""


def parse_names(text: str | Iterable[str]) -> list[str]:
    """Class names from ``"hair,skin"`` (or a list), stripped, in order, each once."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in (str(i).strip() for i in items):
        if item and item not in names:
            names.append(item)
    if not names:
        raise SegformerError("no part named: give class names such as hair,skin")
    return names


def part_ids(label_set: LabelSet, names: str | Iterable[str]) -> dict[str, int]:
    """The class id of each name of `names`; an unknown name is one error line listing the valid ones."""
    ids: dict[str, int] = {}
    for name in parse_names(names):
        if name not in label_set.class_names:
            raise SegformerError(
                f"unknown part {name!r}: label set {label_set.name} has {', '.join(label_set.class_names)}"
            )
        ids[name] = label_set.class_names.index(name)
    return ids


def background_id(label_set: LabelSet) -> int:
    """The id of the class named ``background``; a label set without one cannot be cut out."""
    if BACKGROUND not in label_set.class_names:
        raise SegformerError(
            f"a cut-out keeps every class but the background, and label set {label_set.name} has no class "
            "named background: write the classes to keep as part masks instead"
        )
    return label_set.class_names.index(BACKGROUND)


def disk(radius: int) -> np.ndarray:
    """The Euclidean disk of `radius` pixels as a ``(2r + 1, 2r + 1)`` uint8 structuring element."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def grow_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` (uint8) dilated by `pixels` (eroded for a negative number) with a disk (see the module
    docstring). Outside the image counts as neither: a part touching the border keeps touching it."""
    if pixels == 0:
        return mask
    kernel = disk(abs(pixels))
    return cv2.dilate(mask, kernel) if pixels > 0 else cv2.erode(mask, kernel)


def feather_mask(mask: np.ndarray, pixels: float) -> np.ndarray:
    """`mask` (uint8) with its edges turned into ramps about `pixels` wide (Gaussian blur, sigma
    pixels / 4; the image's border is mirrored, so a part touching it stays solid there)."""
    if pixels <= 0:
        return mask
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), pixels / FEATHER_SIGMAS)
    return np.clip(blurred + 0.5, 0, 255).astype(np.uint8)


def _check_edits(grow: int, feather: float) -> None:
    if isinstance(grow, bool) or not isinstance(grow, (int, np.integer)):
        raise SegformerError(f"grow must be a whole number of pixels, got {grow!r}")
    if not feather >= 0:
        raise SegformerError(f"feather must be a number of pixels >= 0, got {feather!r}")


def _region(
    ids: np.ndarray, probs: np.ndarray | None, classes: Sequence[int], complement: bool
) -> np.ndarray:
    """uint8 0-255 mask of `classes` (or of every other class when `complement`), hard from `ids` or
    soft from `probs`."""
    if probs is None:
        inside = np.isin(ids, classes)
        return ((inside != complement) * np.uint8(255)).astype(np.uint8)
    p = probs[list(classes)].sum(0, dtype=np.float32)
    p = 1.0 - p if complement else p
    return np.clip(p * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _check_shapes(ids: np.ndarray, probs: np.ndarray | None, label_set: LabelSet) -> None:
    if ids.ndim != 2:
        raise SegformerError(f"class ids must be (H, W), got shape {ids.shape}")
    if probs is not None and (probs.ndim != 3 or probs.shape[1:] != ids.shape):
        raise SegformerError(f"probabilities must be (K, H, W) with (H, W) = {ids.shape}, got {probs.shape}")
    if probs is not None and probs.shape[0] != label_set.num_classes:
        raise SegformerError(
            f"probabilities have {probs.shape[0]} classes, label set {label_set.name} {label_set.num_classes}"
        )


def part_masks(
    ids: np.ndarray,
    label_set: LabelSet,
    names: str | Iterable[str],
    probs: np.ndarray | None = None,
    grow: int = 0,
    feather: float = 0,
) -> dict[str, np.ndarray]:
    """``{name: (H, W) uint8 mask}`` of each class in `names` (``"hair,skin"`` or a list): 255 inside
    the class and 0 outside, or its probability as 0-255 given `probs`; then grown and feathered."""
    _check_shapes(ids, probs, label_set)
    _check_edits(grow, feather)
    return {
        name: feather_mask(grow_mask(_region(ids, probs, [c], False), grow), feather)
        for name, c in part_ids(label_set, names).items()
    }


def cutout(
    image: np.ndarray,
    ids: np.ndarray,
    label_set: LabelSet,
    *,
    probs: np.ndarray | None = None,
    grow: int = 0,
    feather: float = 0,
) -> np.ndarray:
    """``(H, W, 4)`` uint8 RGBA: the (H, W, 3) RGB `image` with alpha 255 on every class but the
    background and 0 on it (given `probs`: ``1 - P(background)`` as 0-255), grown and feathered."""
    _check_shapes(ids, probs, label_set)
    _check_edits(grow, feather)
    if image.shape[:2] != ids.shape or image.ndim != 3 or image.shape[2] != 3:
        raise SegformerError(f"cut-out: image {image.shape} and class ids {ids.shape} do not match")
    alpha = _region(ids, probs, [background_id(label_set)], True)
    alpha = feather_mask(grow_mask(alpha, grow), feather)
    return np.dstack([np.asarray(image, dtype=np.uint8), alpha])


__all__ = ["background_id", "cutout", "disk", "feather_mask", "grow_mask", "part_ids", "part_masks"]
