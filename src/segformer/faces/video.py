"""Faces through a video: found every few frames, tracked by their own parse in between, their labels
smoothed over time.

Every `DETECT_EVERY` frames (and on the first) the frame is searched for faces (`detect_faces`,
upright: `VIDEO_DETECT`);
detections are matched to tracks by box IoU (greedy, best overlap first), and new faces whose parse
is a face start tracks. On every frame each track's face is warped to its training-style crop, at
the face's own size, and parsed once; the parse's landmarks (`landmarks.parse_fit`) say where the
face has moved (`align.face_from_fit`), which frames the crop of the next frame, so between searches
no full-frame detection runs and no full-frame probabilities are made (only the faces' regions are
pasted). A track smooths the probabilities of its aligned crop with an exponential moving average
(`smoothing`): the crop follows the face, so the average is over the same facial positions. A parse
that is no face (the face left or turned away) keeps the track's last labels for `patience` frames,
then ends it. A move smaller than `STILL` of the face's size is jitter: the crop stays put.

`flicker` is the measure of temporal noise: the mean fraction of pixels whose label changes between
consecutive frames.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SegformerError
from .align import FRAMING, Framing, crop_transform, face_from_fit, warp_to_crop
from .checks import labels, looks_like_a_crop
from .detect import Face, detect_faces, iou
from .landmarks import parse_fit
from .model import FaceModel
from .pipeline import FaceParse, Found, compose, parse_boxes, same_face

MATCH_IOU = 0.3
DETECT_EVERY = 15
"""Frames between two searches of the whole frame for faces (new faces are found within this many
frames; tracked faces are followed by their parse on every frame)."""
VIDEO_DETECT = {"angles": (0.0,), "scale_factor": 1.1}
"""The search in videos: upright only, windows 1.1x apart (a quarter of a photo's search; a tracked
face's roll and size follow its parse, and a face missed once is found a few frames later)."""
VIDEO_TTA = "none"
"""Tracked faces are parsed with one pass per frame: the moving average of their labels over frames
(`smoothing`) averages as test-time augmentation does on a still, at an eighth of the cost of the shipped
model's flip + scales (10 frames/s instead of 1-2 on two CPU cores, 640x480, one face)."""


@dataclass
class Track:
    face: Face
    """Where the next crop is taken."""
    probs: Tensor
    """(K, S, S) smoothed crop probabilities."""
    shown: Face
    """The framing `probs` belong to (the crop of the last parse)."""
    missed: int = 0
    fresh: bool = False
    """Parsed this frame already (a face found by this frame's search)."""


STILL = 0.06
"""A detection this close to its track (centre and size, in units of the face's size) is the same face
standing still (the detector's boxes jitter by about 5%): the track's framing stays put, so that the
averaged crops show the same pixels."""
STILL_LANDMARKS = 0.03
"""The same for where the parse's landmarks put the face, which jitter less: a still face stays put
(a still clip with noise: flicker 0.19 x parsing each frame alone, as with 0.06), a face moving 2.5%
of its size per frame is followed on every frame (with 0.06, every other frame: pixel accuracy on
the face 0.861 instead of 0.874)."""
STILL_DEGREES = 4.0


def _blend(a: Face, b: Face, keep: float, still: float = STILL) -> Face:
    """`a` moved towards `b` (`keep`: the weight of `a`), unless `b` is within jitter (`still`) of it."""
    jitter = (
        math.hypot(b.cx - a.cx, b.cy - a.cy) <= still * a.size
        and abs(b.size - a.size) <= still * a.size
        and abs(b.angle - a.angle) <= STILL_DEGREES
    )
    if jitter:  # detector or landmark jitter: moving the crop would only shift the labels back and forth
        return Face(a.cx, a.cy, a.size, a.angle, a.score)
    mix = lambda x, y: keep * x + (1 - keep) * y  # noqa: E731
    return Face(mix(a.cx, b.cx), mix(a.cy, b.cy), mix(a.size, b.size), mix(a.angle, b.angle), a.score)


class FaceVideo:
    """Parses frames one after another, tracking and smoothing faces (see the module docstring).

    `smoothing` is the weight of the past in the moving averages (0: every frame on its own).
    `verify=False` trusts the detector: its boxes start tracks unchecked and a track ends after
    `patience` searches that miss it. `tta`: the test-time augmentation of the parse of each tracked
    face on each frame (default `VIDEO_TTA`, one pass: the moving average over frames does the
    averaging that TTA does on a still; None: the model's own).
    """

    def __init__(
        self,
        model: FaceModel,
        *,
        smoothing: float = 0.7,
        patience: int = 3,
        verify: bool = True,
        framing: Framing = FRAMING,
        detect: dict[str, Any] | None = None,
        detect_every: int = DETECT_EVERY,
        tta: str | None = VIDEO_TTA,
    ) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise SegformerError(f"smoothing must lie in [0, 1), got {smoothing}")
        if detect_every < 1:
            raise SegformerError(f"detect_every must be a positive number of frames, got {detect_every}")
        self.model = model
        self.smoothing = smoothing
        self.patience = patience
        self.verify = verify
        self.framing = framing
        self.detect = {**VIDEO_DETECT, **(detect or {})}
        self.detect_every = detect_every
        self.tta = model.tta if tta is None else tta
        self.tracks: list[Track] = []
        self.frames = 0

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

    def _search(self, frame: np.ndarray) -> None:
        """Detection: tracks re-anchored to their boxes, new faces (checked unless not `verify`) tracked."""
        detected = detect_faces(frame, **self.detect)
        matches = dict(self._match(detected))  # track -> face
        for ti, track in enumerate(self.tracks):
            if ti in matches and (not self.verify or track.missed):  # the parse lost it, the detector not
                track.face = _blend(track.face, detected[matches[ti]], self.smoothing)
                track.missed = 0 if not self.verify else track.missed
            elif ti not in matches and not self.verify:
                track.missed += 1
        taken = set(matches.values())
        new = [f for fi, f in enumerate(detected) if fi not in taken]
        size = self.model.size
        known = [
            Found(t.face, t.probs, crop_transform(t.face, size, self.framing), fitted=t.face)
            for t in self.tracks
        ]
        for found in parse_boxes(self.model, frame, new, verify=self.verify, framing=self.framing):
            if not any(same_face(found, k) for k in known):  # a tracked face seen through another box
                self.tracks.append(self._track(found))

    def _track(self, found: Found) -> Track:
        """A new track: its parse kept in the frame its landmarks put the face in (as `_follow` does)."""
        face, probs = found.face, found.probs
        if found.fitted is not None:
            face = replace(found.fitted, score=found.face.score)
            probs = resample(probs, found.transform, crop_transform(face, self.model.size, self.framing))
        return Track(face, probs, face, fresh=True)

    def _follow(self, frame: np.ndarray) -> None:
        """Each track parsed at its face (one pass), the parse resampled to where its landmarks put the
        face (jitter below `STILL` ignored) and averaged there, and the next crop taken there."""
        todo = [t for t in self.tracks if not t.fresh]
        if not todo:
            return
        size, keep = self.model.size, self.smoothing
        parses = self.model.parse([warp_to_crop(frame, t.face, size, self.framing) for t in todo], self.tta)
        for track, probs in zip(todo, parses, strict=True):
            ids = labels(probs)
            fit = parse_fit(ids, self.model.parts)
            is_face = looks_like_a_crop(ids, self.model.parts) and fit is not None and fit.plausible
            if self.verify and not is_face:
                track.missed += 1  # no new evidence: the last labels stay for `patience` frames
                continue
            if self.verify:
                track.missed = 0
            shown = track.face
            if is_face and fit is not None:
                moved = face_from_fit(crop_transform(track.face, size, self.framing), fit, size, self.framing)
                shown = _blend(track.shown, replace(moved, score=track.face.score), 0.0, STILL_LANDMARKS)
                # The parse in the frame the average is kept in: the face's own (as of now).
                probs = resample(
                    probs,
                    crop_transform(track.face, size, self.framing),
                    crop_transform(shown, size, self.framing),
                )
            track.probs = keep * track.probs + (1 - keep) * probs
            track.shown = track.face = shown

    def __call__(
        self, frame: np.ndarray, *, instances: bool = False, return_probs: bool = False
    ) -> FaceParse:
        """The labels of the next frame."""
        for track in self.tracks:
            track.fresh = False
        if self.frames % self.detect_every == 0:
            self._search(frame)
        self.frames += 1
        self._follow(frame)
        self.tracks = [t for t in self.tracks if t.missed <= self.patience]
        size = self.model.size
        found = [Found(t.shown, t.probs, crop_transform(t.shown, size, self.framing)) for t in self.tracks]
        return compose(self.model, frame, found, instances=instances, return_probs=return_probs)


def resample(probs: Tensor, source: np.ndarray, target: np.ndarray) -> Tensor:
    """(K, S, S) probabilities of the crop of transform `source` (photo -> crop) as seen in the crop of
    transform `target` (bilinear; edge pixels repeat beyond the source crop)."""
    s = probs.shape[-1]
    # target crop pixel -> photo -> source crop pixel
    back = np.vstack([cv2.invertAffineTransform(target), [0, 0, 1]])
    m = torch.from_numpy(source @ back).float()
    d = torch.arange(s, dtype=torch.float32)
    ys, xs = torch.meshgrid(d, d, indexing="ij")
    u = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    v = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    grid = torch.stack([(2 * u + 1) / s - 1, (2 * v + 1) / s - 1], -1)[None]
    return F.grid_sample(probs[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def parse_video(
    model: FaceModel, frames: Iterable[np.ndarray], *, smoothing: float = 0.7, instances: bool = False
) -> Iterator[FaceParse]:
    """`FaceParse` of each frame, in order (one per frame)."""
    video = FaceVideo(model, smoothing=smoothing)
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
