"""Scenes composed from labelled aligned faces: the evaluation of face parsing in photos.

Each scene pastes 1-3 aligned face crops (with their own background, all labelled) onto procedural
clutter (gradients, shapes, noise, text-like strokes) at a random scale (a fraction of the scene's
height), position and rotation. `score_scenes` runs the full photo pipeline on them and reports the
CE7454 score on each face's region, next to the score of parsing the same faces as aligned crops, and
the fraction of the scene outside every face that was labelled as a face class.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from segformer.metrics import ce7454_image_scores, per_image_confusion

IGNORE = 255


@dataclass
class Scene:
    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    mask: np.ndarray
    """(H, W) uint8 class ids (background outside the faces)."""
    regions: np.ndarray
    """(H, W) uint8: i + 1 on the pixels of face i, 0 elsewhere."""
    sources: list[int]
    """Index of each pasted face in the sample list."""
    blurs: list[float] = field(default_factory=list)
    """Gaussian sigma each face was blurred with, in its crop's pixels (0: sharp)."""


def clutter(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A busy (h, w, 3) uint8 background: a colour gradient, filled and outlined shapes, text-like
    strokes and noise (nothing face-like on purpose, but edges and blobs everywhere)."""
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0.3, 1) + np.linspace(0, 1, h)[
        :, None, None
    ] * rng.uniform(0, 0.7)
    img = (a + (b - a) * (t / t.max())).astype(np.uint8)
    img = np.array(np.broadcast_to(img, (h, w, 3)))  # writable: drawn on below
    for _ in range(int(rng.integers(15, 40))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(5, max(6, h // 5)))
        thick = -1 if rng.random() < 0.5 else int(rng.integers(1, 6))
        kind = rng.integers(0, 4)
        if kind == 0:
            cv2.circle(img, (x, y), r, colour, thick)
        elif kind == 1:
            cv2.rectangle(img, (x, y), (x + r, y + int(rng.integers(5, r + 6))), colour, thick)
        elif kind == 2:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, max(1, thick))
        else:
            letters = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(3, 10))))
            cv2.putText(
                img,
                letters,
                (x, y),
                int(rng.integers(0, 8)),
                rng.uniform(0.5, 3),
                colour,
                int(rng.integers(1, 4)),
            )
    noise = rng.normal(0, rng.uniform(2, 12), img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


BEHIND_SCALE = (0.45, 0.7)
"""Side of the large face of a `compose_scene(behind=True)` scene, in scene heights..."""
BEHIND_BLUR = (0.01, 0.025)
"""...its blur (Gaussian sigma, in units of its side: out of focus)..."""
FRONT_SCALE = (0.15, 0.3)
"""...the side of the sharp face in front of it..."""
FRONT_OFFSET = (0.2, 0.4)
"""...and how far its centre lies from the large face's, in units of the large face's side: it
hides part of the large face (a cheek, the jaw, hair), not always its eyes (a face hidden up to its
eyes is found by no cascade here)."""


def _paste(
    scene: Scene,
    face: np.ndarray,
    labels: np.ndarray,
    side: float,
    angle: float,
    centre: tuple[float, float],
    index: int,
    blur: float = 0.0,
) -> None:
    """Pastes an aligned crop (`face`, `labels`) at `centre` with `side` and roll `angle` over `scene`,
    blurred first with sigma `blur` (crop pixels) when not 0."""
    if blur:
        face = cv2.GaussianBlur(face, (0, 0), blur)
    h, w = scene.mask.shape
    n = max(2, round(side))
    face = cv2.resize(face, (n, n), interpolation=cv2.INTER_AREA)
    labels = cv2.resize(labels, (n, n), interpolation=cv2.INTER_NEAREST)
    m = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), angle, 1.0)
    m[:, 2] += np.array(centre) - (n - 1) / 2
    inside = cv2.warpAffine(np.ones((n, n), np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0
    warped = cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR)
    warped_labels = cv2.warpAffine(labels, m, (w, h), flags=cv2.INTER_NEAREST)
    scene.image[inside] = warped[inside]
    scene.mask[inside] = warped_labels[inside]
    scene.regions[inside] = len(scene.sources) + 1
    scene.sources.append(index)
    scene.blurs.append(blur)


def _extent(side: float, angle: float) -> float:
    return side * (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle))))


def _face_behind(rng: np.random.Generator, samples, scene: Scene, max_angle: float) -> list[tuple]:
    """A large blurred face and a small sharp one in front of it (`BEHIND_SCALE`, ...); their boxes."""
    h, w = scene.mask.shape
    side = rng.uniform(*BEHIND_SCALE) * h
    angle = rng.uniform(-max_angle, max_angle)
    extent = min(_extent(side, angle), 0.99 * min(h, w))
    cx, cy = rng.uniform(extent / 2, w - extent / 2), rng.uniform(extent / 2, h - extent / 2)
    index = int(rng.integers(0, len(samples)))
    image, labels = samples[index]
    sigma = rng.uniform(*BEHIND_BLUR) * image.shape[0]  # blurred before the resize to `side`
    _paste(scene, image, labels, side, angle, (cx, cy), index, sigma)
    small = rng.uniform(*FRONT_SCALE) * h
    small_angle = rng.uniform(-max_angle, max_angle)
    half = _extent(small, small_angle) / 2
    distance, direction = rng.uniform(*FRONT_OFFSET) * side, rng.uniform(0, 2 * math.pi)
    fx = float(np.clip(cx + distance * math.cos(direction), half, w - half))
    fy = float(np.clip(cy + distance * math.sin(direction), half, h - half))
    index = int(rng.integers(0, len(samples)))
    _paste(scene, *samples[index], small, small_angle, (fx, fy), index)
    return [(cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2)]


def compose_scene(
    rng: np.random.Generator,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    size: tuple[int, int] = (720, 960),
    *,
    faces: tuple[int, int] = (1, 3),
    scale: tuple[float, float] = (0.15, 0.6),
    max_angle: float = 25.0,
    behind: bool = False,
) -> Scene:
    """A scene of `size` (H, W) with a random number of faces in `faces` drawn from `samples`
    ((image, mask) aligned crops), each with side ``scale * H``, rolled by up to `max_angle`, apart.
    `behind`: first a large face out of focus with a small sharp face in front of it, overlapping it
    (`_face_behind`; they count as two of `faces`), then the others, apart from both."""
    from segformer.faces.detect import iou

    h, w = size
    scene = Scene(clutter(rng, h, w), np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8), [])
    boxes: list[tuple[float, float, float, float]] = []
    count = int(rng.integers(faces[0], faces[1] + 1))
    if behind:
        boxes += _face_behind(rng, samples, scene, max_angle)
        count -= 2
    for _ in range(count):
        for _attempt in range(30):  # a position that does not cover another face much
            side = rng.uniform(*scale) * h
            angle = rng.uniform(-max_angle, max_angle)
            extent = _extent(side, angle)
            if extent >= min(h, w):
                continue
            cx = rng.uniform(extent / 2, w - extent / 2)
            cy = rng.uniform(extent / 2, h - extent / 2)
            box = (cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2)
            if all(iou(box, b) < 0.05 for b in boxes):
                break
        else:
            continue
        index = int(rng.integers(0, len(samples)))
        _paste(scene, *samples[index], side, angle, (cx, cy), index)
        boxes.append(box)
    return scene


def face_scores(pred: np.ndarray, scene: Scene, num_classes: int) -> list[float]:
    """CE7454 score of `pred` on each face's region of `scene` (other pixels ignored)."""
    scores = []
    for i in range(len(scene.sources)):
        inside = scene.regions == i + 1
        if not inside.any():  # covered entirely by a later face
            scores.append(float("nan"))
            continue
        target = np.where(inside, scene.mask, IGNORE)
        cm = per_image_confusion(
            torch.from_numpy(pred)[None], torch.from_numpy(target)[None], num_classes, IGNORE
        )
        scores.append(float(ce7454_image_scores(cm)[0]))
    return scores


def crop_scores(
    predictor: Any, samples: Sequence[tuple[np.ndarray, np.ndarray]], blur: float = 0.0
) -> list[float]:
    """CE7454 score of parsing each aligned crop directly (as one crop, at its own resolution),
    blurred first with sigma `blur` when not 0 (the reference of a face pasted out of focus)."""
    k = predictor.config.num_classes
    scores = []
    for image, mask in samples:
        if blur:
            image = cv2.GaussianBlur(image, (0, 0), blur)
        pred = predictor.predict_arrays([image], faces=False)[0]
        cm = per_image_confusion(torch.from_numpy(pred)[None], torch.from_numpy(mask)[None], k, IGNORE)
        scores.append(float(ce7454_image_scores(cm)[0]))
    return scores


def score_scenes(
    predictor: Any,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    scenes: int = 20,
    seed: int = 0,
    size: tuple[int, int] = (720, 960),
    options: dict[str, Any] | None = None,
    behind: bool = False,
) -> dict[str, Any]:
    """Composes `scenes` seeded scenes from `samples`, parses them with `segformer.faces.parse_faces`
    and scores them (see the module docstring); the reference is `crop_scores` on the same faces (as
    blurred as in the scene).
    `options` go to `parse_faces`; `behind`: scenes with a large blurred face behind a small sharp one
    (`compose_scene`)."""
    from segformer.faces.pipeline import parse_faces

    rng = np.random.default_rng(seed)
    k = predictor.config.num_classes
    reference = crop_scores(predictor, samples)
    scene_scores: list[float] = []
    paired_reference: list[float] = []
    false_pixels = outside_pixels = 0
    found = pasted = 0
    seconds = 0.0
    for _ in range(scenes):
        scene = compose_scene(rng, samples, size, behind=behind)
        start = time.perf_counter()
        result = parse_faces(predictor.face_model, scene.image, **(options or {}))
        seconds += time.perf_counter() - start
        for i, score in enumerate(face_scores(result.ids, scene, k)):
            if not math.isnan(score):
                src, blur = scene.sources[i], scene.blurs[i]
                scene_scores.append(score)
                # a face out of focus is compared with its aligned crop as much out of focus
                paired_reference.append(
                    crop_scores(predictor, [samples[src]], blur)[0] if blur else reference[src]
                )
        outside = scene.regions == 0
        false_pixels += int((result.ids[outside] != 0).sum())
        outside_pixels += int(outside.sum())
        pasted += len(scene.sources)
        found += len(result.faces)
    scene_mean = float(np.mean(scene_scores)) if scene_scores else float("nan")
    crop_mean = float(np.mean(paired_reference)) if paired_reference else float("nan")
    return {
        "scenes": scenes,
        "faces": pasted,
        "detections": found,
        "scene_ce7454": scene_mean,
        "crop_ce7454": crop_mean,
        "ratio": scene_mean / crop_mean if crop_mean else float("nan"),
        "false_positive": false_pixels / max(outside_pixels, 1),
        "seconds_per_scene": seconds / max(scenes, 1),
    }
