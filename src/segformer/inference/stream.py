"""Predicting on files as a stream of events, in input order.

`read_inputs` decodes the files named by `segformer.inference.files.collect_inputs`: a `Frame` per image
and per video frame, a `Failure` per unreadable input, `VideoStart` / `VideoEnd` around each video's
frames and an `InputDone` after each input. `parse_stream` runs a `BatchParser` (the `Predictor`; a face
tracker through each video) on batches of frames and passes everything else through, in order, for a
writer (`segformer.inference.files.PredictionWriter`) to consume.

The three stages can overlap: `prefetch` decodes the next images in a background thread while the
predictor runs, and `BackgroundWriter` writes the last batch's outputs in another. Both hand items over
through small bounded queues, in order, so memory stays bounded (a few batches of images and results)
and the files written are the same bytes as when the stages run one after another.
"""

from __future__ import annotations

import glob
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..data.io import IMAGE_EXTENSIONS, load_image
from ..errors import SegformerError
from ..faces import VIDEO_TTA, FaceParse, FaceVideo, NoFaceWarning
from .predictor import Predictor

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


# Python 3.11's `warnings.catch_warnings` swaps module-wide state: two threads inside one at once can
# leave the other's filters (or its recording) in force for good. Image decoding (which silences Pillow's
# size warning) and the face parser (which records "no face found") take turns through this lock.
WARNINGS_LOCK = threading.Lock()


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


# -- reading --------------------------------------------------------------------------------------


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files named by `inputs` -- files, folders (the images and videos directly inside, sorted)
    and glob patterns (sorted) -- and the inputs that named nothing, with the reason."""
    files: dict[Path, None] = {}  # (ordered, each once)
    missing: list[tuple[str, str]] = []
    media = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in media)
            if not found:
                missing.append((str(item), "folder holds no images or videos"))
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not found:
                missing.append((str(item), "no such file or folder, and no file matches it as a pattern"))
        files.update(dict.fromkeys(found))
    return list(files), missing


def listed_frames(path: Path) -> int:
    """The number of frames a video's container lists (0 when it does not say)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))) if capture.isOpened() else 0
    finally:
        capture.release()


class SafeStream:
    """A text stream whose failures are ignored: progress and messages on a closed or broken stderr
    (``2>&-``, a pipe whose reader has left) never stop the work."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.broken = stream is None

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except (OSError, ValueError):
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.broken = True

    def isatty(self) -> bool:
        return not self.broken and bool(getattr(self.stream, "isatty", lambda: False)())

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"


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
                with WARNINGS_LOCK:
                    image = load_image(path)
            except SegformerError as err:
                yield Failure(str(path), str(err))
            else:
                yield Frame(path.stem, str(path), image)
        yield InputDone()


# -- parsing --------------------------------------------------------------------------------------


class BatchParser:
    """Labels of frames, a batch at a time; a face parser tracks the faces through each video.
    `probs`: keep the probabilities; `instances`: a face parser's instance maps."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        probs: bool = False,
        instances: bool = False,
        smoothing: float = 0.7,
        video_tta: str | None = VIDEO_TTA,
    ) -> None:
        self.predictor = predictor
        self.video_tta = video_tta
        self.probs = probs
        self.instances = instances
        self.smoothing = smoothing
        self.video: FaceVideo | None = None  # the face tracker of the video being read

    def start_video(self) -> None:
        if self.predictor.faces:
            self.video = FaceVideo(self.predictor.face_model, smoothing=self.smoothing, tta=self.video_tta)

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
        with WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
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


# -- overlapping the stages ------------------------------------------------------------------------

_END = object()


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item` into `q`, waiting while it is full unless `stop` is set (then False)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def prefetch(items: Iterable[object], size: int) -> Iterator[object]:
    """`items` in order, produced ahead by a background thread into a queue of at most `size` items.
    An exception of the producer is raised here, where its item would have come; closing this
    iterator (or leaving a loop over it) stops the producer after the item it is making."""
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not _put(q, (item, None), stop):
                    return
            _put(q, (_END, None), stop)
        except BaseException as err:  # handed to the consumer, raised there
            _put(q, (_END, err), stop)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator's cleanup (an open video) runs in its own thread

    thread = threading.Thread(target=produce, name="segformer-read", daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class BackgroundWriter:
    """`handle(item)` for each item `put`, in order, in a background thread; `put` waits while `size`
    items are queued. An exception of `handle` is raised by the next `put` or by `close`."""

    def __init__(self, handle: Callable[[object], None], size: int) -> None:
        self.handle = handle
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="segformer-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            try:
                self.handle(item)
            except BaseException as err:
                self.error = err  # raised in the caller's thread; the rest is dropped
                self.stop.set()
                return

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def put(self, item: object) -> None:
        self._raise()
        _put(self.queue, item, self.stop)
        self._raise()

    def close(self) -> None:
        """Write what is queued (a Ctrl-C loses nothing already predicted), then stop the thread."""
        _put(self.queue, _END, self.stop)
        while self.thread.is_alive():
            self.thread.join(timeout=0.1)  # (a join with a timeout lets a second Ctrl-C through)
        self._raise()
