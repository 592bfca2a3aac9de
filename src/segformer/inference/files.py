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
"""

from __future__ import annotations

import glob
import json
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from ..data.io import IMAGE_EXTENSIONS, PNG_MARK, is_segformer_png, load_image, overlay, save_image, save_mask
from ..errors import SegformerError
from ..faces import FaceParse, FaceVideo, NoFaceWarning, VideoWriter, draw_faces, video_fps
from ..fileio import atomic_file, check_output_file, make_dirs
from .predictor import Predictor

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass
class PredictReport:
    out: Path
    written: int = 0
    """Label maps written (one per image, one per video frame)."""
    seconds: float = 0.0
    """Wall-clock time of reading, predicting and writing (model loading excluded)."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(input, reason) of every input that was skipped."""


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


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


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


def _frames_text(numbers: list[int]) -> str:
    """Frame numbers as ranges: ``3, 7-9``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


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
    files, missing = collect_inputs(inputs)
    if not files:
        reasons = "; ".join(f"{item}: {why}" for item, why in missing)
        raise SegformerError(f"no input images found ({reasons})")
    seen: dict[str, Path] = {}
    for path in files:
        key = f"{path.stem}/" if _is_video(path) else path.stem
        if key in seen:
            raise SegformerError(
                f"{seen[key]} and {path} would both write {out / path.stem}.png; predict them into "
                "different --out folders"
            )
        seen[key] = path
    # Refuse before any work when an output would replace something that is not ours (a video's
    # frames are checked as they are written).
    make_dirs(out)
    subdirs = [("", ".png")] + [("overlays", ".png")] * overlay_images + [("probs", ".npy")] * probs
    for path in files:
        for sub, ext in subdirs:
            frames = out / sub / path.stem
            if _is_video(path) and (frames.exists() or frames.is_symlink()) and not frames.is_dir():
                raise SegformerError(f"{frames}: is a file, not a folder (the frames of {path} go there)")
            if not _is_video(path):
                _check_output(out / sub / f"{path.stem}{ext}")
    report = PredictReport(out)
    start = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not progress, dynamic_ncols=True)

    def fail(item: str, reason: str) -> None:
        report.failed.append((item, reason))
        bar.write(f"skipped {reason if reason.startswith(item) else f'{item}: {reason}'}", file=sys.stderr)

    for item, why in missing:
        fail(item, why)
    pending: list[tuple[str, np.ndarray]] = []  # (output name without .png, image)
    video: FaceVideo | None = None  # the face tracker of the video being read
    movie: VideoWriter | None = None

    def parse(images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None, FaceParse | None]]:
        if not predictor.faces:
            results = predictor.predict_arrays(images, return_probs=probs)
            return [(*(r if probs else (r, None)), None) for r in results]
        parses = []
        for (name, _), image in zip(pending, images, strict=True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NoFaceWarning)
                if video is not None:
                    result = video(image, instances=instances, return_probs=probs)
                else:
                    result = predictor.parse_faces(image, instances=instances, return_probs=probs)
            if caught and video is None:
                bar.write(f"{name}: {caught[0].message}", file=sys.stderr)
            parses.append((result.ids, result.probs, result))
        return parses

    def flush() -> None:
        results = parse([image for _, image in pending])
        for (name, image), (mask, prob, found) in zip(pending, results, strict=True):
            try:
                save_mask(_check_output(out / f"{name}.png"), mask, predictor.label_set)
                if overlay_images or movie is not None:
                    shown = overlay(image, mask, predictor.label_set)
                    if found is not None:
                        shown = draw_faces(shown, found.faces)
                    if overlay_images:
                        save_image(_check_output(out / "overlays" / f"{name}.png"), shown)
                    if movie is not None:
                        movie.write(shown)
                if found is not None and faces_json:
                    boxes = {"faces": found.faces_json(), "whole_image": found.whole_image}
                    with atomic_file(_check_output(out / "faces" / f"{name}.json")) as f:
                        f.write(json.dumps(boxes).encode())
                if found is not None and found.instances is not None:
                    info = PngInfo()
                    info.add_text(*PNG_MARK)
                    with atomic_file(_check_output(out / "instances" / f"{name}.png")) as f:
                        Image.fromarray(found.instances, "L").save(f, format="PNG", pnginfo=info)
                if prob is not None:
                    with atomic_file(_check_output(out / "probs" / f"{name}.npy")) as f:
                        np.save(f, prob.astype(np.float16))
            except (OSError, SegformerError) as err:
                fail(name, str(err))
                continue
            report.written += 1
        pending.clear()

    for path in files:
        if not _is_video(path):
            try:
                pending.append((path.stem, load_image(path)))
            except SegformerError as err:
                fail(str(path), str(err))
            bar.update(1)
            if len(pending) >= predictor.batch_size:
                flush()
            continue
        flush()
        frames, bad = 0, []
        if predictor.faces:
            video = FaceVideo(predictor, smoothing=smoothing)
        if mp4:
            movie = VideoWriter(out / "overlays" / f"{path.stem}.mp4", video_fps(path))
        try:
            for index, frame in _video_frames(path, bad):
                pending.append((f"{path.stem}/{index:06d}", frame))
                frames += 1
                if len(pending) >= predictor.batch_size:
                    flush()
                    bar.set_postfix_str(f"{path.name} frame {index + 1}")
            flush()
            if bad:
                fail(
                    str(path),
                    f"{len(bad)} frame(s) could not be decoded ({_frames_text(bad)}); "
                    f"wrote the other {frames}",
                )
        except SegformerError as err:
            flush()  # the frames decoded before a broken one are still written
            fail(str(path), str(err) + (f" after {frames} frames" if frames else ""))
        finally:
            video = None
            if movie is not None:
                movie.close()
                movie = None
        bar.update(1)
    flush()
    bar.close()
    report.seconds = time.perf_counter() - start
    return report
