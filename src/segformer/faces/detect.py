"""Face localisation with OpenCV's Haar cascade (Viola & Jones, 2001), made rotation tolerant.

The frontal cascade finds upright faces within about ±12° of roll, reliably only well inside that.
Faces tilted further are found by running it on copies of the image rotated in steps of 12.5° and
mapping each box back; one face found
on several copies is kept once (greedy non-maximum suppression on the boxes in the photo, highest
score first). The angle a face was found at is its first estimate of roll; `segformer.faces.pipeline`
refines it from the parse (the eye line).

Why a cascade: it ships inside the ``opencv-python-headless`` 4.x wheel (the base requirement pins
``<5``: OpenCV 5's wheel dropped the cascade files), so faces are found offline right after
``pip install``, on a CPU, in milliseconds per megapixel; see ``docs/faces.md`` for the measurements
behind the choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from ..errors import SegformerError

DEFAULT_ANGLES = (0.0, -12.5, 12.5, -25.0, 25.0)
"""Rotated copies searched (degrees, counter-clockwise): with the cascade's own tolerance of about
±12° they cover a roll of ±37°, each roll within about 6° of a copy's (a face midway between two
copies 25° apart was found on neither; see docs/faces.md)."""
MIN_NEIGHBORS = 3
"""The cascade's `minNeighbors`: 3 rather than OpenCV's usual 4 finds small faces in clutter; the
parser check in `segformer.faces.pipeline` removes the extra false boxes."""
SCALE_FACTOR = 1.05
"""The cascade's `scaleFactor`, the ratio between the window sizes it tries: 1.05 rather than OpenCV's
usual 1.1 finds faces whose size fell between two windows (on 8 scene seeds of 30 scenes, faces missed:
14 -> 9 of 468; scene ratio 0.915 -> 0.924), for about twice the detection time (see docs/faces.md)."""
DETECT_SIDE = 640
"""The image is searched at this longest side (faces smaller than `MIN_FACE` of the shorter side
of the image are not looked for)."""
MIN_FACE = 0.08


@dataclass(frozen=True)
class Face:
    """One face: a square box in the photo (the cascade's box, un-rotated about its own centre by
    `angle`) and how confident the detector is."""

    cx: float
    cy: float
    size: float
    """Side of the detector's square box, in photo pixels."""
    angle: float = 0.0
    """Roll in degrees, counter-clockwise on screen (the face's right eye higher than its left > 0)."""
    score: float = 1.0

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Axis-aligned (x0, y0, x1, y1) of the rotated square box."""
        half = (
            self.size
            / 2
            * (abs(math.cos(math.radians(self.angle))) + abs(math.sin(math.radians(self.angle))))
        )
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)

    def to_dict(self) -> dict[str, float | list[float]]:
        return {
            "box": [round(v, 1) for v in self.box],
            "center": [round(self.cx, 1), round(self.cy, 1)],
            "size": round(self.size, 1),
            "angle": round(self.angle, 1),
            "score": round(self.score, 3),
        }


DEFAULT_CASCADE = "haarcascade_frontalface_alt2.xml"


def cascade_available(name: str = DEFAULT_CASCADE) -> bool:
    """True when this OpenCV can run the Haar cascade `name` (4.x wheels; OpenCV 5 dropped both the
    files and `cv2.CascadeClassifier`)."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    return hasattr(cv2, "CascadeClassifier") and bool(folder) and (Path(folder) / name).is_file()


@cache
def _cascade(name: str) -> cv2.CascadeClassifier:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder or "") / name
    if not cascade_available(name):
        raise SegformerError(
            f"OpenCV {cv2.__version__} ships no Haar cascade {name}: OpenCV 5 lacks the cascade files; "
            'face localisation needs `pip install "opencv-python-headless<5"`'
        )
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise SegformerError(f"{path}: OpenCV could not read the Haar cascade")
    return cascade


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def nms(faces: Sequence[Face], threshold: float = 0.3) -> list[Face]:
    """Greedy non-maximum suppression: highest score first, dropping faces whose boxes overlap a
    kept one by more than `threshold` IoU."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -f.score):
        if all(iou(face.box, k.box) <= threshold for k in kept):
            kept.append(face)
    return kept


def _search(
    grey: np.ndarray,
    angle: float,
    min_side: int,
    min_neighbors: int,
    scale_factor: float,
    cascade: str,
    max_side: int = 0,
) -> list[Face]:
    """Faces the cascade finds in `grey` turned counter-clockwise by `angle` degrees, with sides from
    `min_side` to `max_side` (0: any), in `grey`'s coordinates (a face found upright there is rolled
    by -angle)."""
    gh, gw = grey.shape
    # Rotate about the centre onto a canvas that holds the whole rotated image.
    centre = (gw / 2, gh / 2)
    rot = cv2.getRotationMatrix2D(centre, angle, 1.0)
    cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
    cw, ch = math.ceil(gh * sin + gw * cos), math.ceil(gh * cos + gw * sin)
    rot[0, 2] += cw / 2 - centre[0]
    rot[1, 2] += ch / 2 - centre[1]
    view = grey if angle == 0 else cv2.warpAffine(grey, rot, (cw, ch), flags=cv2.INTER_LINEAR)
    boxes, neighbours = _cascade(cascade).detectMultiScale2(
        view,
        scaleFactor=scale_factor,
        minNeighbors=min_neighbors,
        minSize=(min_side, min_side),
        maxSize=(max_side, max_side),
    )
    back = cv2.invertAffineTransform(rot) if angle != 0 else None
    found = []
    for (x, y, bw, bh), n in zip(
        np.asarray(boxes).reshape(-1, 4), np.asarray(neighbours).ravel(), strict=True
    ):
        cx, cy = x + bw / 2, y + bh / 2
        if back is not None:
            cx, cy = back @ np.array([cx, cy, 1.0])
        found.append(Face(float(cx), float(cy), float(bw), -float(angle), float(n)))
    return found


FOUND_MARGIN = 1.6
"""Side, in units of a face's box, of the square around a face already found that a search leaves
out (`detect_faces(skip=...)`: the face's crop, about)."""


def _blank(grey: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A copy of `grey` with the square around each face uniform grey (the cascade rejects a uniform
    window at its first stage)."""
    grey = grey.copy()
    for face in faces:
        half = FOUND_MARGIN * face.size / 2
        x0, y0 = max(0, round(face.cx - half)), max(0, round(face.cy - half))
        grey[y0 : max(y0, round(face.cy + half)), x0 : max(x0, round(face.cx + half))] = 128
    return grey


def detect_faces(
    image: np.ndarray,
    *,
    angles: Sequence[float] = DEFAULT_ANGLES,
    min_face: float = MIN_FACE,
    min_neighbors: int = MIN_NEIGHBORS,
    scale_factor: float = SCALE_FACTOR,
    cascade: str = DEFAULT_CASCADE,
    skip: Sequence[Face] = (),
) -> list[Face]:
    """Every face in an (H, W, 3) uint8 RGB image, most confident first, searched on a copy rotated
    by each of `angles`; the squares around the faces of `skip` (found already) are left out (blanked
    to uniform grey, which the cascade rejects at its first stage), so `segformer.faces.pipeline`
    searches the rotated copies only where the upright search found no face. The score is the number
    of overlapping raw detections the cascade merged into the box (its usual confidence), summed over
    the copies that found the face.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SegformerError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(h, w))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(
            grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    grey = cv2.equalizeHist(grey)
    if skip:
        grey = _blank(grey, [Face(f.cx * scale, f.cy * scale, f.size * scale) for f in skip])
    min_side = max(20, round(min_face * min(grey.shape)))
    found = []
    for angle in angles:
        found += _search(grey, angle, min_side, min_neighbors, scale_factor, cascade)
    return _merge([Face(f.cx / scale, f.cy / scale, f.size / scale, f.angle, f.score) for f in found])


def overlap_of_smaller(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection of two (x0, y0, x1, y1) boxes over the smaller one's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


PART_SCORE = 4.0
"""A box mostly inside or around a face that scores this many times more is a part of it (an eye, the
mouth) or a surrounding of it, and is dropped (a weak box about a large blurred face once passed the
check and labelled 41% of a scene's clutter); boxes of comparable scores are kept for the parse to
judge: a face in front of or behind another."""
SIMILAR = 0.8
"""Boxes of one face found on several copies have sides within this ratio (a box around a face and
one on it overlap too, but are not the same find)."""


def _merge(found: list[Face], threshold: float = 0.3) -> list[Face]:
    """NMS that also pools the evidence. A face whose box overlaps a stronger one of a `SIMILAR` size
    by more than `threshold` IoU is the same face seen again (often on another rotated copy): the kept face's
    score is the sum of their scores (a face seen on several copies outranks a one-copy false hit)
    and its geometry their score-weighted mean (a face rolled by 12 degrees is found both upright
    and at 25 degrees: the mean is the better roll). A box inside or around a stronger one but of a
    quite different size is kept: a face in front of or behind another (the parse of each box says
    whether it is a face, and whether it is the same face: `segformer.faces.pipeline`)."""
    groups: list[list[Face]] = []
    for face in sorted(found, key=lambda f: -f.score):
        for group in groups:
            similar = min(face.size, group[0].size) >= SIMILAR * max(face.size, group[0].size)
            if similar and iou(face.box, group[0].box) > threshold:
                group.append(face)
                break
            weak = face.score * PART_SCORE < group[0].score
            if weak and overlap_of_smaller(face.box, group[0].box) > 0.6:
                break  # a weak box on a part of a much stronger face, or around it
        else:
            groups.append([face])
    merged = []
    for g in groups:
        w = np.array([f.score for f in g])
        geometry = np.array([(f.cx, f.cy, f.size, f.angle) for f in g]).T @ w / w.sum()
        merged.append(Face(*(float(v) for v in geometry), float(w.sum())))
    return sorted(merged, key=lambda f: -f.score)
