"""Predict on files, folders, globs and videos, writing label maps, overlays and probabilities.

For an input ``<stem>.<ext>`` the output folder OUT gets:

- ``OUT/<stem>.png``: the label map, a mode-P PNG whose pixel values are class ids and whose palette is
  the label set's colours (a viewer shows colours, a scorer reads ids);
- ``OUT/overlays/<stem>.png`` (`overlay`): the colours blended over the image (a folder of its own, so
  that OUT holds label maps only);
- ``OUT/probs/<stem>.npy`` (`probs`): ``(K, H, W)`` float16 class probabilities.

A video (``.mp4``, ``.avi``, ... read with OpenCV) gives one of each per frame:
``OUT/<stem>/<frame:06d>.png`` (and ``OUT/overlays/<stem>/...``, ``OUT/probs/<stem>/...``).

A predictor that parses faces (`Predictor.faces`, the default for face label sets) finds the faces of
each image (`segformer.faces`); overlays then draw their boxes, and it can also write
``OUT/faces/<stem>.json`` (`faces_json`: boxes, centres, sizes, rolls, scores) and
``OUT/instances/<stem>.png`` (`instances`: 0 outside faces, i + 1 on face i). In a video the faces are
tracked and their labels smoothed over time (`smoothing`); `mp4` also writes the overlays as
``OUT/overlays/<stem>.mp4``.
An unreadable input is reported by name on stderr and skipped; the report counts the failures. A video
whose container lists frames that cannot be decoded is a failure too (its readable frames are written,
under their own frame numbers).

The work is a stream of events in input order (`segformer.inference.stream`): the inputs are decoded,
parsed in batches, and a `PredictionWriter` writes each output kind with a method of its own.
"""

from __future__ import annotations

import glob
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from ..data.io import IMAGE_EXTENSIONS, PNG_MARK, is_segformer_png, overlay, save_image, save_mask
from ..data.labels import LabelSet
from ..errors import SegformerError
from ..faces import FaceParse, VideoWriter, draw_faces, video_fps
from ..fileio import atomic_file, check_output_file, make_dirs
from .predictor import Predictor
from .stream import (
    VIDEO_EXTENSIONS,
    BatchParser,
    Failure,
    InputDone,
    Parsed,
    VideoEnd,
    VideoStart,
    frames_text,
    is_video,
    parse_stream,
    read_inputs,
)


@dataclass
class PredictReport:
    out: Path
    written: int = 0
    """Label maps written (one per image, one per video frame)."""
    seconds: float = 0.0
    """Wall-clock time of reading, predicting and writing (model loading excluded)."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(input, reason) of every input that was skipped or whose outputs were not all written."""


@dataclass(frozen=True)
class Outputs:
    """What `predict_files` writes besides the label maps (see the module docstring)."""

    overlay: bool = False
    probs: bool = False
    faces_json: bool = False
    instances: bool = False
    mp4: bool = False


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files named by `inputs` -- files, folders (the images and videos directly inside, sorted)
    and glob patterns (sorted) -- and the inputs that named nothing, with the reason."""
    files: list[Path] = []
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
        files.extend(p for p in found if p not in files)
    return files, missing


# -- which existing files are ours to replace ----------------------------------------------------------


def _is_our_probs(path: Path) -> bool:
    """Whether `path` is a ``(K, H, W)`` float16 array, as `predict_files` writes."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return array.dtype == np.float16 and array.ndim == 3


def _is_our_faces_json(path: Path) -> bool:
    """Whether `path` is a faces file as `predict_files` writes it."""
    try:
        return set(json.loads(path.read_text())) == {"faces", "whole_image"}
    except (OSError, ValueError, TypeError):
        return False


def _check_output(path: Path) -> Path:
    """Only a file predict wrote itself is ever replaced: never an input, never a user's file."""
    if path.suffix == ".npy":
        return check_output_file(path, _is_our_probs, "probability file")
    if path.suffix == ".json":
        return check_output_file(path, _is_our_faces_json, "faces file")
    return check_output_file(path, is_segformer_png, "label map or overlay")


def _check_outputs(files: list[Path], out: Path, outputs: Outputs) -> None:
    """Refuse before any work when two inputs would write the same output, or an output would
    replace something that is not ours (a video's frames are checked as they are written)."""
    seen: dict[str, Path] = {}
    for path in files:
        key = f"{path.stem}/" if is_video(path) else path.stem
        if key in seen:
            raise SegformerError(
                f"{seen[key]} and {path} would both write {out / path.stem}.png; predict them into "
                "different --out folders"
            )
        seen[key] = path
    make_dirs(out)
    subdirs = [("", ".png")] + [("overlays", ".png")] * outputs.overlay + [("probs", ".npy")] * outputs.probs
    for path in files:
        for sub, ext in subdirs:
            frames = out / sub / path.stem
            if is_video(path) and (frames.exists() or frames.is_symlink()) and not frames.is_dir():
                raise SegformerError(f"{frames}: is a file, not a folder (the frames of {path} go there)")
            if not is_video(path):
                _check_output(out / sub / f"{path.stem}{ext}")


# -- writing -------------------------------------------------------------------------------------------


def _marked_png(array: np.ndarray, mode: str) -> bytes:
    """A PNG of `array` in PIL `mode`, carrying the mark that tells a later run it is ours."""
    import io

    info = PngInfo()
    info.add_text(*PNG_MARK)
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class PredictionWriter:
    """Writes what each `Parsed` frame asks for into `out`, one method per output kind, and keeps the
    report: label maps written, and every input that failed with the reason."""

    def __init__(
        self, out: Path, label_set: LabelSet, outputs: Outputs, report: PredictReport, bar: tqdm
    ) -> None:
        self.out = out
        self.label_set = label_set
        self.outputs = outputs
        self.report = report
        self.bar = bar
        self.movie: VideoWriter | None = None  # the overlays of the video being written, as an mp4
        self.video: Path | None = None

    def handle(self, events: list[object]) -> None:
        """Write / report one item of `parse_stream`."""
        for event in events:
            if isinstance(event, Parsed):
                self.write(event)
            elif isinstance(event, Failure):
                self.fail(event.item, event.reason)
            elif isinstance(event, InputDone):
                self.bar.update(1)
            elif isinstance(event, VideoStart):
                self.start_video(event.path)
            elif isinstance(event, VideoEnd):
                self.end_video(event)
        if self.video is not None and isinstance(events[-1], Parsed):
            self.bar.set_postfix_str(f"{self.video.name} frame {int(events[-1].name[-6:]) + 1}")

    def fail(self, item: str, reason: str) -> None:
        self.report.failed.append((item, reason))
        shown = reason if reason.startswith(item) else f"{item}: {reason}"
        self.bar.write(f"skipped {shown}", file=sys.stderr)

    def write(self, p: Parsed) -> None:
        if p.note is not None:
            self.bar.write(f"{p.name}: {p.note}", file=sys.stderr)
        try:
            self.label_map(p.name, p.ids)
            if self.outputs.overlay or self.movie is not None:
                shown = self.overlay(p)
                if self.movie is not None:
                    self.movie.write(shown)
            if p.faces is not None and self.outputs.faces_json:
                self.faces_json(p.name, p.faces)
            if p.faces is not None and p.faces.instances is not None:
                self.instances(p.name, p.faces.instances)
            if p.probs is not None:
                self.probs(p.name, p.probs)
        except (OSError, SegformerError) as err:
            self.fail(p.name, str(err))
            return
        self.report.written += 1

    def label_map(self, name: str, ids: np.ndarray) -> None:
        save_mask(_check_output(self.out / f"{name}.png"), ids, self.label_set)

    def overlay(self, p: Parsed) -> np.ndarray:
        """The colours over the image (and the faces' boxes), written when asked for; returned for
        the video's mp4."""
        shown = overlay(p.image, p.ids, self.label_set)
        if p.faces is not None:
            shown = draw_faces(shown, p.faces.faces)
        if self.outputs.overlay:
            save_image(_check_output(self.out / "overlays" / f"{p.name}.png"), shown)
        return shown

    def faces_json(self, name: str, parse: FaceParse) -> None:
        boxes = {"faces": parse.faces_json(), "whole_image": parse.whole_image}
        with atomic_file(_check_output(self.out / "faces" / f"{name}.json")) as f:
            f.write(json.dumps(boxes).encode())

    def instances(self, name: str, instances: np.ndarray) -> None:
        with atomic_file(_check_output(self.out / "instances" / f"{name}.png")) as f:
            f.write(_marked_png(instances, "L"))

    def probs(self, name: str, probs: np.ndarray) -> None:
        with atomic_file(_check_output(self.out / "probs" / f"{name}.npy")) as f:
            np.save(f, probs.astype(np.float16))

    def start_video(self, path: Path) -> None:
        self.video = path
        if self.outputs.mp4:
            self.movie = VideoWriter(self.out / "overlays" / f"{path.stem}.mp4", video_fps(path))

    def end_video(self, end: VideoEnd) -> None:
        self.close()
        if end.error is not None:
            self.fail(str(end.path), end.error + (f" after {end.frames} frames" if end.frames else ""))
        elif end.bad:
            self.fail(
                str(end.path),
                f"{len(end.bad)} frame(s) could not be decoded ({frames_text(end.bad)}); "
                f"wrote the other {end.frames}",
            )

    def close(self) -> None:
        self.video = None
        if self.movie is not None:
            self.movie.close()
            self.movie = None


# -- the command -------------------------------------------------------------------------------------


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    overlay_images: bool = False,
    probs: bool = False,
    progress: bool = True,
    faces_json: bool = False,
    instances: bool = False,
    smoothing: float = 0.7,
    mp4: bool = False,
) -> PredictReport:
    """Label maps (and overlays / probabilities) of every image and video frame named by `inputs`
    into `out` (see the module docstring). Files that cannot be read are reported on stderr and
    skipped; an input naming nothing is a failure too. Raises `SegformerError` when no input names
    any file, or when two inputs would write the same output."""
    out = Path(out)
    outputs = Outputs(overlay_images, probs, faces_json, instances, mp4)
    files, missing = collect_inputs(inputs)
    if not files:
        reasons = "; ".join(f"{item}: {why}" for item, why in missing)
        raise SegformerError(f"no input images found ({reasons})")
    _check_outputs(files, out, outputs)
    report = PredictReport(out)
    start = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not progress, dynamic_ncols=True)
    writer = PredictionWriter(out, predictor.label_set, outputs, report, bar)
    parser = BatchParser(predictor, probs=probs, instances=instances, smoothing=smoothing)
    try:
        for events in parse_stream(read_inputs(files, missing), parser, predictor.batch_size):
            writer.handle(events)
    finally:
        writer.close()
        bar.close()
    report.seconds = time.perf_counter() - start
    return report
