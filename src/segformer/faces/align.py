"""The similarity transform between a face in a photo and the framing the face parser was trained on.

CelebAMask-HQ crops (and every crop the parsers here learn from) show one face at a fixed scale and
position. `Framing` says where that crop lies relative to the detector's box; its default values were
fitted on the aligned training crops themselves (whose framing is the training framing by definition):
the detector (alt2 cascade) ran on 1,000 CelebAMask-HQ crops (it found a face in 96.8% of them) and
the medians of the crop's side and centre were taken in units of the box
(`benchmarks/bench_scenes.py --calibrate` recomputes them; the side's quartiles are -4% .. +5%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .detect import Face
from .landmarks import Fit


@dataclass(frozen=True)
class Framing:
    """The training crop in units of the detector box's side: a square of side ``scale`` whose centre
    lies ``(dx, dy)`` from the box centre, in the upright face's frame (``dy > 0``: below)."""

    scale: float = 1.595
    dx: float = 0.0
    dy: float = -0.078


FRAMING = Framing()


def crop_transform(face: Face, size: int, framing: Framing = FRAMING) -> np.ndarray:
    """The (2, 3) affine matrix taking photo pixel coordinates to `size` x `size` crop coordinates
    (the face upright, framed as in training). Pixel centres map to pixel centres (cv2's convention)."""
    side = framing.scale * face.size
    zoom = size / side
    # Rotating the photo clockwise by the face's roll turns the face upright (cv2 turns positive angles
    # counter-clockwise on screen); the box centre stays in place.
    m = cv2.getRotationMatrix2D((face.cx, face.cy), -face.angle, zoom)
    # The crop's centre in the rotated, scaled photo, then moved to the crop's centre.
    centre = np.array([face.cx, face.cy]) + zoom * face.size * np.array([framing.dx, framing.dy])
    m[:, 2] += (size - 1) / 2 - centre
    return m


def invert(m: np.ndarray) -> np.ndarray:
    """The inverse of a (2, 3) affine matrix."""
    return cv2.invertAffineTransform(m)


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points through a (2, 3) affine matrix."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ m[:, :2].T + m[:, 2]


def crop_corners(face: Face, framing: Framing = FRAMING) -> np.ndarray:
    """(4, 2) photo coordinates of the training crop's corners around `face`."""
    m = invert(crop_transform(face, 2, framing))
    return apply(m, np.array([[-0.5, -0.5], [1.5, -0.5], [1.5, 1.5], [-0.5, 1.5]]))


def crop_roi(
    face: Face, shape: tuple[int, int], framing: Framing = FRAMING
) -> tuple[int, int, int, int] | None:
    """Integer (x0, y0, x1, y1) bounds of the crop inside an image of `shape` (H, W), or None when
    the crop lies outside it."""
    corners = crop_corners(face, framing)
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def warp_to_crop(image: np.ndarray, face: Face, size: int, framing: Framing = FRAMING) -> np.ndarray:
    """The `size` x `size` training-style crop of `face` (area-averaged first when it shrinks the face
    by more than 2x, so small crops of huge photos do not alias; reads only the face's region)."""
    m = crop_transform(face, size, framing)
    roi = crop_roi(face, image.shape[:2], framing)
    if roi is None:
        return np.zeros((size, size, image.shape[2]), image.dtype)
    x0, y0, x1, y1 = roi
    part = image[y0:y1, x0:x1]
    m = m.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0])  # coordinates relative to the region
    zoom = math.hypot(m[0, 0], m[0, 1])
    if zoom < 0.5:
        shrink = 1 / (2 * zoom)  # to twice the crop's resolution, then bilinear does the rest
        h, w = part.shape[:2]
        nw, nh = max(1, round(w / shrink)), max(1, round(h / shrink))
        part = cv2.resize(part, (nw, nh), interpolation=cv2.INTER_AREA)
        # Pixel centre x' of the shrunk region is at (x' + 0.5) * w / nw - 0.5 in the region.
        sx, sy = w / nw, h / nh
        pre = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])
        m = m[:, :2] @ pre[:, :2], m
        m = np.hstack([m[0], (m[1][:, :2] @ pre[:, 2] + m[1][:, 2])[:, None]])
    return cv2.warpAffine(part, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def resize_transform(shape: tuple[int, int], size: int) -> np.ndarray:
    """The (2, 3) matrix of resizing a whole image of `shape` (H, W) to `size` x `size` (half-pixel
    centres, as `segformer.inference.ops.resize` samples): the "crop" of a whole-image parse."""
    h, w = shape
    sx, sy = size / w, size / h
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def face_from_fit(m: np.ndarray, fit: Fit, size: int, framing: Framing = FRAMING, score: float = 1.0) -> Face:
    """The face whose training crop would put the landmarks parsed in the `size` crop of transform `m`
    (photo -> crop) at their `CANONICAL` places: where the parse itself says the face is."""
    back = invert(m)
    points = [fit.to_crop(0.5 + 0.5j), fit.to_crop(1.0 + 0.5j)]  # the framing's centre, right edge
    centre, right = apply(back, np.array([[p.real * size - 0.5, p.imag * size - 0.5] for p in points]))
    half = right - centre
    side = 2 * float(np.hypot(*half))
    ux = half / max(np.hypot(*half), 1e-9)  # the face's right and down, on screen (y down)
    uy = np.array([-ux[1], ux[0]])
    box = side / framing.scale
    cx, cy = centre - box * (framing.dx * ux + framing.dy * uy)
    return Face(float(cx), float(cy), box, -math.degrees(math.atan2(ux[1], ux[0])), score)
