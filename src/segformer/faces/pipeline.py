"""Parse every face of a photo at the framing the parser was trained on, and paste the labels back.

1. `detect_faces` finds the faces (box, roll).
2. Each face is warped to a training-style crop at the model's working size (`align.warp_to_crop`)
   and parsed; its roll is then corrected from the parse (the line through the eyes) and, when the
   correction is noticeable, the face is warped and parsed once more.
3. The crops' probabilities are warped back with the inverse transform, tile by tile over the faces'
   regions only (memory stays bounded for huge photos), weighted by a window that fades out towards
   the crop's edges and averaged where faces overlap; whatever weight the faces leave is background.

A photo that is already an aligned crop (one face whose training crop is about the whole image) is
parsed directly, exactly as before this module existed, so aligned crops score as they did.
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
import torch.nn.functional as F
from torch import Tensor

from ..inference.ops import class_ids, predict_batch
from .align import FRAMING, Framing, crop_roi, crop_transform, warp_to_crop
from .detect import Face, detect_faces, iou
from .landmarks import CELEBAMASK_PARTS, FaceParts, find_landmarks, parse_fit

TILE = 1024
"""Side of the tiles the probabilities are pasted back in (memory: K x TILE² floats per face)."""
WHOLE_IMAGE_IOU = 0.6
"""A single face whose training crop covers the image this well (IoU) is parsed as the image."""
WHOLE_IMAGE_ROLL = 10.0
"""...and is upright within this many degrees (the cascade's own tolerance)."""
FADE = 0.05
"""Fraction of the crop's side over which a face's weight fades to 0 at the crop's edge."""
REFINE_DEGREES = 3.0
"""Roll corrections smaller than this are not worth a second pass."""


class NoFaceWarning(UserWarning):
    """No face was found: the whole image is labelled background."""


@dataclass
class FaceParse:
    """The labels of a photo and the faces they came from."""

    ids: np.ndarray
    """(H, W) uint8 class ids at the photo's resolution."""
    faces: list[Face]
    probs: np.ndarray | None = None
    """(K, H, W) float32 probabilities (only when asked for: K floats per photo pixel)."""
    instances: np.ndarray | None = None
    """(H, W) uint8: 0 outside every face, i + 1 where face i has the most weight (when asked for)."""
    whole_image: bool = False
    """True when the image was parsed as one aligned crop."""
    crops: Tensor | None = field(default=None, repr=False)
    """(N, K, S, S) probabilities of the aligned crops (what video smoothing averages)."""

    def faces_json(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.faces]


def _settings(predictor: Any) -> dict[str, Any]:
    return {
        "mean": predictor.mean,
        "std": predictor.std,
        "tta": predictor.tta,
        "flip_perm": predictor.flip_perm,
        "scales": predictor.scales,
        "device": predictor.device,
        "mode": "resize",  # a crop is at the working size already
    }


def parse_crops(predictor: Any, crops: Sequence[np.ndarray]) -> Tensor:
    """(N, K, S, S) float32 CPU probabilities of aligned (S, S, 3) uint8 crops, with the predictor's
    model, normalisation and test-time augmentation."""
    out = []
    size = crops[0].shape[0]
    with torch.inference_mode():
        for start in range(0, len(crops), predictor.batch_size):
            chunk = list(crops[start : start + predictor.batch_size])
            probs = predict_batch(predictor.net, chunk, size, **_settings(predictor))
            out.append(probs.float().cpu())
    return torch.cat(out)


def face_parts(predictor: Any) -> FaceParts:
    """The face parts of the predictor's label set (CelebAMask-HQ's when it names none)."""
    label_set = getattr(predictor, "label_set", None)
    return FaceParts.of(label_set.class_names) if label_set is not None else CELEBAMASK_PARTS


def eye_roll(probs: Tensor, parts: FaceParts = CELEBAMASK_PARTS) -> float | None:
    """Degrees the face in an aligned crop is still rolled by, from the line through its eyes (brows
    when an eye is missing; `landmarks.find_landmarks`), or None when neither pair is visible. Same
    sign as `Face.angle`."""
    points = find_landmarks(probs.argmax(0).to(torch.uint8).numpy(), parts)
    side = probs.shape[-1]
    for pair in ("eye", "brow"):
        if f"{pair}_left" in points and f"{pair}_right" in points:
            (xa, ya), (xb, yb) = points[f"{pair}_left"], points[f"{pair}_right"]
            if (xb - xa) * side < 2:
                continue
            # A face still rolled counter-clockwise on screen has its right-hand eye higher (smaller y).
            return -math.degrees(math.atan2(yb - ya, xb - xa))
    return None


def align_faces(
    predictor: Any,
    image: np.ndarray,
    faces: Sequence[Face],
    *,
    size: int | None = None,
    refine: bool = True,
    framing: Framing = FRAMING,
) -> tuple[list[Face], Tensor]:
    """The faces (roll refined from the parse when `refine`) and their (N, K, S, S) crop probabilities."""
    size = size or predictor.image_size[0]
    faces = list(faces)
    probs = parse_crops(predictor, [warp_to_crop(image, f, size, framing) for f in faces])
    if refine:
        redo, parts = [], face_parts(predictor)
        for i, face in enumerate(faces):
            roll = eye_roll(probs[i], parts)
            if roll is not None and REFINE_DEGREES <= abs(roll) <= 45:
                faces[i] = replace(face, angle=face.angle + roll)
                redo.append(i)
        if redo:
            again = parse_crops(predictor, [warp_to_crop(image, faces[i], size, framing) for i in redo])
            for j, i in enumerate(redo):
                probs[i] = again[j]
    return faces, probs


def _window(size: int) -> Tensor:
    """(1, 1, S, S) weights: 1 inside, fading linearly to 0 over `FADE` of the side at the edges."""
    ramp = max(1.0, FADE * size)
    d = torch.arange(size, dtype=torch.float32)
    edge = torch.minimum(d + 0.5, size - 0.5 - d) / ramp
    w = edge.clamp(0, 1)
    return (w[:, None] * w[None, :])[None, None]


def paste(
    crops: Tensor,
    faces: Sequence[Face],
    shape: tuple[int, int],
    *,
    background: int = 0,
    framing: Framing = FRAMING,
    tile: int = TILE,
    return_probs: bool = False,
    instances: bool = False,
) -> FaceParse:
    """Class ids of a photo of `shape` (H, W) from the (N, K, S, S) crop probabilities of `faces`."""
    h, w = shape
    n, k, s, _ = crops.shape
    ids = np.full((h, w), background, np.uint8)
    probs_out = None
    if return_probs:
        probs_out = np.zeros((k, h, w), np.float32)
        probs_out[background] = 1.0
    inst = np.zeros((h, w), np.uint8) if instances else None
    rois = [crop_roi(f, shape, framing) for f in faces]
    transforms = [torch.from_numpy(crop_transform(f, s, framing)).float() for f in faces]
    weighted = torch.cat([crops, _window(s).expand(n, 1, s, s)], 1)  # weight rides along as channel K
    weighted[:, :k] *= weighted[:, k:]
    live = [r for r in rois if r is not None]
    if not live:
        return FaceParse(ids, list(faces), probs_out, inst, crops=crops)
    x_lo, y_lo = min(r[0] for r in live), min(r[1] for r in live)
    x_hi, y_hi = max(r[2] for r in live), max(r[3] for r in live)
    for ty in range(y_lo, y_hi, tile):
        for tx in range(x_lo, x_hi, tile):
            tx1, ty1 = min(tx + tile, x_hi), min(ty + tile, y_hi)
            hits = [
                i for i, r in enumerate(rois)
                if r is not None and r[0] < tx1 and r[2] > tx and r[1] < ty1 and r[3] > ty
            ]  # fmt: skip
            if not hits:
                continue
            ys, xs = torch.meshgrid(
                torch.arange(ty, ty1, dtype=torch.float32),
                torch.arange(tx, tx1, dtype=torch.float32),
                indexing="ij",
            )
            acc = torch.zeros(k + 1, ty1 - ty, tx1 - tx)
            best = torch.zeros(ty1 - ty, tx1 - tx)
            owner = torch.zeros(ty1 - ty, tx1 - tx, dtype=torch.uint8)
            for i in hits:
                m = transforms[i]
                u = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]  # crop pixel coordinates
                v = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
                grid = torch.stack([(2 * u + 1) / s - 1, (2 * v + 1) / s - 1], -1)[None]
                part = F.grid_sample(
                    weighted[i : i + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False
                )[0]
                acc += part
                if inst is not None:
                    more = part[k] > best
                    best = torch.where(more, part[k], best)
                    owner[more] = i + 1
            weight = acc[k]
            probs = acc[:k] / weight.clamp(min=1.0)
            probs[background] += (1 - weight).clamp(min=0)
            ids[ty:ty1, tx:tx1] = class_ids(probs[None])[0].to(torch.uint8).numpy()
            if probs_out is not None:
                probs_out[:, ty:ty1, tx:tx1] = probs.numpy()
            if inst is not None:
                owner[(weight <= 0) | (torch.from_numpy(ids[ty:ty1, tx:tx1]) == background)] = 0
                inst[ty:ty1, tx:tx1] = owner.numpy()
    return FaceParse(ids, list(faces), probs_out, inst, crops=crops)


CROP_SKIN = 0.10
"""Least fraction of skin in a parse that `looks_like_a_crop` (aligned crops hold 15-35%)."""


def looks_like_a_crop(ids: np.ndarray, parts: FaceParts = CELEBAMASK_PARTS) -> bool:
    """True when a parse at the training framing shows a face: a large skin area and at least three
    of its four inner parts (nose, eyes, brows, mouth and lips), each on 0.05% of the pixels or more.
    It checks the detector's boxes, and recognises the few aligned crops the detector misses. Three
    of four, not all: a half-trained parser finds the nose late, and one part may be hidden."""
    total = ids.size
    found = sum(np.isin(ids, group).sum() >= 0.0005 * total for group in parts.groups)
    skin = np.isin(ids, parts.skin).sum()
    return bool(skin >= CROP_SKIN * total and found >= min(3, len(parts.groups)))


SURE = 20.0
"""Detector score (`Face.score`) from which a box needs no landmark check: on the development scenes
(seeds 2-5) no box on clutter that the parser took for a face scored above 17, while true faces that
this parser parses poorly (their landmarks off) scored up to 40 (see docs/faces.md)."""


def looks_like_a_face(ids: np.ndarray, score: float = 0.0, parts: FaceParts = CELEBAMASK_PARTS) -> bool:
    """The check for a detector's box of detector `score`, from its parse `ids`: `looks_like_a_crop`
    and, unless the detector is sure (`SURE`), its eyes, brows, nose and mouth where a face's are
    (their centres fit the training framing's: `landmarks.Fit.plausible`). A parser trained on faces
    labels clutter as skin and parts too, but scatters the parts."""
    if not looks_like_a_crop(ids, parts):
        return False
    if score >= SURE:
        return True
    fit = parse_fit(ids, parts)
    return fit is not None and fit.plausible


SQUARE = 0.1
"""Images whose sides differ by at most this fraction may be aligned crops (training crops are square)."""


def is_square(shape: tuple[int, int]) -> bool:
    """True when an image of `shape` (H, W) is square within `SQUARE`, as every aligned crop is."""
    return abs(shape[0] - shape[1]) <= SQUARE * max(shape)


def is_whole_image(faces: Sequence[Face], shape: tuple[int, int], framing: Framing = FRAMING) -> bool:
    """True when the image already is a training-style crop: its largest face upright and its crop
    about the image (other boxes are then inside that crop, parsed with it). Parsing such an image
    directly scores at least as well as re-framing it: the detector's box varies in size on aligned
    crops (quartiles -4% .. +5%), the crops' own framing does not."""
    if not faces:
        return False
    f = max(faces, key=lambda face: face.size)
    if abs(f.angle) > WHOLE_IMAGE_ROLL:
        return False
    half = framing.scale * f.size / 2
    cx, cy = f.cx + framing.dx * f.size, f.cy + framing.dy * f.size
    return iou((cx - half, cy - half, cx + half, cy + half), (0, 0, shape[1], shape[0])) >= WHOLE_IMAGE_IOU


def parse_faces(
    predictor: Any,
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
) -> FaceParse:
    """Labels of every face in an (H, W, 3) uint8 RGB photo (see the module docstring).

    `predictor` is a `segformer.Predictor` (its model, working size, normalisation and TTA are
    used). `faces` skips detection and the check that the parse of each box looks like a face
    (`looks_like_a_crop`; `verify=False` skips only the check); `detect` passes options to
    `detect_faces`. With no face found the image is all background and a
    `NoFaceWarning` is issued.
    """
    shape = image.shape[:2]
    parts = face_parts(predictor)
    detected = faces is None
    if faces is None:
        faces = detect_faces(image, **(detect or {}))
    faces = list(faces)
    background = 0
    if is_whole_image(faces, shape, framing):
        whole = _whole(predictor, image, faces, return_probs, instances)
        if not (detected and verify) or looks_like_a_crop(whole.ids, parts):
            return whole
        # The box that made the image look like an aligned crop does not parse as a face (a large
        # false box in clutter): the image is a photo, and that box is checked like the others below.
    crops = None
    if faces:
        faces, crops = align_faces(predictor, image, faces, refine=refine, framing=framing)
        if (
            detected and verify
        ):  # the cascade also fires on face-like clutter; the parser tells a face from it
            real = [
                i
                for i, face in enumerate(faces)
                if looks_like_a_face(crops[i].argmax(0).to(torch.uint8).numpy(), face.score, parts)
            ]
            faces, crops = [faces[i] for i in real], crops[real]
    if not faces and is_square(shape):
        # The cascade misses about 3% of aligned crops; the parser recognises those itself (first
        # at the working size, so that a huge photo without faces costs one small forward pass).
        # Only square images can be aligned crops: a photo squeezed into the square working size
        # shows its clutter as large blobs that a parser takes for skin, and is not a face crop.
        size = predictor.image_size[0]
        small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        if looks_like_a_crop(parse_crops(predictor, [small])[0].argmax(0).to(torch.uint8).numpy(), parts):
            return _whole(predictor, image, [], return_probs, instances)
    if not faces:
        warnings.warn(
            f"no face found in the {shape[1]}x{shape[0]} image: labelled all background "
            "(parse it as one aligned crop with --whole-image / faces=False)",
            NoFaceWarning,
            stacklevel=2,
        )
        crops = torch.zeros(0, predictor.config.num_classes, 1, 1)
    return paste(
        crops, faces, shape, background=background, framing=framing, tile=tile,
        return_probs=return_probs, instances=instances,
    )  # fmt: skip


def _whole(
    predictor: Any, image: np.ndarray, faces: list[Face], return_probs: bool, instances: bool
) -> FaceParse:
    """The image parsed as one aligned crop (the predictor's path without face localisation)."""
    result = predictor.predict_arrays([image], return_probs=return_probs, faces=False)[0]
    ids, probs = result if return_probs else (result, None)
    inst = (ids != 0).astype(np.uint8) if instances else None
    return FaceParse(ids, faces, probs, inst, whole_image=True)


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
