"""Predict on files, folders, globs and videos, writing label maps, overlays and probabilities.

For an input ``<stem>.<ext>`` the output folder OUT gets:

- ``OUT/<stem>.png``: the label map, a mode-P PNG whose pixel values are class ids and whose palette is
  the label set's colours (a viewer shows colours, a scorer reads ids);
- ``OUT/overlays/<stem>.png`` (`overlay`): the colours blended over the image;
- ``OUT/probs/<stem>.npy`` (`probs`): ``(K, H, W)`` float16 class probabilities;
- ``OUT/parts/<stem>/<class>.png`` (`parts`: class names) and ``OUT/cutout/<stem>.png`` (`cutout`): a
  mask per part and the image as RGBA (`segformer.inference.parts`; `soft`, `grow`, `feather`).

A video (``.mp4``, ``.avi``, ... read with OpenCV) gives one of each per frame:
``OUT/<stem>/<frame:06d>.png`` (and ``OUT/overlays/<stem>/...``, ``OUT/probs/<stem>/...``,
``OUT/parts/<stem>/<frame:06d>/<class>.png``, ``OUT/cutout/<stem>/<frame:06d>.png``).

A predictor that parses faces (`Predictor.faces`, the default for face label sets) finds the faces of
each image (`segformer.faces`); overlays then draw their boxes, and it can also write
``OUT/faces/<stem>.json`` (`faces_json`: boxes, centres, sizes, rolls, scores) and
``OUT/instances/<stem>.png`` (`instances`: 0 outside faces, i + 1 on face i). A video's faces are tracked,
parsed in one pass (`video_tta`; None: the predictor's TTA) and smoothed over time (`smoothing`); `mp4`
also writes ``OUT/overlays/<stem>.mp4``. Asking a predictor that does not localise faces for either is an
error.
An unreadable input is reported by name on stderr and skipped; the report counts the failures. A video
whose container lists frames that cannot be decoded is a failure too (its readable frames are written,
under their own frame numbers).

Nothing of the user's is changed (`segformer.fileio.OutputFolder`): a file in OUT is replaced only when
OUT's manifest records that predict wrote it, an input is never written over, and one predict at a time
writes into OUT. Every output is checked before any work starts. `skip_existing` resumes a killed run.

The work is a stream of events in input order (`segformer.inference.stream`): the inputs are decoded in
a background thread, parsed in batches, and a `PredictionWriter` writes each output kind with a method
of its own in another thread (``overlap=False``: one after another; the same bytes either way). Under
``torchrun`` each process takes its share of the inputs (`segformer.distributed.shard`)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from .. import distributed
from ..data.io import PNG_MARK, encode_image, encode_mask, overlay
from ..data.labels import LabelSet
from ..errors import SegformerError
from ..faces import VIDEO_TTA, VideoWriter, draw_faces, is_face_label_set, video_fps
from ..fileio import OutputFolder, atomic_file
from .parts import background_id, cutout, parse_names, part_ids, part_masks
from .predictor import Predictor
from .stream import (  # noqa: F401 (collect_inputs: also imported from here)
    VIDEO_EXTENSIONS,
    BackgroundWriter,
    BatchParser,
    Failure,
    InputDone,
    Parsed,
    SafeStream,
    VideoEnd,
    VideoStart,
    collect_inputs,
    frames_text,
    is_video,
    listed_frames,
    parse_stream,
    prefetch,
    read_inputs,
)

COMMAND = "predict"
"""The name the manifest records our files under."""


@dataclass
class PredictReport:
    out: Path
    written: int = 0
    """Label maps written (one per image, one per video frame)."""
    files: int = 0
    """Files written, label maps included."""
    skipped: int = 0
    """Inputs whose outputs an earlier run had written (`skip_existing`)."""
    seconds: float = 0.0
    """Wall-clock time of reading, predicting and writing (model loading excluded)."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(input, reason) of every input that was skipped or whose outputs were not all written."""

    @property
    def failed_inputs(self) -> int:
        """Inputs with at least one failure (a video with two bad frames counts once)."""
        return len({item for item, _ in self.failed})

    @classmethod
    def merge(cls, reports: Sequence[PredictReport]) -> PredictReport:
        """One report of the shares of several processes (the slowest one's time)."""
        total = cls(reports[0].out, seconds=max(r.seconds for r in reports))
        for r in reports:
            total.written += r.written
            total.files += r.files
            total.skipped += r.skipped
            total.failed += r.failed
        return total

    def summary(self) -> str:
        """One line: what was written where, how fast, and how many inputs failed."""
        others = f" and {self.files - self.written} other file(s)" if self.files > self.written else ""
        rate = f"{self.written / max(self.seconds, 1e-9):.2f} images/s"
        skipped = f"; skipped {self.skipped} input(s) written before" if self.skipped else ""
        failed = f"; {self.failed_inputs} input(s) failed (listed above)" if self.failed else ""
        return (
            f"wrote {self.written} label map(s){others} to {self.out} in {self.seconds:.1f} s ({rate})"
            f"{skipped}{failed}"
        )


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


def _check_names(files: list[Path], out: Path) -> None:
    """Two inputs of one stem would write the same outputs: refused before any work."""
    seen: dict[str, Path] = {}
    for path in files:
        key = f"{path.stem}/" if is_video(path) else path.stem
        if key in seen:
            raise SegformerError(
                f"{seen[key]} and {path} would both write {out / path.stem}.png; predict them into "
                "different --out folders"
            )
        seen[key] = path


# -- writing -------------------------------------------------------------------------------------------


def _marked_png(array: np.ndarray, mode: str) -> bytes:
    """A PNG of `array` in PIL `mode`, carrying segformer's mark (as `segformer.data.io` writes them)."""
    import io

    info = PngInfo()
    info.add_text(*PNG_MARK)
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class PredictionWriter:
    """Writes what each `Parsed` frame asks for into the output folder, one method per output kind,
    each file claimed and recorded through `folder` (the output policy), and keeps the report exact:
    every file written is counted, every output that could not be written is a failure of its input
    (the other outputs of that frame are still written). `faces`: whether the frames come from a face
    parser that localises faces (faces files and instance maps)."""

    def __init__(
        self,
        folder: OutputFolder,
        label_set: LabelSet,
        outputs: Outputs,
        report: PredictReport,
        faces: bool = False,
    ) -> None:
        self.folder = folder
        self.out = folder.path
        self.label_set = label_set
        self.outputs = outputs
        self.report = report
        self.faces = faces
        self.sources: set[Path] = set()  # the input files, resolved
        self.stream = SafeStream(sys.stderr)
        self.bar = tqdm(disable=True)  # the caller's progress bar, once the work starts
        self.movie: VideoWriter | None = None  # the overlays of the video being written, as an mp4
        self.video: Path | None = None

    # where each output goes

    def path(self, kind: str, name: str, part: str = "") -> Path:
        """The file output `kind` ("label", "overlays", "faces", "instances", "probs", "parts",
        "cutout", "mp4") of the frame or video `name` goes to; `part`: the class of a part mask."""
        if kind == "label":
            return self.out / f"{name}.png"
        if kind == "parts":
            return self.out / "parts" / name / f"{part.replace('/', '_')}.png"
        if kind == "mp4":
            return self.out / "overlays" / f"{name}.mp4"
        return self.out / kind / f"{name}{ {'probs': '.npy', 'faces': '.json'}.get(kind, '.png') }"

    def paths(self, name: str) -> list[Path]:
        """Every file the frame `name` writes."""
        o = self.outputs
        kinds = ["label"] + ["overlays"] * o.overlay + ["faces"] * (self.faces and o.faces_json)
        kinds += ["instances"] * (self.faces and o.instances) + ["probs"] * o.probs + ["cutout"] * o.cutout
        return [self.path(k, name) for k in kinds] + [self.path("parts", name, c) for c in o.parts]

    def input_paths(self, path: Path, frames: int = 1) -> list[Path]:
        """Every file input `path` writes (for a video: of its first `frames` frames, and its mp4)."""
        if not is_video(path):
            return self.paths(path.stem)
        mp4 = [self.path("mp4", path.stem)] * self.outputs.mp4
        return mp4 + [p for i in range(frames) for p in self.paths(f"{path.stem}/{i:06d}")]

    def plan(self, files: Sequence[Path], skip_existing: bool = False) -> list[Path]:
        """The inputs to predict, once every output of theirs may be written (`OutputFolder.claim`,
        a one-line error otherwise; a video: its first frame's, the others as they come). With
        `skip_existing`, inputs whose every output the manifest records as ours are left out (a video:
        every frame its container lists)."""
        todo = []
        for path in files:
            if skip_existing:
                frames = listed_frames(path) if is_video(path) else 1
                if frames and all(self.folder.owns(p) for p in self.input_paths(path, frames)):
                    self.report.skipped += 1
                    continue
            for output in self.input_paths(path):
                self.claim(output)
            todo.append(path)
        return todo

    def claim(self, path: Path) -> Path:
        """`path` once the output policy allows writing it (`OutputFolder.claim`: the named inputs and
        the folders named as inputs; the files a glob matched are checked here, in a set)."""
        self.folder.claim(path)
        if path.resolve() in self.sources:  # (an earlier output of ours, read as an input now)
            raise SegformerError(f"{path}: is the command's input; segformer never writes over its input")
        return path

    def _save(self, path: Path, write: Callable[[BinaryIO], object]) -> None:
        """`write` into `path` atomically, once the output policy allows it, and record it as ours."""
        with atomic_file(self.claim(path)) as f:
            write(f)
        self.folder.record(path)
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

    def say(self, text: str) -> None:
        self.bar.write(text, file=self.stream)

    def fail(self, item: str, reason: str, verb: str = "skipped") -> None:
        self.report.failed.append((item, reason))
        self.say(f"{verb} {reason if reason.startswith(item) else f'{item}: {reason}'}")

    def write(self, p: Parsed) -> None:
        if p.note is not None:
            self.say(f"{p.name}: {p.note}")
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
            # OpenCV writes the mp4 as it goes: under a temporary name (ending .mp4, which OpenCV
            # needs), renamed into place when complete, so a killed run leaves no half video.
            final = self.claim(self.path("mp4", path.stem))
            self.movie = VideoWriter(final.with_name(f".{final.stem}.{os.getpid()}.tmp.mp4"), video_fps(path))
            self.movie.final = final  # type: ignore[attr-defined]

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

    def close(self, complete: bool = True) -> None:
        """Finish the video being written (`complete`: its mp4 goes into place, else it is removed)."""
        self.video = None
        movie, self.movie = self.movie, None
        if movie is None:
            return
        movie.close()
        try:
            if complete and movie.count:
                os.replace(movie.path, movie.final)  # type: ignore[attr-defined]
                self.folder.record(movie.final)  # type: ignore[attr-defined]
                self.report.files += 1
        except (OSError, SegformerError) as err:
            self.fail(str(movie.path), str(err), "not written:")
        finally:
            movie.path.unlink(missing_ok=True)


# -- the command -------------------------------------------------------------------------------------


def _run(
    events: Iterable[object], parser: BatchParser, writer: PredictionWriter, batch_size: int, overlap: bool
) -> None:
    """Read, parse and write: with `overlap`, the reading and the writing in threads of their own,
    a batch ahead and a batch behind the parsing (memory: a few batches of images and results)."""
    if not overlap:
        for item in parse_stream(events, parser, batch_size):
            writer.handle(item)
        return
    background = BackgroundWriter(writer.handle, size=2)
    try:
        for item in parse_stream(prefetch(events, size=batch_size + 1), parser, batch_size):
            background.put(item)
    finally:
        background.close()


@contextmanager
def _output_folder(out: Path, inputs: Sequence[str | Path]) -> Iterator[OutputFolder]:
    """OUT under the output policy, shared by the processes of a distributed run (the first holds
    the writer lock for all)."""
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise SegformerError(f"{out}: is a file, not a folder")
    # The files and folders named (not every file of a folder or glob: the writer checks those in a set).
    given = [Path(i) for i in inputs if Path(i).exists()]

    def open_folder(shared: bool) -> OutputFolder:
        return OutputFolder(out, COMMAND, given, overwrite=True, shared=shared)

    with distributed.shared_output(open_folder) as folder:
        yield folder


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
    video_tta: str | None = VIDEO_TTA,
    mp4: bool = False,
    parts: str | Sequence[str] = (),
    cutout: bool = False,
    soft: bool = False,
    grow: int = 0,
    feather: float = 0,
    skip_existing: bool = False,
    overlap: bool = True,
) -> PredictReport:
    """Label maps (and overlays, probabilities, part masks, cut-outs) of every image and video frame
    named by `inputs` into `out` (see the module docstring). Files that cannot be read are reported on
    stderr and skipped; an input naming nothing is a failure too. Raises `SegformerError` when no input
    names any file, when two inputs would write the same output, when an output may not be written
    (`segformer.fileio.OutputFolder`), or when an output cannot be made for this predictor (faces files
    without face localisation, an unknown part, a cut-out without a background class). Under torchrun,
    each process predicts its share and returns the report of all."""
    out = Path(out)
    names = tuple(parse_names(parts)) if parts else ()
    outputs = Outputs(overlay_images, probs, faces_json, instances, mp4, names, cutout, soft, grow, feather)
    outputs.check(predictor.label_set, predictor.faces)
    files, missing = collect_inputs(inputs)
    if not files:
        reasons = "; ".join(f"{item}: {why}" for item, why in missing)
        raise SegformerError(f"no input images found ({reasons})")
    _check_names(files, out)
    report = PredictReport(out)
    with _output_folder(out, inputs) as folder:
        writer = PredictionWriter(folder, predictor.label_set, outputs, report, faces=predictor.faces)
        writer.sources = {path.resolve() for path in files}
        todo = writer.plan(distributed.shard(files), skip_existing)
        parser = BatchParser(predictor, probs=outputs.needs_probs, instances=instances,
                             smoothing=smoothing, video_tta=video_tta)  # fmt: skip
        start = time.perf_counter()
        shown = progress and distributed.is_main()  # one bar: the first process's share
        bar = tqdm(total=len(todo), unit="img", desc="predict", disable=not shown, dynamic_ncols=True,
                   file=writer.stream)  # fmt: skip
        writer.bar = bar
        events = read_inputs(todo, missing if distributed.is_main() else ())
        try:
            _run(events, parser, writer, predictor.batch_size, overlap)
        finally:
            writer.close(complete=False)
            bar.close()
        report.seconds = time.perf_counter() - start
    return PredictReport.merge(distributed.all_gather(report))
