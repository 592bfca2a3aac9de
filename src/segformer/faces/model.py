"""The one thing the faces code needs from a model: a function from images to probabilities at the
working size, with the settings it runs with.

Data flows one way: `segformer.inference.predictor.Predictor` builds a `FaceModel` (`FaceModel.of`) and
hands it to `parse_faces` / `FaceVideo`; the faces code never sees the Predictor and never calls back
into it. A test (or another runtime) can pass any function, e.g. one that returns a hand-made parse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..inference.ops import predict_views, view_probs
from ..inference.settings import InferenceSettings
from .landmarks import CELEBAMASK_PARTS, FaceParts

Parse = Callable[[Sequence[np.ndarray], str], Tensor]
"""``parse(images, tta)``: (N, K, S, S) float32 CPU probabilities of N same-size (H, W, 3) uint8 RGB
images, each resized to the working size S x S (aligned crops already are), with test-time
augmentation `tta` (one of `segformer.config.TTA_MODES`)."""


Whole = Callable[[np.ndarray, bool], tuple[np.ndarray, "np.ndarray | None"]]
"""``whole(image, return_probs)``: an (H, W, 3) uint8 RGB image parsed as one aligned crop, at its own
size: (H, W) uint8 class ids and, when asked, (K, H, W) float32 probabilities (what
``Predictor(..., faces=False)`` gives)."""


@dataclass(frozen=True)
class FaceModel:
    """A face parser as the faces code sees it: `parse` (see `Parse`), its `InferenceSettings`
    (working size, TTA, label set) and, optionally, `whole` (see `Whole`): with it an image kept as
    one aligned crop gets exactly the labels of parsing it whole; without, they are pasted back from
    its parse at the working size (within a few pixels in a thousand of those)."""

    parse: Parse
    settings: InferenceSettings
    whole: Whole | None = None

    @property
    def size(self) -> int:
        """Side of the aligned crops (the working size's height)."""
        return self.settings.image_size[0]

    @property
    def tta(self) -> str:
        """The settings' test-time augmentation: what final parses use (checks run without)."""
        return self.settings.tta

    @cached_property
    def parts(self) -> FaceParts:
        """The face parts of the label set, by name (CelebAMask-HQ's when the settings name none)."""
        ls = self.settings.label_set
        return FaceParts.of(ls.class_names) if ls is not None else CELEBAMASK_PARTS

    @property
    def num_classes(self) -> int:
        ls = self.settings.label_set
        return ls.num_classes if ls is not None else 19

    @classmethod
    def of(
        cls,
        net: Any,
        settings: InferenceSettings,
        *,
        flip_perm: Tensor | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        whole: Whole | None = None,
    ) -> FaceModel:
        """The `FaceModel` of a runnable model `net` (a module or an ONNX Runtime session wrapper)
        with `settings`, `batch_size` images per forward pass, and `whole` (see `Whole`)."""
        size = settings.image_size
        by_tta: dict[str, InferenceSettings] = {}

        def parse(images: Sequence[np.ndarray], tta: str) -> Tensor:
            if tta not in by_tta:  # crops are never slid over: resized (a no-op) and run whole
                by_tta[tta] = settings.replace(eval_mode="resize", tta=tta)
            out = []
            with torch.inference_mode():
                for start in range(0, len(images), batch_size):
                    chunk = list(images[start : start + batch_size])
                    views = predict_views(net, chunk, by_tta[tta], device)
                    out.append(view_probs(views, (size[0], size[0]), flip_perm).float().cpu())
            return torch.cat(out)

        return cls(parse, settings, whole)


__all__ = ["FaceModel", "Parse", "Whole"]
