"""Predict on files, folders, globs and videos, writing label maps, overlays and probabilities.

For an input ``<stem>.<ext>`` the output folder OUT gets:

- ``OUT/<stem>.png``: the label map, a mode-P PNG whose pixel values are class ids and whose palette is
  the label set's colours (a viewer shows colours, a scorer reads ids);
- ``OUT/overlays/<stem>.png`` (`overlay`): the colours blended over the image (a folder of its own, so
  that OUT holds label maps only);
- ``OUT/probs/<stem>.npy`` (`probs`): ``(K, H, W)`` float16 class probabilities;
- ``OUT/parts/<stem>/<class>.png`` (`parts`: class names): a grey mask per part, 255 inside and 0
  outside (`soft`: the class's probability as 0-255), grown and feathered (`grow`, `feather`) as
  `segformer.inference.parts.part_masks` makes them;
- ``OUT/cutout/<stem>.png`` (`cutout`): the image as RGBA, its alpha on every class but the background
  (`segformer.inference.parts.cutout`, with the same `soft`, `grow` and `feather`).

A video (``.mp4``, ``.avi``, ... read with OpenCV) gives one of each per frame:
``OUT/<stem>/<frame:06d>.png`` (and ``OUT/overlays/<stem>/...``, ``OUT/probs/<stem>/...``,
``OUT/parts/<stem>/<frame:06d>/<class>.png``, ``OUT/cutout/<stem>/<frame:06d>.png``).

A predictor that parses faces (`Predictor.faces`, the default for face label sets) finds the faces of
each image (`segformer.faces`); overlays then draw their boxes, and it can also write
``OUT/faces/<stem>.json`` (`faces_json`: boxes, centres, sizes, rolls, scores) and
``OUT/instances/<stem>.png`` (`instances`: 0 outside faces, i + 1 on face i). In a video the faces are
tracked and their labels smoothed over time (`smoothing`); `mp4` also writes the overlays as
``OUT/overlays/<stem>.mp4``. Asking a predictor that does not localise faces for either is an error.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from ..data.io import IMAGE_EXTENSIONS, PNG_MARK, encode_image, encode_mask, is_segformer_png, overlay
from ..data.labels import LabelSet
from ..errors import SegformerError
from ..faces import VideoWriter, draw_faces, is_face_label_set, video_fps
from ..fileio import atomic_file, check_output_file, make_dirs
from .parts import background_id, cutout, parse_names, part_ids, part_masks
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
    files: int = 0
    """Files written, label maps included."""
    seconds: float = 0.0
    """Wall-clock time of reading, predicting and writing (model loading excluded)."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(input, reason) of every input that was skipped or whose outputs were not all written."""

    @property
    def failed_inputs(self) -> int:
        """Inputs with at least one failure (a video with two bad frames counts once)."""
        return len({item for item, _ in self.failed})


@dataclass(frozen=True)
class Outputs:
    """What `predict_files` writes besides the label maps (see the module docstring)."""

    overlay: bool = False
    probs: bool = False
    faces_json: bool = False
    instances: bool = False
    mp4: bool = False
    parts: tuple[str, ...] = ()
    cutout: bool = False
    soft: bool = False
    grow: int = 0
    feather: float = 0

    @property
    def needs_probs(self) -> bool:
        return self.probs or (self.soft and bool(self.parts or self.cutout))

    def check(self, label_set: LabelSet, faces: bool) -> None:
        """Refuse, in one line, what cannot be written for `label_set` (`faces`: whether the predictor
        localises faces) rather than ignoring it."""
        for flag, asked in (("--faces-json", self.faces_json), ("--instances", self.instances)):
            if asked and not faces:
                why = (
                    f"label set {label_set.name} has no face classes"
                    if not is_face_label_set(label_set)
                    else "this predictor parses each image as one crop (--whole-image, or no face detector)"
                )
                raise SegformerError(f"{flag}: only a face parser that finds faces writes it, and {why}")
        if self.parts:
            part_ids(label_set, self.parts)
        if self.cutout:
            background_id(label_set)
        edits = [
            f for f, on in (("--soft", self.soft), ("--grow", self.grow), ("--feather", self.feather)) if on
        ]
        if edits and not (self.parts or self.cutout):
            raise SegformerError(
                f"{', '.join(edits)}: shape the --parts masks and the --cutout alpha; ask for one"
            )


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
    return check_output_file(path, is_segformer_png, "label map, overlay, mask or cut-out")


def _check_outputs(files: list[Path], out: Path, writer: PredictionWriter) -> None:
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
    sources = {path.resolve() for path in files}
    for path in files:
        if not is_video(path):
            for output in writer.paths(path.stem):
                if output.resolve() in sources:
                    raise SegformerError(f"{output}: is one of the inputs; predict into another --out folder")
                _check_output(output)
            continue
        for output in writer.paths(f"{path.stem}/{0:06d}"):
            for folder in output.relative_to(out).parents[:-1]:
                if ((out / folder).exists() or (out / folder).is_symlink()) and not (out / folder).is_dir():
                    raise SegformerError(
                        f"{out / folder}: is a file, not a folder (the frames of {path} go there)"
                    )


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
    report exact: every file written is counted, every output that could not be written is a failure
    of its input (the other outputs of that frame are still written). `faces`: whether the frames come
    from a face parser that localises faces (faces files and instance maps)."""

    def __init__(
        self,
        out: Path,
        label_set: LabelSet,
        outputs: Outputs,
        report: PredictReport,
        faces: bool = False,
    ) -> None:
        self.out = out
        self.label_set = label_set
        self.outputs = outputs
        self.report = report
        self.bar = tqdm(disable=True)  # the caller's progress bar, once the work starts
        self.faces = faces
        self.movie: VideoWriter | None = None  # the overlays of the video being written, as an mp4
        self.video: Path | None = None

    # where each output goes

    def path(self, kind: str, name: str, part: str = "") -> Path:
        """The file output `kind` ("label", "overlays", "faces", "instances", "probs", "parts",
        "cutout") of the frame `name` goes to; `part`: the class of a part mask."""
        if kind == "label":
            return self.out / f"{name}.png"
        if kind == "parts":
            return self.out / "parts" / name / f"{part.replace('/', '_')}.png"
        return self.out / kind / f"{name}{ {'probs': '.npy', 'faces': '.json'}.get(kind, '.png') }"

    def paths(self, name: str) -> list[Path]:
        """Every file the frame `name` writes."""
        o = self.outputs
        kinds = ["label"] + ["overlays"] * o.overlay + ["faces"] * (self.faces and o.faces_json)
        kinds += ["instances"] * (self.faces and o.instances) + ["probs"] * o.probs + ["cutout"] * o.cutout
        return [self.path(k, name) for k in kinds] + [self.path("parts", name, c) for c in o.parts]

    def _save(self, path: Path, write: Callable[[BinaryIO], object]) -> None:
        """`write` into `path` atomically, unless `path` is something that is not ours."""
        with atomic_file(_check_output(path)) as f:
            write(f)
        self.report.files += 1

    # the stream

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

    def fail(self, item: str, reason: str, verb: str = "skipped") -> None:
        self.report.failed.append((item, reason))
        shown = reason if reason.startswith(item) else f"{item}: {reason}"
        self.bar.write(f"{verb} {shown}", file=sys.stderr)

    def write(self, p: Parsed) -> None:
        if p.note is not None:
            self.bar.write(f"{p.name}: {p.note}", file=sys.stderr)
        steps = [self.label_map, self.overlay, self.faces_json, self.instances, self.probs]
        for step in [*steps, self.parts, self.cutout]:
            try:
                step(p)
            except (OSError, SegformerError) as err:
                self.fail(p.source, str(err), "not written:")

    # one method per output kind

    def label_map(self, p: Parsed) -> None:
        data = encode_mask(p.ids, self.label_set, name=p.name)
        self._save(self.path("label", p.name), lambda f: f.write(data))
        self.report.written += 1

    def overlay(self, p: Parsed) -> None:
        """The colours over the image (and the faces' boxes), as a PNG and / or a frame of the mp4."""
        if not (self.outputs.overlay or self.movie is not None):
            return
        shown = overlay(p.image, p.ids, self.label_set)
        if p.faces is not None:
            shown = draw_faces(shown, p.faces.faces)
        if self.movie is not None:
            self.movie.write(shown)
        if self.outputs.overlay:
            data = encode_image(shown, "PNG")
            self._save(self.path("overlays", p.name), lambda f: f.write(data))

    def faces_json(self, p: Parsed) -> None:
        if p.faces is not None and self.outputs.faces_json:
            boxes = {"faces": p.faces.faces_json(), "whole_image": p.faces.whole_image}
            self._save(self.path("faces", p.name), lambda f: f.write(json.dumps(boxes).encode()))

    def instances(self, p: Parsed) -> None:
        if p.faces is not None and p.faces.instances is not None:
            data = _marked_png(p.faces.instances, "L")
            self._save(self.path("instances", p.name), lambda f: f.write(data))

    def probs(self, p: Parsed) -> None:
        if self.outputs.probs and p.probs is not None:
            self._save(self.path("probs", p.name), lambda f: np.save(f, p.probs.astype(np.float16)))

    def parts(self, p: Parsed) -> None:
        o = self.outputs
        if not o.parts:
            return
        soft = p.probs if o.soft else None
        for name, mask in part_masks(p.ids, self.label_set, o.parts, soft, o.grow, o.feather).items():
            data = _marked_png(mask, "L")
            self._save(self.path("parts", p.name, name), lambda f, data=data: f.write(data))

    def cutout(self, p: Parsed) -> None:
        o = self.outputs
        if o.cutout:
            rgba = cutout(p.image, p.ids, self.label_set, probs=p.probs if o.soft else None, grow=o.grow,
                          feather=o.feather)  # fmt: skip
            data = _marked_png(rgba, "RGBA")
            self._save(self.path("cutout", p.name), lambda f: f.write(data))

    # videos

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
            if self.movie.count:
                self.report.files += 1
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
    parts: str | Sequence[str] = (),
    cutout: bool = False,
    soft: bool = False,
    grow: int = 0,
    feather: float = 0,
) -> PredictReport:
    """Label maps (and overlays, probabilities, part masks, cut-outs) of every image and video frame
    named by `inputs` into `out` (see the module docstring). Files that cannot be read are reported on
    stderr and skipped; an input naming nothing is a failure too. Raises `SegformerError` when no input
    names any file, when two inputs would write the same output, or when an output cannot be made for
    this predictor (faces files without face localisation, an unknown part, a cut-out without a
    background class)."""
    out = Path(out)
    names = tuple(parse_names(parts)) if parts else ()
    outputs = Outputs(overlay_images, probs, faces_json, instances, mp4, names, cutout, soft, grow, feather)
    outputs.check(predictor.label_set, predictor.faces)
    files, missing = collect_inputs(inputs)
    if not files:
        reasons = "; ".join(f"{item}: {why}" for item, why in missing)
        raise SegformerError(f"no input images found ({reasons})")
    report = PredictReport(out)
    writer = PredictionWriter(out, predictor.label_set, outputs, report, faces=predictor.faces)
    _check_outputs(files, out, writer)
    parser = BatchParser(predictor, probs=outputs.needs_probs, instances=instances, smoothing=smoothing)
    start = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not progress, dynamic_ncols=True)
    writer.bar = bar
    try:
        for events in parse_stream(read_inputs(files, missing), parser, predictor.batch_size):
            writer.handle(events)
    finally:
        writer.close()
        bar.close()
    report.seconds = time.perf_counter() - start
    return report
