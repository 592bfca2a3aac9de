"""Predicting on files as a stream of events, in input order.

`read_inputs` decodes the files named by `segformer.inference.files.collect_inputs`: a `Frame` per image
and per video frame, a `Failure` per unreadable input, `VideoStart` / `VideoEnd` around each video's
frames and an `InputDone` after each input. `parse_stream` runs a `BatchParser` (the `Predictor`; a face
tracker through each video) on batches of frames and passes everything else through, in order, for a
writer (`segformer.inference.files.PredictionWriter`) to consume.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..data.io import load_image
from ..errors import SegformerError
from ..faces import FaceParse, FaceVideo, NoFaceWarning
from .predictor import Predictor

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


# -- reading --------------------------------------------------------------------------------------

# Consecutive undecodable frames after which the rest of a video is taken to be unreadable.
MAX_BAD_FRAMES = 25
# Containers without a frame index (WebM, MKV, ...) estimate their frame count from the duration and
# may list a frame or two more than they hold: a shortfall this small at the end is not reported.
TRAILING_SLACK = 2


def _video_frames(path: Path, bad: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, (H, W, 3) uint8 RGB frame) of every decodable frame of a video; the numbers of
    frames the container lists but that cannot be decoded are appended to `bad`."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SegformerError(f"{path}: cannot open as a video")
    listed = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # 0 or less: the container does not say
    index = decoded = run = 0
    missing: list[int] = []  # undecodable frames not (yet) followed by a decodable one
    try:
        while True:
            ok, frame = capture.read()
            if ok:
                bad.extend(missing)
                missing, run = [], 0
                decoded += 1
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            elif index < listed and run < MAX_BAD_FRAMES:
                missing.append(index)  # a listed frame that does not decode: try the next one
                run += 1
            else:
                break
            index += 1
    finally:
        capture.release()
    if decoded == 0:
        raise SegformerError(f"{path}: no video frame could be decoded")
    missing.extend(range(index, listed))  # after a run of bad frames the rest is unreadable too
    if len(missing) > TRAILING_SLACK:
        bad.extend(missing)


def frames_text(numbers: list[int]) -> str:
    """Frame numbers as ranges: ``3, 7-9``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# The events of the stream, in input order.


@dataclass
class Frame:
    """An image to parse: a still (`name`: its stem) or a video frame (``<stem>/<frame:06d>``)."""

    name: str
    source: str
    image: np.ndarray


@dataclass
class Failure:
    """An input (or one of its outputs) that failed, and why."""

    item: str
    reason: str


@dataclass
class InputDone:
    """An input has been read to its end."""


@dataclass
class VideoStart:
    path: Path


@dataclass
class VideoEnd:
    path: Path
    frames: int
    """Frames decoded."""
    bad: list[int]
    """Frame numbers the container lists but that could not be decoded."""
    error: str | None = None
    """Why the rest of the video could not be read, if it could not."""


@dataclass
class Parsed:
    """A frame and its labels."""

    name: str
    source: str
    image: np.ndarray
    ids: np.ndarray
    probs: np.ndarray | None
    faces: FaceParse | None
    note: str | None = None
    """Something to tell the user about this image (no face found)."""


def _read_video(path: Path) -> Iterator[Frame | VideoStart | VideoEnd]:
    yield VideoStart(path)
    frames, bad = 0, []
    try:
        for index, image in _video_frames(path, bad):
            yield Frame(f"{path.stem}/{index:06d}", str(path), image)
            frames += 1
    except SegformerError as err:  # the frames decoded before a broken one are still written
        yield VideoEnd(path, frames, bad, str(err))
        return
    yield VideoEnd(path, frames, bad)


def read_inputs(files: Sequence[Path], missing: Sequence[tuple[str, str]] = ()) -> Iterator[object]:
    """The event stream of `files`: a `Frame` per image and per video frame, a `Failure` per unreadable
    input (and per item of `missing`), `VideoStart` / `VideoEnd` around each video's frames and an
    `InputDone` after each input."""
    for item, why in missing:
        yield Failure(item, why)
    for path in files:
        if is_video(path):
            yield from _read_video(path)
        else:
            try:
                yield Frame(path.stem, str(path), load_image(path))
            except SegformerError as err:
                yield Failure(str(path), str(err))
        yield InputDone()


# -- parsing --------------------------------------------------------------------------------------


class BatchParser:
    """Labels of frames, a batch at a time; a face parser tracks the faces through each video.
    `probs`: keep the probabilities; `instances`: a face parser's instance maps."""

    def __init__(
        self, predictor: Predictor, *, probs: bool = False, instances: bool = False, smoothing: float = 0.7
    ) -> None:
        self.predictor = predictor
        self.probs = probs
        self.instances = instances
        self.smoothing = smoothing
        self.video: FaceVideo | None = None  # the face tracker of the video being read

    def start_video(self) -> None:
        if self.predictor.faces:
            self.video = FaceVideo(self.predictor.face_model, smoothing=self.smoothing)

    def end_video(self) -> None:
        self.video = None

    def __call__(self, frames: list[Frame]) -> list[Parsed]:
        probs = self.probs
        if self.predictor.faces:
            return [self._parse_faces(frame) for frame in frames]
        results = self.predictor.predict_arrays([f.image for f in frames], return_probs=probs)
        return [
            Parsed(f.name, f.source, f.image, *(r if probs else (r, None)), None)
            for f, r in zip(frames, results, strict=True)
        ]

    def _parse_faces(self, frame: Frame) -> Parsed:
        options = {"instances": self.instances, "return_probs": self.probs}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoFaceWarning)
            if self.video is not None:
                result = self.video(frame.image, **options)
            else:
                result = self.predictor.parse_faces(frame.image, **options)
        note = str(caught[0].message) if caught and self.video is None else None
        return Parsed(frame.name, frame.source, frame.image, result.ids, result.probs, result, note)


def parse_stream(events: Iterable[object], parser: BatchParser, batch_size: int) -> Iterator[list[object]]:
    """`events` in order, with the frames replaced by their `Parsed` results: lists of up to
    `batch_size` results, and the other events one by one. A video's start and end close the
    batch before them (the frames on either side belong to other videos or stills)."""
    pending: list[Frame] = []
    for event in events:
        if isinstance(event, Frame):
            pending.append(event)
            if len(pending) >= batch_size:
                yield parser(pending)
                pending = []
            continue
        if isinstance(event, (VideoStart, VideoEnd)):
            if pending:
                yield parser(pending)
                pending = []
            parser.start_video() if isinstance(event, VideoStart) else parser.end_video()
        yield [event]
    if pending:
        yield parser(pending)
