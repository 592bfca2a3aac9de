"""The model's side of the server: parse a batch of decoded images on the model thread, and turn a parse
into what ``POST /v1/parse`` answers.

Everything here calls the library the command line uses: the label map of an image is
`segformer.data.io.encode_mask` of the class ids `segformer predict` computes for it (a face parser's
`Predictor.parse_faces`, any other model's `Predictor.predict_arrays`), so the PNG bytes are the ones
`segformer predict` writes; the overlay is `predict --overlay`'s (faces' boxes drawn on it).
"""

from __future__ import annotations

import base64
import io
import warnings
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
    """`run(items, answer)` for `segformer.serve.batcher.Batcher`: whole-image jobs share one
    `predict_arrays` call (same-size images share forward passes, `batch_size` at a time); face jobs are
    parsed one by one, as `segformer predict` does."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def __call__(self, items: Sequence[ParseJob], answer: Answer) -> None:
        from ..faces import NoFaceWarning

        whole = [i for i, job in enumerate(items) if not job.faces]
        if whole:
            try:
                results = self.predictor.predict_arrays([items[i].image for i in whole], faces=False)
            except Exception as err:
                for i in whole:
                    answer(i, None, err)
            else:
                for i, ids in zip(whole, results, strict=True):
                    answer(i, Parsed(ids, [], True), None)
        for i, job in enumerate(items):
            if not job.faces:
                continue
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", NoFaceWarning)
                    result = self.predictor.parse_faces(job.image)
            except Exception as err:
                answer(i, None, err)
                continue
            warning = next((str(w.message) for w in caught if issubclass(w.category, NoFaceWarning)), None)
            answer(i, Parsed(result.ids, list(result.faces), result.whole_image, warning), None)

    def warmup(self) -> None:
        """One small parse of each kind the server runs, so that the first request does not pay for
        loading kernels and the face detector."""
        size = self.predictor.image_size
        blank = np.full((*size, 3), 128, np.uint8)
        jobs = [ParseJob(blank, False)] + [ParseJob(blank, True)] * bool(self.predictor.faces)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
    """``output=parts``: the summary, the label map and overlay PNGs and one mask PNG (0 / 255) per
    class present, all base64."""
    out = summary(parsed, label_set)
    out["label_map"] = _b64(label_png(parsed, label_set))
    out["overlay"] = _b64(overlay_png(image, parsed, label_set))
    out["masks"] = {
        str(c["id"]): _b64(_grey_png((parsed.ids == c["id"]).astype(np.uint8) * 255)) for c in out["classes"]
    }
    return out
