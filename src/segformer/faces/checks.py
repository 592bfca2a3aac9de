"""Whether a parse shows a face, and whether it shows it at the training framing.

A parser trained only on faces labels whatever it is shown as a face: skin, eyes and lips on clutter
too. Two checks tell a face from that: `looks_like_a_crop` (enough skin and most inner parts) and the
landmark fit (`landmarks.parse_fit`: the parts where a face has them). `looks_like_a_face` is both; no
detector score skips it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..inference.ops import class_ids
from .align import FRAMING, Framing
from .detect import Face, iou
from .landmarks import CELEBAMASK_PARTS, FaceParts, Fit, find_landmarks, parse_fit


def labels(probs: Tensor) -> np.ndarray:
    """(S, S) uint8 class ids of (K, S, S) probabilities (`class_ids`: argmax, faster than torch's)."""
    return class_ids(probs[None])[0].to(torch.uint8).numpy()


CROP_SKIN = 0.10
"""Least fraction of skin in a parse that `looks_like_a_crop` (aligned crops hold 15-35%)."""


def looks_like_a_crop(ids: np.ndarray, parts: FaceParts = CELEBAMASK_PARTS) -> bool:
    """True when a parse at the training framing shows a face: a large skin area and at least three
    of its four inner parts (nose, eyes, brows, mouth and lips), each on 0.05% of the pixels or more.
    Three of four, not all: a half-trained parser finds the nose late, and one part may be hidden."""
    total = ids.size
    found = sum(np.isin(ids, group).sum() >= 0.0005 * total for group in parts.groups)
    skin = np.isin(ids, parts.skin).sum()
    return bool(skin >= CROP_SKIN * total and found >= min(3, len(parts.groups)))


def looks_like_a_face(ids: np.ndarray, parts: FaceParts = CELEBAMASK_PARTS) -> bool:
    """The check of every candidate face, from its parse `ids` at the candidate's framing:
    `looks_like_a_crop`, and its eyes, brows, nose and mouth where a face's are (their centres fit the
    training framing's: `landmarks.Fit.plausible`). Whatever the detector's score: a box the cascade
    was sure of (score 20-35) on the mouth and chin of a face it missed parsed as skin and lips, passed
    the first check, and replaced the parse of the whole face."""
    if not looks_like_a_crop(ids, parts):
        return False
    fit = parse_fit(ids, parts)
    return fit is not None and fit.plausible


FILL_ZOOM = 1.25
"""A whole image whose parse fits the framing with a zoom up to this (the face at least 80% of the
training framing's size; aligned crops: 0.87-1.12 with the shipped model)..."""
FILL_SHIFT = 0.08
"""...and a shift up to this many image sides (aligned crops: up to 0.03 but for misparsed ones) is
filled by its face: there is no room for another face to look for."""


def fills_the_frame(fit: Fit) -> bool:
    """True when the face whose landmarks gave `fit` (on a whole image) fills the image as an aligned
    crop's face does, so that no detector needs to run."""
    return fit.zoom <= FILL_ZOOM and fit.offset <= FILL_SHIFT


def eye_roll(probs: Tensor, parts: FaceParts = CELEBAMASK_PARTS) -> float | None:
    """Degrees the face in an aligned crop is still rolled by, from the line through its eyes (brows
    when an eye is missing; `landmarks.find_landmarks`), or None when neither pair is visible. Same
    sign as `Face.angle`."""
    points = find_landmarks(labels(probs), parts)
    side = probs.shape[-1]
    for pair in ("eye", "brow"):
        if f"{pair}_left" in points and f"{pair}_right" in points:
            (xa, ya), (xb, yb) = points[f"{pair}_left"], points[f"{pair}_right"]
            if (xb - xa) * side < 2:
                continue
            # A face still rolled counter-clockwise on screen has its right-hand eye higher (smaller y).
            return -math.degrees(math.atan2(yb - ya, xb - xa))
    return None


SQUARE = 0.1
"""Images whose sides differ by at most this fraction may be aligned crops (training crops are square)."""


def is_square(shape: tuple[int, int]) -> bool:
    """True when an image of `shape` (H, W) is square within `SQUARE`, as every aligned crop is."""
    return abs(shape[0] - shape[1]) <= SQUARE * max(shape)


WHOLE_IMAGE_IOU = 0.6
"""A single face whose training crop covers the image this well (IoU) makes it an aligned crop..."""
WHOLE_IMAGE_ROLL = 10.0
"""...when it is upright within this many degrees (the cascade's own tolerance)."""


def is_whole_image(faces: Sequence[Face], shape: tuple[int, int], framing: Framing = FRAMING) -> bool:
    """True when detector boxes say the image already is a training-style crop: the largest face
    upright and its crop about the image (how `verify=False` and the calibration decide)."""
    if not faces:
        return False
    f = max(faces, key=lambda face: face.size)
    if abs(f.angle) > WHOLE_IMAGE_ROLL:
        return False
    half = framing.scale * f.size / 2
    cx, cy = f.cx + framing.dx * f.size, f.cy + framing.dy * f.size
    return iou((cx - half, cy - half, cx + half, cy + half), (0, 0, shape[1], shape[0])) >= WHOLE_IMAGE_IOU


__all__ = [
    "CROP_SKIN",
    "eye_roll",
    "fills_the_frame",
    "is_square",
    "is_whole_image",
    "labels",
    "looks_like_a_crop",
    "looks_like_a_face",
]
