"""Faces through a video: tracked across frames, their labels smoothed over time.

Per frame the faces are detected and matched to the tracks of the previous frames by box IoU (greedy,
best overlap first). A track smooths its face's geometry (centre, size, roll) and the probabilities of
its aligned crop with exponential moving averages: the crop frame then barely moves between frames of
a still shot, so averaging crop probabilities averages the same facial positions. A track that misses
a detection keeps its last face for `patience` frames (a detector dropping one frame would otherwise
blank the face), then ends. New faces start new tracks.

`flicker` is the measure of temporal noise: the mean fraction of pixels whose label changes between
consecutive frames.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from ..errors import SegformerError
from .align import FRAMING, Framing, warp_to_crop
from .detect import Face, detect_faces, iou
from .pipeline import FaceParse, align_faces, face_parts, looks_like_a_face, parse_crops, paste

MATCH_IOU = 0.3


@dataclass
class Track:
    face: Face
    probs: Tensor  # (K, S, S) smoothed crop probabilities
    missed: int = 0


STILL = 0.06
"""A detection this close to its track (centre and size, in units of the face's size) is the same face
standing still: the track's framing stays put, so that the averaged crops show the same pixels."""
STILL_DEGREES = 4.0


def _blend(a: Face, b: Face, keep: float) -> Face:
    still = (
        math.hypot(b.cx - a.cx, b.cy - a.cy) <= STILL * a.size
        and abs(b.size - a.size) <= STILL * a.size
        and abs(b.angle - a.angle) <= STILL_DEGREES
    )
    if still:  # detector jitter: moving the crop would only shift the labels back and forth
        return Face(a.cx, a.cy, a.size, a.angle, b.score)
    mix = lambda x, y: keep * x + (1 - keep) * y  # noqa: E731
    return Face(mix(a.cx, b.cx), mix(a.cy, b.cy), mix(a.size, b.size), mix(a.angle, b.angle), b.score)


class FaceVideo:
    """Parses frames one after another, tracking and smoothing faces.

    `smoothing` is the weight of the past in the moving averages (0: every frame on its own).
    """

    def __init__(
        self,
        predictor: Any,
        *,
        smoothing: float = 0.7,
        patience: int = 3,
        verify: bool = True,
        framing: Framing = FRAMING,
        detect: dict[str, Any] | None = None,
    ) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise SegformerError(f"smoothing must lie in [0, 1), got {smoothing}")
        self.predictor = predictor
        self.smoothing = smoothing
        self.patience = patience
        self.verify = verify
        self.framing = framing
        self.detect = detect or {}
        self.tracks: list[Track] = []

    def _match(self, faces: Sequence[Face]) -> list[tuple[int, int]]:
        pairs = sorted(
            (
                (iou(t.face.box, f.box), ti, fi)
                for ti, t in enumerate(self.tracks)
                for fi, f in enumerate(faces)
            ),
            reverse=True,
        )
        used_t: set[int] = set()
        used_f: set[int] = set()
        matches = []
        for overlap, ti, fi in pairs:
            if overlap < MATCH_IOU or ti in used_t or fi in used_f:
                continue
            used_t.add(ti)
            used_f.add(fi)
            matches.append((ti, fi))
        return matches

    def __call__(
        self, frame: np.ndarray, *, instances: bool = False, return_probs: bool = False
    ) -> FaceParse:
        """The labels of the next frame."""
        size = self.predictor.image_size[0]
        detected = detect_faces(frame, **self.detect)
        matches = dict(self._match(detected))  # track -> face
        matched_faces = set(matches.values())
        keep = self.smoothing
        faces: list[Face] = []
        for ti, track in enumerate(self.tracks):
            if ti in matches:
                track.face = _blend(track.face, detected[matches[ti]], keep)
                track.missed = 0
            else:
                track.missed += 1
            faces.append(track.face)
        new = [f for fi, f in enumerate(detected) if fi not in matched_faces]
        if new:
            new_faces, new_probs = align_faces(self.predictor, frame, new, size=size, framing=self.framing)
            parts = face_parts(self.predictor)
            for face, probs in zip(new_faces, new_probs, strict=True):
                # as for photos: a box whose parse is no face starts no track
                ids = probs.argmax(0).to(torch.uint8).numpy()
                if not self.verify or looks_like_a_face(ids, face.score, parts):
                    self.tracks.append(Track(face, probs))
        old = [i for i, t in enumerate(self.tracks[: len(faces)]) if t.missed <= self.patience]
        if old:
            crops = [warp_to_crop(frame, self.tracks[i].face, size, self.framing) for i in old]
            fresh = parse_crops(self.predictor, crops)
            for j, i in enumerate(old):
                track = self.tracks[i]
                # A missed frame carries no new evidence about the face: only parse when seen.
                if track.missed == 0:
                    track.probs = keep * track.probs + (1 - keep) * fresh[j]
        self.tracks = [t for t in self.tracks if t.missed <= self.patience]
        if not self.tracks:
            empty = torch.zeros(0, self.predictor.config.num_classes, 1, 1)
            return paste(
                empty,
                [],
                frame.shape[:2],
                framing=self.framing,
                instances=instances,
                return_probs=return_probs,
            )
        return paste(
            torch.stack([t.probs for t in self.tracks]), [t.face for t in self.tracks], frame.shape[:2],
            framing=self.framing, instances=instances, return_probs=return_probs,
        )  # fmt: skip


def parse_video(
    predictor: Any, frames: Iterable[np.ndarray], *, smoothing: float = 0.7, instances: bool = False
) -> Iterator[FaceParse]:
    """`FaceParse` of each frame, in order (one per frame)."""
    video = FaceVideo(predictor, smoothing=smoothing)
    for frame in frames:
        yield video(frame, instances=instances)


def flicker(labels: Sequence[np.ndarray]) -> float:
    """Mean fraction of pixels whose label changes between consecutive frames (0 for < 2 frames)."""
    if len(labels) < 2:
        return 0.0
    return float(np.mean([np.mean(a != b) for a, b in itertools.pairwise(labels)]))


class VideoWriter:
    """(H, W, 3) uint8 RGB frames into an mp4 (OpenCV's mp4v codec), one at a time."""

    def __init__(self, path: str | Path, fps: float = 25.0) -> None:
        self.path = Path(path)
        self.fps = fps if fps > 0 else 25.0
        self.count = 0
        self._writer: cv2.VideoWriter | None = None

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise SegformerError(f"{self.path}: OpenCV cannot write an mp4 video here")
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 25.0) -> int:
    """Frames into an mp4 (`VideoWriter`); returns the frame count."""
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.count


def video_fps(path: str | Path) -> float:
    """The frame rate a video file states (0 when it does not)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()
