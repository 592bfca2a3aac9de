"""The `Predictor`: class ids (and probabilities) at each input's own size, from any model we can load.

It is a facade over three things: loading (`segformer.checkpoint.load`, or an ``.onnx`` file run by
`segformer.inference.onnx.OnnxRuntimeModel`), the model's `InferenceSettings` (working size, normalisation,
mode, label set, TTA), and the tensor operations of `segformer.inference.ops`. It adds input handling: paths,
PIL images and numpy arrays, batches of any sizes, and a `SegformerError` for every input it cannot
take.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..checkpoint import CONFIG_FILE, is_model_dir, load
from ..config import ModelConfig
from ..data.io import load_image, to_rgb
from ..data.labels import LabelSet
from ..devices import resolve_device
from ..errors import SegformerError
from ..models.fuse import maybe_fuse
from ..runtime import tune_cpu_allocator
from .onnx import OnnxRuntimeModel
from .ops import (
    class_ids,
    flip_permutation,
    predict_views,
    remove_small_regions,
    view_class_ids,
    view_probs,
)
from .settings import InferenceSettings, model_settings

if TYPE_CHECKING:
    from ..faces import FaceParse

BACKENDS = ("torch", "onnxruntime")

Input = str | Path | Image.Image | np.ndarray


def _source(model: str | Path) -> str:
    """Where the settings of a model file come from, for error messages."""
    path = Path(model)
    return str(path / CONFIG_FILE) if is_model_dir(path) else str(path)


class Predictor:
    """Class ids (and optionally probabilities) at each input's own size, from any model we can load.

    >>> predictor = segformer.Predictor("runs/face/best", tta="flip")
    >>> mask = predictor("face.jpg")                              # (H, W) uint8 class ids
    >>> masks = predictor([pil_image, rgb_array, "b.png"])        # a batch of any sizes
    >>> mask, probs = predictor("face.jpg", return_probs=True)    # probs: (K, H, W) float32

    `model` is a loaded model, anything `segformer.load` reads (native or HF directory, ``.pth``) or
    an ``.onnx`` file written by `segformer.inference.onnx.export_onnx` (run with onnxruntime). Inputs are
    paths, PIL images or numpy arrays (RGB, as `segformer.data.io.to_rgb` takes them; grey, alpha,
    16-bit and EXIF-rotated images are converted the way files are read; float arrays must lie in
    [0, 1]).

    The `InferenceSettings` are `settings` if given, else those the model carries (what training
    stores; an export stores them too), else the defaults: working size 512, ImageNet mean/std,
    ``resize`` mode, no TTA, and the label set `resolve_label_set` picks. The keyword arguments
    `image_size`, `mode`, `tta`, `scales`, `label_set`, `mean`, `std`, `postprocess` and `min_area`
    override them when not None (``postprocess="small-regions"`` cleans the class ids, not `probs`).
    Images are grouped by size and run `batch_size` at a time (default 1 on a CPU, 8 on a GPU) under
    `torch.inference_mode`. The batch size can move logits by float rounding (~1e-7: convolution
    kernels are chosen per batch shape), which only matters at near-tied pixels.
    ``backend="onnxruntime"`` exports the model to ONNX (in memory) and runs that instead.
    `device` defaults to the model's own device (CPU for files); ``"auto"`` picks CUDA when present.
    Class ids are computed a band of rows at a time (`segformer.inference.ops.view_class_ids`), so a
    huge photo
    needs memory for its pixels, not for its full-size probabilities (unless `return_probs`).
    For face label sets (`segformer.faces.default_faces`) each image is treated as a photo: its
    faces are found, parsed at the framing the model was trained on and pasted back, the rest is
    background (`segformer.faces`); ``faces=False`` parses every image as one aligned crop.
    """

    def __init__(
        self,
        model: nn.Module | str | Path,
        *,
        device: str | torch.device | None = None,
        image_size: int | Sequence[int] | None = None,
        mode: str | None = None,
        tta: str | None = None,
        scales: Sequence[float] | None = None,
        label_set: LabelSet | str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        postprocess: str | None = None,
        min_area: float | None = None,
        batch_size: int | None = None,
        backend: str = "torch",
        settings: InferenceSettings | None = None,
        faces: bool | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise SegformerError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        tune_cpu_allocator()
        if device is None:  # a model object stays where it is; files load on the CPU
            params = next(model.parameters(), None) if isinstance(model, nn.Module) else None
            device = params.device if params is not None else "cpu"
        self.device = resolve_device(device)
        source = None
        if isinstance(model, (str, Path)):
            source = _source(model)
            if Path(model).suffix == ".onnx":
                model = OnnxRuntimeModel(model, device=str(self.device))
                backend = "onnxruntime"
            else:
                model = load(model)
        self.config: ModelConfig = model.config
        self.meta: dict[str, Any] = dict(getattr(model, "meta", None) or {})
        self.inference_settings = model_settings(
            model,
            settings,
            source,
            image_size=image_size,
            eval_mode=mode,
            tta=tta,
            scales=scales,
            label_set=label_set,
            mean=mean,
            std=std,
            postprocess=postprocess,
            min_area=min_area,
        )
        # On a CPU, one image at a time is faster than batches (measured at 512 px: 6.0 vs 5.0
        # images/s with PyTorch, 11.0 vs 6.9 with ONNX Runtime); a GPU wants batches.
        if batch_size is None:
            batch_size = 8 if self.device.type == "cuda" else 1
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SegformerError(f"batch size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.flip_perm = flip_permutation(self.label_set.flip_pairs, self.config.num_classes)
        self.backend = backend
        if backend == "onnxruntime" and isinstance(model, nn.Module):
            model = OnnxRuntimeModel.from_model(model, str(self.device), settings=self.inference_settings)
        elif isinstance(model, nn.Module):
            model = model.to(self.device).eval()
        self.model = model
        # What runs: the exactly equivalent fused graph of a SegFormer (`segformer.models.fuse`).
        self.net = maybe_fuse(model) if isinstance(model, nn.Module) else model
        from ..faces import default_faces

        # Face parsers learn from aligned crops: in a photo, find the faces and parse each at that framing.
        self.faces = default_faces(self.label_set) if faces is None else bool(faces)

    # The settings one by one (read-only: build another Predictor to change them).
    @property
    def image_size(self) -> tuple[int, int]:
        return self.inference_settings.image_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.inference_settings.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.inference_settings.std

    @property
    def mode(self) -> str:
        return self.inference_settings.eval_mode

    @property
    def tta(self) -> str:
        return self.inference_settings.tta

    @property
    def scales(self) -> tuple[float, ...]:
        return self.inference_settings.scales

    @property
    def label_set(self) -> LabelSet:
        assert self.inference_settings.label_set is not None  # resolved in __init__
        return self.inference_settings.label_set

    def settings(self) -> dict[str, Any]:
        """Everything that decides the masks besides the weights, as plain data
        (`InferenceSettings.to_dict`: what exports store)."""
        return self.inference_settings.to_dict()

    @staticmethod
    def read(item: Input) -> np.ndarray:
        """An input as (H, W, 3) uint8 RGB (files through `load_image`, arrays/PIL through `to_rgb`)."""
        if isinstance(item, (str, Path)):
            return load_image(item)
        if isinstance(item, np.ndarray) and item.dtype.kind == "f" and item.size:
            lo, hi = float(np.min(item)), float(np.max(item))  # NaN propagates: refused below
            if not (lo >= 0.0 and hi <= 1.0):
                raise SegformerError(
                    f"float image with values in [{lo:g}, {hi:g}]: expected [0, 1] "
                    "(divide 0-255 values by 255, or pass uint8)"
                )
        if isinstance(item, (Image.Image, np.ndarray)):
            return to_rgb(item)
        raise SegformerError(
            f"cannot predict on a {type(item).__name__}: pass a path, a PIL image or a numpy array"
        )

    def __call__(
        self, inputs: Input | Sequence[Input], *, return_probs: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray] | list:
        return self.predict(inputs, return_probs=return_probs)

    def parse_faces(self, image: Input, **options: Any) -> FaceParse:
        """Every face of one image found, parsed at the training framing and pasted back (ids,
        faces, optionally probabilities and an instance map): `segformer.faces.parse_faces`."""
        from ..faces import parse_faces

        return parse_faces(self, self.read(image), **options)

    def predict(
        self, inputs: Input | Sequence[Input], *, return_probs: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray] | list:
        """Class ids ``(H, W)`` uint8 of one input, or a list of them for a list (or a 4-D array) of
        inputs; with `return_probs`, ``(ids, probs)`` pairs with probs ``(K, H, W)`` float32."""
        single = isinstance(inputs, (str, Path, Image.Image)) or (
            isinstance(inputs, np.ndarray) and inputs.ndim <= 3
        )
        items = [inputs] if single else list(inputs)
        images = []
        for i, item in enumerate(items):
            try:
                images.append(self.read(item))
            except SegformerError as err:
                raise SegformerError(str(err) if single else f"input {i}: {err}") from None
        results = self.predict_arrays(images, return_probs=return_probs)
        return results[0] if single else results

    def predict_arrays(
        self, images: Sequence[np.ndarray], *, return_probs: bool = False, faces: bool | None = None
    ) -> list:
        """`predict` on (H, W, 3) uint8 RGB arrays, in order; same-size images share batches.
        `faces` (default: the predictor's) parses each face at its training framing instead of
        treating each image as one crop."""
        if self.faces if faces is None else faces:
            parses = [self.parse_faces(image, return_probs=return_probs) for image in images]
            return [(p.ids, p.probs) if return_probs else p.ids for p in parses]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
                raise SegformerError(
                    f"image {i}: expected (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}"
                )
            groups.setdefault(image.shape[:2], []).append(i)
        s = self.inference_settings
        results: list[Any] = [None] * len(images)
        for size, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                with torch.inference_mode():
                    views = predict_views(
                        self.net,
                        [images[i] for i in chunk],
                        s.image_size,
                        mean=s.mean,
                        std=s.std,
                        mode=s.eval_mode,
                        tta=s.tta,
                        scales=s.scales,
                        device=self.device,
                    )
                    if return_probs:
                        probs = view_probs(views, size, self.flip_perm)
                        ids = class_ids(probs).to(torch.uint8).cpu().numpy()
                        probs_np = probs.float().cpu().numpy()
                    else:
                        ids = view_class_ids(views, size, self.flip_perm).to(torch.uint8).cpu().numpy()
                        probs_np = None
                    del views
                if s.postprocess == "small-regions":
                    ids = [remove_small_regions(m, s.min_area) for m in ids]
                for j, i in enumerate(chunk):
                    results[i] = (ids[j], probs_np[j]) if probs_np is not None else ids[j]
        return results


__all__ = ["BACKENDS", "Predictor"]
