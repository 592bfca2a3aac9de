"""The model's side of the server: parse a batch of decoded images on the model thread, and turn a parse
into what ``POST /v1/parse`` answers.

Everything here is what `segformer predict` runs: images are parsed by its
`segformer.inference.stream.BatchParser` (a face parser's `Predictor.parse_faces`, any other model's
`Predictor.predict_arrays`), the label map is `segformer.data.io.encode_mask` of the class ids, so the
PNG bytes are the ones `segformer predict` writes; the overlay is `predict --overlay`'s (the faces'
boxes drawn on it), the part masks `predict --parts`'s (`segformer.inference.parts.part_masks`).
"""

from __future__ import annotations

import base64
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..data.io import encode_image, encode_mask, overlay
from ..data.labels import LabelSet
from .batcher import Answer

OUTPUTS = ("label", "overlay", "json", "parts")


@dataclass
class ParseJob:
    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    faces: bool
    """Find the faces and parse each at the training framing (else: the image as one crop)."""


@dataclass
class Parsed:
    ids: np.ndarray
    """(H, W) uint8 class ids."""
    faces: list[Any]
    """The `segformer.faces.Face` boxes the labels came from (none for a whole-image parse)."""
    whole_image: bool
    warning: str | None = None


class ModelRunner:
    """`run(items, answer)` for `segformer.serve.batcher.Batcher`: the jobs of a batch are parsed by
    `segformer predict`'s `BatchParser`, those with face finding by the predictor's and the others by a
    whole-image view of it (what ``predict --whole-image`` runs), `batch_size` at a time."""

    def __init__(self, predictor: Any) -> None:
        from ..inference.stream import BatchParser

        self.predictor = predictor
        whole = copy.copy(predictor)  # the same model and settings, parsing each image as one crop
        whole.faces = False
        self.parsers = {True: BatchParser(predictor), False: BatchParser(whole)}

    def __call__(self, items: Sequence[ParseJob], answer: Answer) -> None:
        from ..inference.stream import Frame

        batch_size = self.predictor.batch_size
        for faces in (False, True):
            indices = [i for i, job in enumerate(items) if job.faces == faces]
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                try:
                    results = self.parsers[faces]([Frame("upload", "upload", items[i].image) for i in chunk])
                except Exception as err:
                    for i in chunk:
                        answer(i, None, err)
                    continue
                for i, r in zip(chunk, results, strict=True):
                    found = r.faces
                    answer(
                        i,
                        Parsed(
                            r.ids, list(found.faces) if found else [], not found or found.whole_image, r.note
                        ),
                        None,
                    )

    def warmup(self) -> None:
        """One small parse of each kind the server runs, so that the first request does not pay for
        loading kernels (or exporting to ONNX Runtime) and the face detector."""
        size = self.predictor.image_size
        blank = np.full((*size, 3), 128, np.uint8)
        jobs = [ParseJob(blank, False)] + [ParseJob(blank, True)] * bool(self.predictor.faces)
        self(jobs, lambda i, result, error: None)


def label_png(parsed: Parsed, label_set: LabelSet) -> bytes:
    """The label map PNG, byte for byte what `segformer predict` writes."""
    return encode_mask(parsed.ids, label_set)


def overlay_png(image: np.ndarray, parsed: Parsed, label_set: LabelSet) -> bytes:
    """The overlay `segformer predict --overlay` writes: colours over the photo, faces' boxes drawn."""
    shown = overlay(image, parsed.ids, label_set)
    if parsed.faces:
        from ..faces import draw_faces

        shown = draw_faces(shown, parsed.faces)
    return encode_image(shown, "PNG")


def _grey_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def summary(parsed: Parsed, label_set: LabelSet) -> dict[str, Any]:
    """``output=json``: the faces found, and the area of each class present."""
    h, w = parsed.ids.shape
    counts = np.bincount(parsed.ids.ravel(), minlength=label_set.num_classes)
    classes = [
        {
            "id": int(i),
            "name": label_set.class_names[i] if i < label_set.num_classes else str(i),
            "color": list(label_set.palette[i]) if i < label_set.num_classes else None,
            "pixels": int(n),
            "fraction": round(float(n) / (h * w), 6),
        }
        for i, n in enumerate(counts)
        if n
    ]
    out: dict[str, Any] = {
        "width": w,
        "height": h,
        "whole_image": parsed.whole_image,
        "faces": [face.to_dict() for face in parsed.faces],
        "classes": classes,
    }
    if parsed.warning:
        out["warning"] = parsed.warning
    return out


def parts(image: np.ndarray, parsed: Parsed, label_set: LabelSet) -> dict[str, Any]:
    """``output=parts``: the summary, the label map and overlay PNGs and the mask (0 / 255) of each class
    present, keyed by class id, all base64 PNGs."""
    from ..inference.parts import part_masks

    out = summary(parsed, label_set)
    out["label_map"] = _b64(label_png(parsed, label_set))
    out["overlay"] = _b64(overlay_png(image, parsed, label_set))
    present = [c for c in out["classes"] if c["id"] < label_set.num_classes]
    masks = part_masks(parsed.ids, label_set, [c["name"] for c in present])
    out["masks"] = {str(c["id"]): _b64(_grey_png(masks[c["name"]])) for c in present}
    return out
