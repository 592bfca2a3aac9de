"""The `Predictor`: class ids (and probabilities) at each input's own size, from any model we can load.

It is a facade over three things: loading (`segformer.checkpoint.load`, or an ``.onnx`` file run by
`segformer.inference.onnx.OnnxRuntimeModel`), the model's `InferenceSettings` (working size, normalisation,
mode, label set, TTA), and the tensor operations of `segformer.inference.ops`. It adds input handling: paths,
PIL images and numpy arrays, batches of any sizes, and a `SegformerError` for every input it cannot
take.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
from .onnx import AutoRuntime, OnnxRuntimeModel
from .ops import (
    check_inference_memory,
    class_ids,
    flip_permutation,
    predict_views,
    remove_small_regions,
    view_class_ids,
    view_probs,
)
from .settings import BACKENDS, RUNTIME_OPTIONS, InferenceSettings, model_settings, split_overrides

if TYPE_CHECKING:
    from ..faces import FaceModel, FaceParse

Input = str | Path | Image.Image | np.ndarray


def _source(model: str | Path) -> str:
    """Where the settings of a model file come from, for error messages."""
    path = Path(model)
    return str(path / CONFIG_FILE) if is_model_dir(path) else str(path)


def _load(model: Any, device: torch.device) -> tuple[nn.Module | OnnxRuntimeModel, str | None]:
    """The model `model` names (a module as is) and where its settings were read, for errors."""
    if isinstance(model, (str, Path)):
        if Path(model).suffix == ".onnx":
            return OnnxRuntimeModel(model, device=str(device)), str(model)
        return load(model), _source(model)
    if not isinstance(model, nn.Module):
        raise SegformerError(
            f"cannot predict with a {type(model).__name__}: pass a model, a model directory or file, or a "
            "pretrained tag"
        )
    if not isinstance(getattr(model, "config", None), ModelConfig):
        raise SegformerError(f"{type(model).__name__} has no ModelConfig in .config: not a segformer model")
    return model, None


def _check_float(values: np.ndarray, what: str) -> None:
    """Float pixels must lie in [0, 1] (0-255 floats are not silently clipped to white); NaN fails."""
    if values.size:
        lo, hi = float(np.min(values)), float(np.max(values))  # NaN propagates: refused below
        if not (lo >= 0.0 and hi <= 1.0):
            raise SegformerError(
                f"{what} with values in [{lo:g}, {hi:g}]: expected [0, 1] (divide 0-255 values by 255, "
                "or pass uint8)"
            )


def _pil_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode as (H, W, 3) uint8 RGB (`to_rgb`), its values checked first."""
    what = f"PIL image of mode {image.mode} ({image.width}x{image.height})"
    if 0 in image.size:
        raise SegformerError(f"{what}: empty image")
    try:
        if image.mode == "F":
            _check_float(np.asarray(image), what)
        elif image.mode == "I":  # 32-bit integers, read as 16-bit grey like I;16 files
            values = np.asarray(image)
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi > 65535:
                raise SegformerError(f"{what} with values in [{lo}, {hi}]: expected 16-bit grey, 0-65535")
        return to_rgb(image)
    except (OSError, ValueError) as err:  # an unreadable pixel stream, a mode PIL cannot convert
        raise SegformerError(f"{what}: cannot convert to RGB ({err})") from None


class Predictor:
    """Class ids (and optionally probabilities) at each input's own size, from any model we can load.

    >>> predictor = segformer.Predictor("runs/face/best", tta="flip")
    >>> mask = predictor("face.jpg")                              # (H, W) uint8 class ids
    >>> masks = predictor([pil_image, rgb_array, "b.png"])        # a batch of any sizes
    >>> mask, probs = predictor("face.jpg", return_probs=True)    # probs: (K, H, W) float32

    `model` is a loaded model, anything `segformer.load` reads (native or HF directory, ``.pth``) or
    an ``.onnx`` file written by `segformer.inference.onnx.export_onnx` (run with onnxruntime). Inputs are
    paths, PIL images of any mode or numpy arrays (RGB, as `segformer.data.io.to_rgb` takes them; grey,
    alpha, 16-bit and EXIF-rotated images are converted the way files are read; float pixels must lie
    in [0, 1]); anything else is a `SegformerError` naming the input.

    The `InferenceSettings` are `settings` if given, else those the model carries (what training
    stores; an export stores them too), else the defaults: working size 512, ImageNet mean/std,
    ``resize`` mode, no TTA, and the label set `resolve_label_set` picks. `overrides` change their
    fields when not None (``image_size``, ``eval_mode``, ``tta``, ``scales``, ``label_set``, ``mean``,
    ``std``, ``postprocess``, ``min_area``; ``mode`` and ``img_size`` are old spellings;
    ``postprocess="small-regions"`` cleans the class ids, not `probs`), and set how the model runs:

    - ``device``: default the model's own device (CPU for files); ``"auto"`` picks CUDA when present.
    - ``batch_size``: images grouped by size run this many at a time (default 1 on a CPU, 8 on a GPU)
      under `torch.inference_mode`. The batch size can move logits by float rounding (~1e-7:
      convolution kernels are chosen per batch shape), which only matters at near-tied pixels.
    - ``backend``: ``"auto"`` (default) runs a model on a CPU with ONNX Runtime where onnxruntime is
      installed (exported in memory at the first call and checked against PyTorch:
      `segformer.inference.onnx.AutoRuntime`; `backend` says what runs, `backend_reason` why PyTorch
      does), else with PyTorch; ``"torch"`` or ``"onnxruntime"`` force one.
    - ``faces``: for face label sets (`segformer.faces.default_faces`) each image is treated as a
      photo: its faces are found, parsed at the framing the model was trained on and pasted back, the
      rest is background (`segformer.faces`); ``faces=False`` parses every image as one aligned crop.

    Class ids are computed a band of rows at a time (`segformer.inference.ops.view_class_ids`), so a
    huge photo needs memory for its pixels, not for its full-size probabilities (unless
    `return_probs`). A working size whose forward pass cannot fit in the memory available is refused
    when the Predictor is built.
    """

    def __init__(
        self, model: nn.Module | str | Path, settings: InferenceSettings | None = None, **overrides: Any
    ) -> None:
        changes, runtime = split_overrides(overrides, RUNTIME_OPTIONS, "Predictor")
        backend = runtime.get("backend", "auto")
        if backend not in BACKENDS:
            raise SegformerError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        tune_cpu_allocator()
        device = runtime.get("device")
        if device is None:  # a model object stays where it is; files load on the CPU
            params = next(model.parameters(), None) if isinstance(model, nn.Module) else None
            device = params.device if params is not None else "cpu"
        self.device = resolve_device(device)
        model, source = _load(model, self.device)
        self.config: ModelConfig = model.config
        self.meta: dict[str, Any] = dict(getattr(model, "meta", None) or {})
        self.inference_settings = model_settings(model, settings, source, **changes)
        # On a CPU, one image at a time is faster than batches (measured at 512 px: 6.0 vs 5.0
        # images/s with PyTorch, 11.0 vs 6.9 with ONNX Runtime); a GPU wants batches.
        batch_size = runtime.get("batch_size", 8 if self.device.type == "cuda" else 1)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SegformerError(f"batch size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        check_inference_memory(self.config, self.inference_settings, batch_size, self.device)
        self.flip_perm = flip_permutation(self.label_set.flip_pairs, self.config.num_classes)
        self.model, self.net = self._runner(model, backend)
        from ..faces import default_faces

        # Face parsers learn from aligned crops: in a photo, find the faces and parse each at that framing.
        faces = runtime.get("faces")
        self.faces = default_faces(self.label_set) if faces is None else bool(faces)

    def _runner(self, model: nn.Module | OnnxRuntimeModel, backend: str) -> tuple[Any, Any]:
        """(the model, what runs it): an ``.onnx`` file's session, the model exported to ONNX Runtime,
        the exactly equivalent fused graph of a SegFormer (`segformer.models.fuse`), or either of the
        last two chosen at the first call (``auto`` on a CPU: `AutoRuntime`)."""
        self._reason: str | None = None
        if isinstance(model, OnnxRuntimeModel):
            return model, model
        if backend == "onnxruntime":
            runtime = OnnxRuntimeModel.from_model(model, str(self.device), settings=self.inference_settings)
            return runtime, runtime
        model = model.to(self.device).eval()
        net = maybe_fuse(model)
        if backend == "auto" and self.device.type == "cpu":
            return model, AutoRuntime(model, net, self.inference_settings)
        if backend == "auto":
            self._reason = f"the model runs on {self.device.type}: ONNX Runtime is used on a CPU only"
        return model, net

    @property
    def backend(self) -> str:
        """What runs the model: ``onnxruntime`` or ``torch`` (with ``auto``: known after the first call,
        or found out here by exporting the model)."""
        if isinstance(self.net, AutoRuntime):
            return self.net.backend
        return "onnxruntime" if isinstance(self.net, OnnxRuntimeModel) else "torch"

    @property
    def backend_reason(self) -> str | None:
        """Why PyTorch runs the model although the backend is ``auto`` (None otherwise)."""
        if isinstance(self.net, AutoRuntime):
            return self.net.reason if self.backend == "torch" else None
        return self._reason

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
    def eval_mode(self) -> str:
        return self.inference_settings.eval_mode

    @property
    def mode(self) -> str:
        """`eval_mode` by its old name."""
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
        """An input as (H, W, 3) uint8 RGB (files through `load_image`, arrays/PIL through `to_rgb`),
        or a one-line `SegformerError` naming what is wrong with it."""
        if isinstance(item, (str, Path)):
            return load_image(item)
        if isinstance(item, Image.Image):
            return _pil_rgb(item)
        if isinstance(item, np.ndarray):
            if item.dtype.kind == "f":
                _check_float(item, "float image")
            return to_rgb(item)
        what = "None" if item is None else f"a {type(item).__name__}"
        raise SegformerError(f"cannot predict on {what}: pass a path, a PIL image or a numpy array")

    def __call__(
        self, inputs: Input | Sequence[Input], *, return_probs: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray] | list:
        return self.predict(inputs, return_probs=return_probs)

    @property
    def face_model(self) -> FaceModel:
        """What the faces code sees of this predictor: a function from aligned crops to probabilities
        (this model, normalisation and batch size), the settings, and the whole-image parse
        (`faces=False`) for images kept as one crop (`segformer.faces.FaceModel`)."""
        from ..faces import FaceModel

        def whole(image: np.ndarray, return_probs: bool) -> tuple[np.ndarray, np.ndarray | None]:
            result = self.predict_arrays([image], return_probs=return_probs, faces=False)[0]
            return result if return_probs else (result, None)

        return FaceModel.of(
            self.net, self.inference_settings, flip_perm=self.flip_perm, device=self.device,
            batch_size=self.batch_size, whole=whole,
        )  # fmt: skip

    def parse_faces(self, image: Input, **options: Any) -> FaceParse:
        """Every face of one image found, parsed at the training framing and pasted back (ids,
        faces, optionally probabilities and an instance map): `segformer.faces.parse_faces`."""
        from ..faces import parse_faces

        return parse_faces(self.face_model, self.read(image), **options)

    def predict(
        self, inputs: Input | Sequence[Input], *, return_probs: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray] | list:
        """Class ids ``(H, W)`` uint8 of one input, or a list of them for a list (or a 4-D array) of
        inputs; with `return_probs`, ``(ids, probs)`` pairs with probs ``(K, H, W)`` float32."""
        if isinstance(inputs, np.ndarray):
            single = inputs.ndim <= 3
        else:
            single = not isinstance(inputs, (list, tuple, Iterator))
        items = [inputs] if single else list(inputs)  # type: ignore[arg-type]
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
                    views = predict_views(self.net, [images[i] for i in chunk], s, self.device)
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


__all__ = ["BACKENDS", "InferenceSettings", "Predictor"]
