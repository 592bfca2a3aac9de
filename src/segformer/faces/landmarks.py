"""Landmarks read from a face parse, and how far they are from the training framing.

The aligned crops a face parser learns from (CelebAMask-HQ) are framed by the face's landmarks: over
the 810 training masks of the shared CelebAMask-HQ sample, the centre of each eye lies within 0.9% of
the crop's side of its median position (standard deviation), the nose and mouth within 1.8%, the brows
within 2%. The centroids of the parsed eyes, brows, nose and mouth in a detector's crop, fitted to
`CANONICAL` by a similarity (zoom, roll, shift), say how far the crop is from the training framing,
and how well they fit says whether the parse is a face at all: a parser trained only on faces labels
clutter as skin, eyes and lips too, but puts the "parts" in the wrong places.

`CANONICAL` is reproduced by ``python benchmarks/bench_scenes.py --landmarks`` (medians over the
training masks; the split seed is 0, so the validation faces the scene benchmark uses are not among
them).
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

CANONICAL: dict[str, tuple[float, float]] = {
    "eye_left": (0.3784, 0.4784),
    "eye_right": (0.6229, 0.4789),
    "brow_left": (0.3701, 0.4165),
    "brow_right": (0.6298, 0.4162),
    "nose": (0.4999, 0.5778),
    "mouth": (0.4998, 0.7515),
}
"""(x, y) of each landmark in an aligned crop, in units of the crop's side from its top-left corner
(pixel centres at (i + 0.5) / side). "left" is the image's left (the subject's right)."""


@dataclass(frozen=True)
class FaceParts:
    """The class ids of each face part in a label set, found by name (`of`), so that a face label set
    other than CelebAMask-HQ's numbering is read right. Which eye or brow is on the image's left is
    read from positions, never from the class."""

    skin: tuple[int, ...]
    nose: tuple[int, ...]
    eyes: tuple[int, ...]
    brows: tuple[int, ...]
    mouth: tuple[int, ...]
    """Inner mouth and lips."""

    @classmethod
    def of(cls, class_names: Sequence[str]) -> FaceParts:
        """Parts by name: "skin", "nose", "eye" (not "eye_g" or glasses), "brow", "mouth" or "lip"
        anywhere in a class's name, case ignored (CelebAMask-HQ's l_eye, LaPa's left_eye, ...)."""
        names = [n.lower() for n in class_names]

        def ids(test: Callable[[str], bool]) -> tuple[int, ...]:
            return tuple(i for i, n in enumerate(names) if test(n))

        return cls(
            skin=ids(lambda n: "skin" in n),
            nose=ids(lambda n: "nose" in n),
            eyes=ids(lambda n: "eye" in n and "brow" not in n and "glass" not in n and n != "eye_g"),
            brows=ids(lambda n: "brow" in n),
            mouth=ids(lambda n: "mouth" in n or "lip" in n),
        )

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """The inner parts that `pipeline.looks_like_a_crop` counts (those the label set has)."""
        return tuple(g for g in (self.nose, self.eyes, self.brows, self.mouth) if g)


CELEBAMASK_PARTS = FaceParts(skin=(1,), nose=(2,), eyes=(4, 5), brows=(6, 7), mouth=(10, 11, 12))
"""`FaceParts.of` the CelebAMask-HQ label set (a test checks that they agree)."""
MIN_PIXELS = 4
"""A part is a landmark when the parse gives it at least this many pixels."""

MIN_LANDMARKS = 3
MAX_RESIDUAL = 0.05
"""Largest root-mean-square distance (crop sides) between the fitted landmarks and `CANONICAL` for a
face. The bounds here were chosen on detector boxes of scenes composed with seeds 2-5 (223 boxes on
a face, 10 on clutter that the parser took for a face): true faces fit within 0.047 (median 0.011),
clutter median 0.097 (see docs/faces.md)."""
SCALE_RANGE = (0.6, 1.5)
"""Plausible zoom from a detector's crop to the training framing (faces: 0.65-1.32; clutter down
to 0.15)."""
MAX_ROLL = 25.0
"""Plausible remaining roll in degrees (faces: within 10.1 but one; clutter up to 156)."""
MAX_SHIFT = 0.15
"""Plausible shift of the landmarks' centre, in crop sides (faces: 0.05 but one; clutter median 0.21)."""


@dataclass(frozen=True)
class Fit:
    """The least-squares similarity (zoom, roll, shift) that takes a crop's parsed landmarks to
    `CANONICAL`, and how well it fits."""

    zoom: float
    roll: float
    """Degrees the face in the crop is still rolled by (same sign as `Face.angle`)."""
    offset: float
    """How far the landmarks' centre moves, in crop sides."""
    residual: float
    count: int
    similarity: complex = 1
    """The fitted map itself: a landmark at crop point p (complex x + iy, crop sides) goes to
    ``similarity * (p - source) + target`` in `CANONICAL`'s frame."""
    source: complex = 0.5 + 0.5j
    """Mean of the fitted landmarks in the crop."""
    target: complex = 0.5 + 0.5j
    """Mean of the same landmarks in `CANONICAL`."""

    @property
    def plausible(self) -> bool:
        """True when the fit could be a face seen by the detector (see the module's bounds)."""
        return (
            self.count >= MIN_LANDMARKS
            and self.residual <= MAX_RESIDUAL
            and SCALE_RANGE[0] <= self.zoom <= SCALE_RANGE[1]
            and abs(self.roll) <= MAX_ROLL
            and self.offset <= MAX_SHIFT
        )

    def to_crop(self, point: complex) -> complex:
        """Where a point of the training framing (x + iy, crop sides) lies in the parsed crop: the
        inverse of the fitted similarity."""
        return (point - self.target) / self.similarity + self.source


def _centre(xs: np.ndarray, ys: np.ndarray, shape: tuple[int, ...]) -> tuple[float, float]:
    return ((float(xs.mean()) + 0.5) / shape[1], (float(ys.mean()) + 0.5) / shape[0])


NEAR = 0.12
"""How far (crop sides) from its `CANONICAL` place a part is looked for: where a part has several
pieces, the one kept weighs its size (the square root of its area) by ``exp(-(distance / NEAR)²)``."""


def _piece(mask: np.ndarray, target: tuple[float, float]) -> np.ndarray:
    """The piece (8-connected) of `mask` that is most likely the part at `target` (x, y in crop
    sides): large and near. A parse holds stray pieces of a part (specks on hair or clutter), and
    the parts of another face: a small face in front of a large one shows pieces of the large face's
    eyes in its crop, larger than its own."""
    n, labels, stats, centres = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    h, w = mask.shape
    d = np.hypot((centres[1:, 0] + 0.5) / w - target[0], (centres[1:, 1] + 0.5) / h - target[1])
    weight = np.sqrt(stats[1:, cv2.CC_STAT_AREA]) * np.exp(-((d / NEAR) ** 2))
    return labels == 1 + int(np.argmax(weight))


def find_landmarks(ids: np.ndarray, parts: FaceParts = CELEBAMASK_PARTS) -> dict[str, tuple[float, float]]:
    """Landmarks (names of `CANONICAL`, crop-side units) found in a square (S, S) map of class ids
    whose parts are `parts`: the centre of each part's likeliest piece (`_piece`).

    The pixels of both eyes (both brows) are pooled and split at the face's midline (the line
    through the nose and mouth; the vertical through whichever of them is found, else through the
    pool's median): parsers name the two sides inconsistently (so do 12% of the training masks) and
    sometimes give both eyes one name."""
    points: dict[str, tuple[float, float]] = {}
    for name, classes in (("nose", parts.nose), ("mouth", parts.mouth)):
        ys, xs = np.nonzero(_piece(np.isin(ids, classes), CANONICAL[name]))
        if len(xs) >= MIN_PIXELS:
            points[name] = _centre(xs, ys, ids.shape)
    h, w = ids.shape
    found = [np.array(points[k]) * (w, h) - 0.5 for k in ("nose", "mouth") if k in points]
    axis = found[1] - found[0] if len(found) == 2 and np.hypot(*(found[1] - found[0])) > 1 else (0.0, 1.0)
    grid_y, grid_x = np.mgrid[0:h, 0:w]
    for name, classes in (("eye", parts.eyes), ("brow", parts.brows)):
        pool = np.isin(ids, classes)
        if pool.sum() < MIN_PIXELS:
            continue
        origin = found[0] if found else (float(np.median(np.nonzero(pool)[1])), 0.0)
        # Which side of the midline (pointing down the face): the cross product's sign, y down.
        left = axis[0] * (grid_y - origin[1]) - axis[1] * (grid_x - origin[0]) > 0
        for side, half in (("left", pool & left), ("right", pool & ~left)):
            ys, xs = np.nonzero(_piece(half, CANONICAL[f"{name}_{side}"]))
            if len(xs) >= MIN_PIXELS:
                points[f"{name}_{side}"] = _centre(xs, ys, ids.shape)
    return points


def fit_landmarks(points: dict[str, tuple[float, float]]) -> Fit | None:
    """Least-squares similarity from `points` to `CANONICAL`, or None with fewer than
    `MIN_LANDMARKS` points (two points fit any similarity exactly and prove nothing)."""
    names = [k for k in CANONICAL if k in points]
    if len(names) < MIN_LANDMARKS:
        return None
    src = np.array([complex(*points[k]) for k in names])
    dst = np.array([complex(*CANONICAL[k]) for k in names])
    s0, d0 = src.mean(), dst.mean()
    a, b = src - s0, dst - d0
    c = complex(np.vdot(a, b) / np.vdot(a, a))  # vdot conjugates its first argument
    residual = float(np.sqrt(np.mean(np.abs(c * a - b) ** 2)))
    # Points are complex x + iy with y pointing down: a positive phase turns them clockwise on
    # screen, which undoes a counter-clockwise roll (positive in `Face.angle`).
    return Fit(
        zoom=abs(c),
        roll=math.degrees(cmath.phase(c)),
        offset=float(abs(d0 - s0)),
        residual=residual,
        count=len(names),
        similarity=c,
        source=complex(s0),
        target=complex(d0),
    )


def parse_fit(ids: np.ndarray, parts: FaceParts = CELEBAMASK_PARTS) -> Fit | None:
    """`fit_landmarks` of the landmarks found in `ids`."""
    return fit_landmarks(find_landmarks(ids, parts))
