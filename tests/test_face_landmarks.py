"""Landmarks read from a face parse: where the parts are, the similarity to the training framing,
and the check that tells a parsed face from clutter a parser labelled as one."""

from __future__ import annotations

import inspect
import math

import cv2
import numpy as np
import pytest

from segformer.data.datasets import holdout_stems
from segformer.data.io import load_mask
from segformer.faces.checks import looks_like_a_crop, looks_like_a_face
from segformer.faces.landmarks import CANONICAL, find_landmarks, fit_landmarks, parse_fit

SIZE = 128
PARTS = {"eye": (4, 5), "brow": (6, 7)}


def drawn_face(size: int = SIZE, swap: bool = False, one_name: bool = False) -> np.ndarray:
    """A (size, size) CelebAMask-HQ label map with skin and every part at its `CANONICAL` place.
    l_eye / l_brow (the subject's left) are on the image's right unless `swap`; `one_name` labels
    both eyes l_eye."""
    ids = np.zeros((size, size), np.uint8)
    cv2.ellipse(ids, (size // 2, int(0.55 * size)), (int(0.3 * size), int(0.4 * size)), 0, 0, 360, 1, -1)

    def blob(name: str, cls: int, rx: float, ry: float) -> None:
        x, y = CANONICAL[name]
        centre = (round(x * size - 0.5), round(y * size - 0.5))
        cv2.ellipse(ids, centre, (max(1, round(rx * size)), max(1, round(ry * size))), 0, 0, 360, cls, -1)

    for part, (subject_left, subject_right) in PARTS.items():
        right, left = (subject_right, subject_left) if swap else (subject_left, subject_right)
        if one_name and part == "eye":
            left = right
        blob(f"{part}_right", right, 0.05, 0.02)
        blob(f"{part}_left", left, 0.05, 0.02)
    blob("nose", 2, 0.04, 0.05)
    blob("mouth", 11, 0.08, 0.015)
    blob("mouth", 12, 0.07, 0.02)
    return ids


def test_a_face_drawn_at_the_canonical_places_fits_exactly():
    points = find_landmarks(drawn_face())
    assert sorted(points) == sorted(CANONICAL)
    for name, (x, y) in points.items():
        assert abs(x - CANONICAL[name][0]) < 1.5 / SIZE and abs(y - CANONICAL[name][1]) < 1.5 / SIZE, name
    fit = fit_landmarks(points)
    assert fit is not None and fit.count == 6
    assert abs(fit.zoom - 1) < 0.02 and abs(fit.roll) < 0.5 and fit.offset < 0.01 and fit.residual < 0.01
    assert fit.plausible and looks_like_a_face(drawn_face())


@pytest.mark.parametrize("swap,one_name", [(True, False), (False, True)])
def test_sides_come_from_positions_not_class_names(swap, one_name):
    """Parsers (and 12% of the training masks) name the sides inconsistently or give both eyes one
    name: the landmarks do not change."""
    plain = find_landmarks(drawn_face())
    other = find_landmarks(drawn_face(swap=swap, one_name=one_name))
    assert sorted(other) == sorted(plain)
    for name in plain:
        assert np.allclose(other[name], plain[name], atol=1e-6), name


@pytest.mark.parametrize("angle,scale", [(15.0, 1.0), (-20.0, 1.0), (0.0, 0.8), (10.0, 1.25)])
def test_the_fit_measures_a_known_roll_and_zoom(angle, scale):
    """A face turned counter-clockwise on screen by `angle` (cv2's positive angle; positive in
    `Face.angle` too) and scaled by `scale` needs the opposite: roll `angle`, zoom 1 / `scale`."""
    m = cv2.getRotationMatrix2D(((SIZE - 1) / 2, (SIZE - 1) / 2), angle, scale)
    ids = cv2.warpAffine(drawn_face(), m, (SIZE, SIZE), flags=cv2.INTER_NEAREST)
    fit = parse_fit(ids)
    assert fit is not None and fit.count == 6
    assert abs(fit.roll - angle) < 1.0
    assert abs(fit.zoom - 1 / scale) < 0.03
    assert fit.residual < 0.01 and fit.plausible


def test_too_few_landmarks_give_no_fit():
    ids = drawn_face()
    ids[np.isin(ids, (2, 4, 5, 6, 7))] = 1  # only the mouth is left
    assert fit_landmarks(find_landmarks(ids)) is None and not looks_like_a_face(ids)


def test_parts_scattered_over_clutter_are_not_a_face():
    """What a face parser makes of clutter: plenty of skin and every part, in the wrong places. The
    old check (`looks_like_a_crop`: skin and three of four parts) took it for a face."""
    rng = np.random.default_rng(0)
    ids = np.ones((SIZE, SIZE), np.uint8)  # all skin
    for cls in (2, 4, 5, 6, 7, 11, 12):
        x, y = rng.integers(8, SIZE - 8, size=2)
        cv2.circle(ids, (int(x), int(y)), 4, cls, -1)
    assert looks_like_a_crop(ids)
    fit = parse_fit(ids)
    assert fit is not None and not fit.plausible and not looks_like_a_face(ids)
    # No detector score skips the places (issue 25): the check reads the parse alone.
    assert "score" not in inspect.signature(looks_like_a_face).parameters


@pytest.mark.parametrize("bound", ["zoom", "roll", "offset"])
def test_each_bound_rejects_a_face_far_from_the_training_framing(bound):
    """A face half the size, rolled by 45 degrees or moved by a third of the crop fits well but is not
    what the detector's box around a face gives."""
    centre = ((SIZE - 1) / 2, (SIZE - 1) / 2)
    m = {
        "zoom": cv2.getRotationMatrix2D(centre, 0.0, 2.0),
        "roll": cv2.getRotationMatrix2D(centre, 45.0, 1.0),
        "offset": np.array([[1.0, 0, 0.3 * SIZE], [0, 1.0, 0]]),
    }[bound]
    ids = cv2.warpAffine(drawn_face(), m, (SIZE, SIZE), flags=cv2.INTER_NEAREST, borderValue=1)
    fit = parse_fit(ids)
    assert fit is not None and fit.residual < 0.01 and not fit.plausible


def test_the_canonical_places_are_the_medians_of_the_training_masks(shared_data):
    """`CANONICAL` is what the module says it is: recomputed here from the training masks."""
    stems = sorted(p.stem for p in (shared_data / "train" / "images").iterdir())
    train, _ = holdout_stems(stems, 0.1, 0)
    points: dict[str, list[tuple[float, float]]] = {k: [] for k in CANONICAL}
    for stem in train[::4]:  # every fourth mask keeps the test quick; medians move by < 0.005
        mask = load_mask(shared_data / "train" / "masks" / f"{stem}.png", "celebamask")
        for name, p in find_landmarks(mask).items():
            points[name].append(p)
    for name, (x, y) in CANONICAL.items():
        mx, my = np.median(np.array(points[name]), axis=0)
        assert math.hypot(mx - x, my - y) < 0.005, (name, mx, my)


def test_ground_truth_masks_of_the_validation_faces_are_faces(shared_data):
    """The check accepts the validation faces' own labels (none of them was used to set CANONICAL)."""
    stems = sorted(p.stem for p in (shared_data / "train" / "images").iterdir())
    _, val = holdout_stems(stems, 0.1, 0)
    masks = [load_mask(shared_data / "train" / "masks" / f"{s}.png", "celebamask") for s in val]
    faces = [looks_like_a_face(m) for m in masks]
    assert sum(faces) >= 0.95 * len(masks), f"{sum(faces)} of {len(masks)}"


def test_face_parts_are_found_by_name():
    """CelebAMask-HQ's ids are what `FaceParts.of` reads from its names, and another numbering
    (LaPa's names and order) is read as well: the checks then accept its faces."""
    from segformer.data.labels import get_label_set
    from segformer.faces.landmarks import CELEBAMASK_PARTS, FaceParts

    assert FaceParts.of(get_label_set("celebamask").class_names) == CELEBAMASK_PARTS
    lapa = ["background", "skin", "left_eyebrow", "right_eyebrow", "left_eye", "right_eye", "nose",
            "upper_lip", "inner_mouth", "lower_lip", "hair"]  # fmt: skip
    parts = FaceParts.of(lapa)
    assert parts == FaceParts(skin=(1,), nose=(6,), eyes=(4, 5), brows=(2, 3), mouth=(7, 8, 9))
    celeb = drawn_face()
    renumber = {0: 0, 1: 1, 2: 6, 4: 4, 5: 5, 6: 2, 7: 3, 10: 8, 11: 7, 12: 9}
    ids = np.vectorize(renumber.get)(celeb).astype(np.uint8)
    assert looks_like_a_face(ids, parts=parts) and not looks_like_a_face(ids)  # read as CelebAMask-HQ: no
    fit = parse_fit(ids, parts)
    assert fit is not None and fit.count == 6 and fit.residual < 0.01


def test_eye_roll_reads_a_label_set_with_one_eye_class():
    """A label set naming both eyes with one class (here "eyes") has its roll read too: the eye
    pixels are split at the midline, not paired by class."""
    import torch

    from segformer.faces.checks import eye_roll
    from segformer.faces.landmarks import FaceParts

    m = cv2.getRotationMatrix2D(((SIZE - 1) / 2, (SIZE - 1) / 2), 10.0, 1.0)
    ids = cv2.warpAffine(drawn_face(one_name=True), m, (SIZE, SIZE), flags=cv2.INTER_NEAREST)
    probs = torch.nn.functional.one_hot(torch.from_numpy(ids).long(), 19).permute(2, 0, 1).float()
    parts = FaceParts.of(["background", "skin", "nose", "eye_g", "eyes", "unused", "l_brow", "r_brow",
                          "l_ear", "r_ear", "mouth", "u_lip", "l_lip"])  # fmt: skip
    assert parts.eyes == (4,)
    roll = eye_roll(probs, parts)
    assert roll is not None and abs(roll - 10.0) < 1.0
