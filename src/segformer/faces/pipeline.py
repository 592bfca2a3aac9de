"""Parse every face of a photo at the framing the parser was trained on, and paste the labels back.

1. **The whole image first.** A square image may be an aligned crop: it is parsed as one (with the
   settings' TTA) and its landmarks are fitted to the training framing (`checks.looks_like_a_face`).
   When they fit and the face fills the frame (`checks.fills_the_frame`) that parse is the answer:
   one parse and a landmark fit, no detector. The whole image is never thrown away for a box inside
   its face: a parse of it that fits is kept, and only other faces the detector finds are added
   (`same_face` tells them apart).
2. **Detection** (`detect.detect_faces`) when the whole image is not such a crop: upright first, then
   the rotated copies only where the upright search found no face.
3. **Check and refine**: each box is warped to a training-style crop (`align.warp_to_crop`) and parsed
   once without TTA; a box whose parse is not a face at that place and size is dropped (no detector
   score skips this). The roll is corrected from the parse (the eye line), and the faces kept are
   parsed with the settings' TTA at their final framing.
4. **Paste** (`paste.paste`): each face's labels go back into the photo; where faces overlap the face
   in front wins. A face none of whose labels survive is in no output: the label map, the instance
   map, the faces' boxes (JSON, overlay) always describe the same faces.

`FaceModel` (`faces/model.py`) is all this module knows of the parser: data flows one way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from ..errors import SegformerError
from .align import FRAMING, Framing, apply, crop_transform, face_from_fit, resize_transform, warp_to_crop
from .checks import (
    eye_roll,
    fills_the_frame,
    is_square,
    is_whole_image,
    labels,
    looks_like_a_crop,
)
from .detect import DEFAULT_ANGLES, Face, detect_faces, iou
from .landmarks import parse_fit
from .model import FaceModel
from .paste import FRONT, FRONT_RULES, TILE, Layer, paste, sharpness

REFINE_DEGREES = 3.0
"""Roll corrections smaller than this are not worth a second pass."""


class NoFaceWarning(UserWarning):
    """No face was found: the whole image is labelled background."""


@dataclass
class FaceParse:
    """The labels of a photo and the faces they came from (every face listed has labels in `ids`)."""

    ids: np.ndarray
    """(H, W) uint8 class ids at the photo's resolution."""
    faces: list[Face]
    probs: np.ndarray | None = None
    """(K, H, W) float32 probabilities (only when asked for: K floats per photo pixel)."""
    instances: np.ndarray | None = None
    """(H, W) uint8: 0 on background, i + 1 where the labels are face i's (when asked for)."""
    whole_image: bool = False
    """True when the image was parsed as one aligned crop (its face is then `faces[0]`)."""
    crops: Tensor | None = field(default=None, repr=False)
    """(N, K, S, S) probabilities of the faces' aligned crops."""

    def faces_json(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.faces]


@dataclass
class Found:
    """A face and the parse of its crop."""

    face: Face
    probs: Tensor | None
    """(K, S, S) probabilities of the crop (None for a whole image parsed by `FaceModel.whole` until
    it is pasted with other faces)."""
    transform: np.ndarray
    """(2, 3) photo -> crop."""
    crop: np.ndarray | None = None
    """The (S, S, 3) crop that was parsed (for the sharpness rule)."""
    whole: bool = False
    fitted: Face | None = None
    """Where the parse's landmarks put the face (`align.face_from_fit`), when they fit."""
    ids: np.ndarray | None = None
    """(S, S) class ids of the crop, when `probs` is None."""
    full: tuple[np.ndarray, np.ndarray | None] | None = None
    """A whole image's own labels from `FaceModel.whole`: (H, W) ids and, when asked, probabilities."""


def whole_face(shape: tuple[int, int], framing: Framing = FRAMING) -> Face:
    """The face whose training crop is the largest square centred in an image of `shape` (H, W)."""
    h, w = shape
    size = min(h, w) / framing.scale
    return Face((w - 1) / 2 - framing.dx * size, (h - 1) / 2 - framing.dy * size, size)


def parse_whole(
    model: FaceModel, image: np.ndarray, framing: Framing = FRAMING, return_probs: bool = False
) -> tuple[Found, bool, bool]:
    """The image parsed as one aligned crop (settings' TTA; by `FaceModel.whole` when the model has
    it: the labels of parsing it whole, exactly); whether that parse is a face at the training
    framing (`looks_like_a_face`), and whether its face fills the frame. The face is where the
    landmarks put it (the centred square when they do not fit)."""
    size = model.size
    probs, full = None, None
    if model.whole is not None:
        full = model.whole(image, return_probs)
        ids = cv2.resize(full[0], (size, size), interpolation=cv2.INTER_NEAREST)  # checked at crop size
    else:
        probs = model.parse([image], model.tta)[0]
        ids = labels(probs)
    fit = parse_fit(ids, model.parts)
    m = resize_transform(image.shape[:2], size)
    face_ok = looks_like_a_crop(ids, model.parts) and fit is not None and fit.plausible
    face = face_from_fit(m, fit, size, framing) if face_ok and fit else whole_face(image.shape[:2], framing)
    found = Found(face, probs, m, whole=True, fitted=face if face_ok else None, ids=ids, full=full)
    return found, face_ok, bool(face_ok and fit and fills_the_frame(fit))


def _check(
    model: FaceModel, box: Face, probs: Tensor, framing: Framing, hidden: Sequence[Face] = ()
) -> Face | None:
    """Where the parse `probs` of `box`'s crop puts its face, when that parse is a face at that place
    and size (`looks_like_a_face`), else None; pixels of the faces `hidden` (in front of it) are left
    out: a face behind another shows the other's eyes and mouth among its own."""
    size, parts = model.size, model.parts
    ids = labels(probs)
    m = crop_transform(box, size, framing)
    if hidden:
        covered = np.zeros(ids.shape, np.uint8)
        for face in hidden:
            corners = apply(m, face_polygon(replace(face, size=HIDE * face.size)))
            cv2.fillPoly(covered, [np.round(corners).astype(np.int32)], 1)
        ids = np.where(covered > 0, 0, ids).astype(np.uint8)
    fit = parse_fit(ids, parts)
    if not (looks_like_a_crop(ids, parts) and fit is not None and fit.plausible):
        return None
    return face_from_fit(m, fit, size, framing, box.score)


HIDE = 1.3
"""A face in front hides this multiple of its box (its hair and chin too) from a face behind it."""


def parse_boxes(
    model: FaceModel,
    image: np.ndarray,
    boxes: Sequence[Face],
    *,
    verify: bool = True,
    refine: bool = True,
    framing: Framing = FRAMING,
) -> list[Found]:
    """The boxes that are faces (`_check` of a parse without TTA; all with `verify=False`), each with
    its roll refined from the eye line (`refine`) and parsed with the settings' TTA. A box whose parse
    is the face of a stronger box (`same_face`) is that face, not another one; a box that is no face
    is checked again without the faces found in front of it (smaller: `paste.FRONT`)."""
    if not boxes:
        return []
    size = model.size
    crops = [warp_to_crop(image, b, size, framing) for b in boxes]
    quick = model.parse(crops, "none")
    fitted = [_check(model, b, p, framing) for b, p in zip(boxes, quick, strict=True)]
    for i, box in enumerate(boxes):
        front = [f for f in fitted if f is not None and f.size < SAME_SIZE * box.size]
        if fitted[i] is None and front:
            fitted[i] = _check(model, box, quick[i], framing, front)
    kept: list[Found] = []
    for box, crop, probs, face in zip(boxes, crops, quick, fitted, strict=True):
        if verify and face is None:
            continue  # the cascade also fires on face-like clutter; the parse tells a face from it
        found = Found(box, probs, crop_transform(box, size, framing), crop, fitted=face)
        if not any(same_face(found, k) for k in kept):
            kept.append(found)
    _finish_parses(model, image, kept, refine, framing)
    return kept


def _finish_parses(
    model: FaceModel, image: np.ndarray, kept: Sequence[Found], refine: bool, framing: Framing
) -> None:
    """Each kept face's roll refined from its eye line (`refine`) and its crop parsed at its final
    framing with the settings' TTA (the parse of the check is final when neither changes it)."""
    size = model.size
    redo = []
    for found in kept:
        face = found.face
        roll = eye_roll(found.probs, model.parts) if refine else None  # type: ignore[arg-type]
        if roll is not None and REFINE_DEGREES <= abs(roll) <= 45:
            face = replace(face, angle=face.angle + roll)
        if face is not found.face:
            found.face = face
            found.crop = warp_to_crop(image, face, size, framing)
            found.transform = crop_transform(face, size, framing)
            redo.append(found)
        elif model.tta != "none":
            redo.append(found)
    if redo:
        for found, probs in zip(redo, model.parse([f.crop for f in redo], model.tta), strict=True):
            found.probs = probs


SAME_SIZE = 0.6
"""Two parsed faces whose faces (where their landmarks put them) overlap, one's centre inside the
other's box, and whose sizes are within this ratio are one face seen through two boxes."""


def same_face(a: Found, b: Found) -> bool:
    """Whether the parses of `a` and `b` show one face: where their landmarks put their faces, those
    overlap (IoU > 0.4), or one's centre is inside the other's box at a similar size (`SAME_SIZE`). A
    box on the mouth and chin of a face parsed already is not another face; a small sharp face in
    front of a large one is."""
    fa, fb = a.fitted or a.face, b.fitted or b.face
    if iou(fa.box, fb.box) > 0.4:
        return True
    small, large = sorted((fa, fb), key=lambda f: f.size)
    x0, y0, x1, y1 = large.box
    inside = x0 <= small.cx <= x1 and y0 <= small.cy <= y1
    return inside and small.size >= SAME_SIZE * large.size


def find_faces(
    model: FaceModel,
    image: np.ndarray,
    *,
    verify: bool = True,
    refine: bool = True,
    framing: Framing = FRAMING,
    detect: dict[str, Any] | None = None,
    return_probs: bool = False,
) -> list[Found]:
    """The faces of a photo and their parses (steps 1-3 of the module docstring); `return_probs`:
    the whole image's probabilities are wanted (when it is kept)."""
    shape = image.shape[:2]
    whole, whole_ok = None, False
    if is_square(shape):
        whole, whole_ok, fills = parse_whole(model, image, framing, return_probs)
        if fills or (whole_ok and not verify):
            return [whole]
    options = dict(detect or {})
    angles = tuple(options.pop("angles", DEFAULT_ANGLES))
    if not verify:  # every box kept: as the detector alone says (an upright box about the image: whole)
        boxes = detect_faces(image, angles=angles, **options)
        if whole is not None and is_whole_image(boxes, shape, framing):
            return [whole]
        found = parse_boxes(model, image, boxes, verify=False, refine=refine, framing=framing)
        return found or ([whole] if whole is not None and looks_like_a_crop(_ids(whole), model.parts) else [])
    known = [whole] if whole is not None and whole_ok else []  # a box on its face is part of it
    # Upright first; the rotated copies only where no face was found (false boxes hide nothing).
    found = _search(model, image, angles[:1], options, known, refine, framing)
    if len(angles) > 1:
        skip = [f.face for f in found]
        found += _search(model, image, angles[1:], {**options, "skip": skip}, known + found, refine, framing)
    if known:
        return known + found
    if whole is not None and not found and looks_like_a_crop(_ids(whole), model.parts):
        # Nothing else is a face and the parse still looks like a face crop whose landmarks this
        # parser misplaced: an aligned portrait is never worse off than parsed whole.
        return [whole]
    return found


def _search(
    model: FaceModel,
    image: np.ndarray,
    angles: Sequence[float],
    options: dict[str, Any],
    known: Sequence[Found],
    refine: bool,
    framing: Framing,
) -> list[Found]:
    """The faces `detect_faces` finds on the copies turned by `angles` whose parses are faces, other
    than those `known` already (`same_face`)."""
    boxes = detect_faces(image, angles=angles, **options)
    found = parse_boxes(model, image, boxes, verify=True, refine=refine, framing=framing)
    return [f for f in found if not any(same_face(f, k) for k in known)]


def _ids(found: Found) -> np.ndarray:
    return found.ids if found.ids is not None else labels(found.probs)


def parse_faces(
    model: FaceModel,
    image: np.ndarray,
    *,
    faces: Sequence[Face] | None = None,
    refine: bool = True,
    verify: bool = True,
    return_probs: bool = False,
    instances: bool = False,
    tile: int = TILE,
    framing: Framing = FRAMING,
    detect: dict[str, Any] | None = None,
    front: str = FRONT,
) -> FaceParse:
    """Labels of every face in an (H, W, 3) uint8 RGB photo (see the module docstring).

    `faces` skips the search and the check: those boxes are parsed (roll refined when `refine`) and
    pasted. `verify=False` keeps every detected box; `detect` passes options to `detect_faces`;
    `front` is the rule for overlapping faces (`paste.FRONT_RULES`). With no face found the image is
    all background and a `NoFaceWarning` is issued.
    """
    if front not in FRONT_RULES:
        raise SegformerError(f"unknown front rule {front!r}; choose from {', '.join(FRONT_RULES)}")
    if faces is not None:
        found = parse_boxes(model, image, list(faces), verify=False, refine=refine, framing=framing)
    else:
        found = find_faces(
            model,
            image,
            verify=verify,
            refine=refine,
            framing=framing,
            detect=detect,
            return_probs=return_probs,
        )
    result = compose(
        model, image, found, return_probs=return_probs, instances=instances, tile=tile, front=front
    )
    if not result.faces:
        h, w = image.shape[:2]
        warnings.warn(
            f"no face found in the {w}x{h} image: labelled all background "
            "(parse it as one aligned crop with --whole-image / faces=False)",
            NoFaceWarning,
            stacklevel=2,
        )
    return result


def _rank(found: Found, image: np.ndarray, front: str, size: int) -> float:
    """The `paste.Layer.rank` of a face under the `front` rule (larger: in front)."""
    if front == "size":
        return -found.face.size
    if front == "sharpness":
        crop = found.crop
        if crop is None:  # the whole image, as the parser saw it
            crop = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        return sharpness(crop)
    return 0.0  # "confidence" ranks pixel by pixel


def compose(
    model: FaceModel,
    image: np.ndarray,
    found: Sequence[Found],
    *,
    return_probs: bool = False,
    instances: bool = False,
    tile: int = TILE,
    front: str = FRONT,
) -> FaceParse:
    """The photo's `FaceParse` from its faces' parses: pasted back (`paste.paste`), and only the faces
    whose labels survived listed, numbered as in the instance map. A whole image kept alone, parsed
    by `FaceModel.whole`, has exactly its own labels."""
    if len(found) == 1 and found[0].full is not None:
        ids, probs = found[0].full
        alive = bool((ids != 0).any())
        owners = (ids != 0).astype(np.uint8) if instances else None
        faces = [found[0].face] if alive else []
        return FaceParse(ids, faces, probs if return_probs else None, owners, alive, None)
    for f in found:
        if f.probs is None:  # the whole image's parse at the working size, to paste with other faces
            f.probs = model.parse([image], model.tta)[0]
    layers = [Layer(f.probs, f.transform, _rank(f, image, front, model.size), f.whole) for f in found]  # type: ignore[arg-type]
    pasted = paste(
        layers, image.shape[:2], num_classes=model.num_classes, front=front, tile=tile,
        return_probs=return_probs, instances=instances,
    )  # fmt: skip
    keep = [i for i, n in enumerate(pasted.pixels) if n > 0]
    owners = None
    if pasted.owners is not None:
        renumber = np.zeros(len(found) + 1, np.uint8)
        renumber[[i + 1 for i in keep]] = np.arange(1, len(keep) + 1)
        owners = renumber[pasted.owners]
    crops = torch.stack([found[i].probs for i in keep]) if keep else torch.zeros(0, model.num_classes, 1, 1)
    whole = any(found[i].whole for i in keep)
    return FaceParse(pasted.ids, [found[i].face for i in keep], pasted.probs, owners, whole, crops)


def face_polygon(face: Face) -> np.ndarray:
    """(4, 2) corners of the face's detector box, rotated with the face."""
    half = face.size / 2
    rad = math.radians(face.angle)
    c, s = math.cos(rad), math.sin(rad)
    # The face's right/down axes on screen (y down): rolled counter-clockwise by `angle`.
    right, down = np.array([c, -s]), np.array([s, c])
    centre = np.array([face.cx, face.cy])
    return np.array([centre + half * (i * right + j * down) for i, j in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


def draw_faces(
    image: np.ndarray, faces: Sequence[Face], colour: tuple[int, int, int] = (255, 255, 0)
) -> np.ndarray:
    """A copy of `image` with each face's (rotated) box and its index drawn on it."""
    out = np.ascontiguousarray(image).copy()
    thick = max(1, round(max(image.shape[:2]) / 400))
    for i, face in enumerate(faces):
        corners = np.round(face_polygon(face)).astype(np.int32)
        cv2.polylines(out, [corners], True, colour, thick, cv2.LINE_AA)
        x, y = corners[0]
        cv2.putText(
            out,
            str(i + 1),
            (int(x), int(y) - 2 * thick),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thick,
            colour,
            thick,
        )
    return out


__all__ = [
    "FaceParse",
    "Found",
    "NoFaceWarning",
    "compose",
    "draw_faces",
    "face_polygon",
    "find_faces",
    "parse_boxes",
    "parse_faces",
    "parse_whole",
    "whole_face",
]
