"""From images to class probabilities: resizing, test-time augmentation and sliding windows.

The functions here work on normalised float batches ``(B, C, H, W)`` and return probabilities at
an explicitly requested output size; evaluation and the Predictor both build on them.

- Flip TTA averages the softmax of the image and of its mirror image; the mirror's probabilities are
  flipped back **and their left/right channels swapped** (l_eye <-> r_eye, ...), otherwise the flip
  would teach the average that a left eye is a right eye.
- Multi-scale TTA runs the model at several scales of the working size and averages the
  probabilities after resizing them to the output size.
- Sliding windows cover an image larger than the training size with overlapping crops of the
  training size and average the overlapping logits.

On top of these, `preprocess` / `predict_batch` are the single preprocessing path (normalise, then a
bilinear resize of the float tensor to the working size) shared by evaluation, the `Predictor` and the
standalone CE7454 ``run.py`` (which is generated from this source), so all three give the same masks;
`Predictor` adds input handling (paths, PIL, numpy, batches of any sizes), label sets and backends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .config import ModelConfig
from .data.io import load_image, to_rgb
from .data.labels import LabelSet, bit_palette, get_label_set, list_label_sets
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from .errors import SegformerError
from .models.fuse import maybe_fuse
from .runtime import tune_cpu_allocator

TTA_MODES = ("none", "flip", "scales", "flip+scales")
DEFAULT_SCALES = (0.75, 1.0, 1.25, 1.5)
MODES = ("resize", "slide")
BACKENDS = ("torch", "onnxruntime")
DEFAULT_IMAGE_SIZE = 512


def flip_permutation(flip_pairs: Sequence[tuple[int, int]], num_classes: int) -> Tensor:
    """Channel order that swaps each left/right pair (identity elsewhere)."""
    perm = list(range(num_classes))
    for a, b in flip_pairs:
        if a < num_classes and b < num_classes:
            perm[a], perm[b] = b, a
    return torch.tensor(perm, dtype=torch.long)


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False), a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def slide_logits(model: nn.Module, x: Tensor, window: int, overlap: float = 1 / 3) -> Tensor:
    """Logits at x's size from overlapping `window` x `window` crops (averaged where they overlap).

    Images smaller than the window in a dimension are run whole in that dimension.
    """
    b, _, h, w = x.shape
    stride = max(1, int(window * (1 - overlap)))

    def starts(n: int) -> list[int]:
        if n <= window:
            return [0]
        count = math.ceil((n - window) / stride) + 1
        return sorted({min(i * stride, n - window) for i in range(count)})

    out: Tensor | None = None
    hits = torch.zeros(1, 1, h, w, device=x.device)
    for top in starts(h):
        for left in starts(w):
            crop = x[..., top : top + window, left : left + window]
            logits = model(crop)  # at the crop's size
            if out is None:
                out = torch.zeros(b, logits.shape[1], h, w, device=x.device, dtype=logits.dtype)
            out[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += logits
            hits[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += 1
    assert out is not None
    return out / hits


def predict_probs(
    model: nn.Module,
    x: Tensor,
    out_size: Sequence[int],
    *,
    tta: str = "none",
    flip_perm: Tensor | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    window: int | None = None,
) -> Tensor:
    """Softmax probabilities ``(B, K, *out_size)`` for a normalised batch `x`.

    `x` is already at the model's working size (or, with `window`, at full size for sliding-window
    inference with `window`-sized crops). `tta` is one of `TTA_MODES`; flip TTA needs `flip_perm`
    from `flip_permutation` (identity when the label set has no left/right pairs).
    """
    if tta not in TTA_MODES:
        raise SegformerError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_MODES)}")

    def run(inp: Tensor) -> Tensor:
        logits = slide_logits(model, inp, window) if window else model(inp)
        return resize(logits.float(), out_size).softmax(1)

    views = [1.0]
    if "scales" in tta:
        views = list(scales)
    total: Tensor | None = None
    n = 0
    h, w = x.shape[-2:]
    for s in views:
        inp = x if s == 1.0 else resize(x, (max(1, round(h * s)), max(1, round(w * s))))
        probs = run(inp)
        total = probs if total is None else total + probs
        n += 1
        if "flip" in tta:
            flipped = run(inp.flip(-1)).flip(-1)
            if flip_perm is not None:
                flipped = flipped[:, flip_perm.to(flipped.device)]
            total = total + flipped
            n += 1
    assert total is not None
    return total if n == 1 else total / n


def class_ids(probs: Tensor) -> Tensor:
    """``probs.argmax(1)`` (int64, ties to the lowest id), computed class by class: the same ids at a
    fraction of the time, since torch reduces over the strided channel axis slowly (35 -> 15 ms for
    19 x 512 x 512 on CPU)."""
    best = probs[:, 0]
    ids = torch.zeros(best.shape, dtype=torch.long, device=probs.device)
    for k in range(1, probs.shape[1]):
        better = probs[:, k] > best  # strictly: an exact tie keeps the lower id, as argmax does
        ids.masked_fill_(better, k)
        best = torch.where(better, probs[:, k], best)
    return ids


def hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` as ``(H, W)``."""
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def preprocess(
    image: np.ndarray,
    size: int | Sequence[int] | None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32: normalised, then resized to `size` (None: kept).

    The resize works on the normalised float tensor (`resize`: bilinear, half-pixel centres, no
    antialiasing -- the sampling of `cv2.INTER_LINEAR`, which training uses). Bilinear interpolation
    treats every image of a batch alike, so this per-image result is bit for bit what `predict_batch`
    feeds the model for the same image in any batch.
    """
    x = normalize(image, mean, std)[None]  # (1, 3, H, W)
    return (x if size is None else resize(x, hw(size)))[0]


def predict_batch(
    model: nn.Module,
    images: Sequence[np.ndarray],
    size: int | Sequence[int],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    mode: str = "resize",
    tta: str = "none",
    flip_perm: Tensor | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Softmax probabilities ``(B, K, H, W)`` of same-size (H, W, 3) uint8 RGB `images`, at their size.

    ``mode="resize"`` runs the model at the working `size` and resizes the logits back;
    ``mode="slide"`` keeps the full resolution and runs `size` x `size` windows (`slide_logits`).
    """
    if mode not in MODES:
        raise SegformerError(f"unknown inference mode {mode!r}; choose from {', '.join(MODES)}")
    h, w = hw(size)
    if mode == "slide" and h != w:
        raise SegformerError(f"sliding windows are square; got working size {h}x{w}")
    x = torch.stack([preprocess(im, None if mode == "slide" else (h, w), mean, std) for im in images])
    window = h if mode == "slide" else None
    out_size = images[0].shape[:2]
    return predict_probs(
        model, x.to(device), out_size, tta=tta, flip_perm=flip_perm, scales=scales, window=window
    )


class Preprocess:
    """Evaluation transform: ``(image, mask) -> (preprocess(image, size), mask)``, the mask kept at its
    own resolution; ``size=None`` keeps the image's resolution too (sliding-window evaluation)."""

    def __init__(
        self,
        size: int | Sequence[int] | None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = None if size is None else hw(size)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None = None, rng: Any = None
    ) -> tuple[Tensor, Tensor | None]:
        m = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()
        return preprocess(image, self.size, self.mean, self.std), m


# -- label sets of models that do not name one --


def label_set_dict(label_set: LabelSet) -> dict[str, Any]:
    """A label set as plain data (stored in ONNX metadata and CE7454 checkpoints)."""
    return {
        "name": label_set.name,
        "class_names": list(label_set.class_names),
        "palette": [list(c) for c in label_set.palette],
        "flip_pairs": [list(p) for p in label_set.flip_pairs],
    }


def resolve_label_set(spec: LabelSet | str | dict[str, Any] | None, config: ModelConfig) -> LabelSet:
    """The label set a model predicts in.

    `spec` is a name, a `LabelSet` or its `label_set_dict` form. Without one (HF directories, NVlabs
    ``.pth``), a shipped label set with the model's class count is chosen by its class names (at least
    half must match), or, for a model without class names, by the count alone: 19 -> celebamask,
    150 -> ade20k. Anything else gets a generic set: the model's class names (or ``class_i``) and
    the PASCAL VOC colour map, with no left/right pairs.
    """
    k = config.num_classes
    if isinstance(spec, dict):
        label_set = LabelSet(
            name=str(spec["name"]),
            class_names=tuple(str(n) for n in spec["class_names"]),
            palette=tuple((int(r), int(g), int(b)) for r, g, b in spec["palette"]),
            flip_pairs=tuple((int(a), int(b)) for a, b in spec.get("flip_pairs", ())),
        )
    elif spec is not None:
        label_set = get_label_set(spec)
    else:
        shipped = [get_label_set(n) for n in list_label_sets()]
        candidates = [ls for ls in shipped if ls.num_classes == k]
        names = [n.strip().lower() for n in config.class_names]
        label_set = None
        if names:
            matches = [
                (sum(a == b for a, b in zip(ls.class_names, names, strict=True)), ls) for ls in candidates
            ]
            best = max(matches, key=lambda m: m[0], default=(0, None))
            label_set = best[1] if best[0] * 2 >= k else None
        elif candidates:
            label_set = candidates[0]
        if label_set is None:
            label_set = LabelSet(
                name="generic",
                class_names=tuple(config.class_names) or tuple(f"class_{i}" for i in range(k)),
                palette=bit_palette(k),
            )
    if label_set.num_classes != k:
        raise SegformerError(
            f"label set {label_set.name} has {label_set.num_classes} classes but the model predicts {k}"
        )
    return label_set


# -- the Predictor --

Input = str | Path | Image.Image | np.ndarray


class Predictor:
    """Class ids (and optionally probabilities) at each input's own size, from any model we can load.

    >>> predictor = segformer.Predictor("runs/face/best", tta="flip")
    >>> mask = predictor("face.jpg")                              # (H, W) uint8 class ids
    >>> masks = predictor([pil_image, rgb_array, "b.png"])        # a batch of any sizes
    >>> mask, probs = predictor("face.jpg", return_probs=True)    # probs: (K, H, W) float32

    `model` is a loaded model, anything `segformer.load` reads (native or HF directory, ``.pth``) or
    an ``.onnx`` file written by `segformer.export.export_onnx` (run with onnxruntime). Inputs are
    paths, PIL images or numpy arrays (RGB, as `segformer.data.io.to_rgb` takes them; grey, alpha,
    16-bit and EXIF-rotated images are converted the way files are read).

    Settings left as None come from the model's meta (what training stores: ``image_size``,
    ``mean``/``std``, ``eval_mode``, ``label_set``; an export adds ``tta``/``scales``), otherwise the
    defaults: working size 512, ImageNet mean/std, ``resize`` mode, no TTA, and the label set
    `resolve_label_set` picks. Images are grouped by size and run `batch_size` at a time (default 1 on
    a CPU, 8 on a GPU) under `torch.inference_mode`. The batch size can move logits by float rounding
    (~1e-7: convolution kernels are chosen per batch shape), which only matters at near-tied pixels.
    ``backend="onnxruntime"`` exports the model to ONNX (in memory) and runs that instead.
    `device` defaults to the model's own device (CPU for files); ``"auto"`` picks CUDA when present.
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
        batch_size: int | None = None,
        backend: str = "torch",
    ) -> None:
        if backend not in BACKENDS:
            raise SegformerError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        tune_cpu_allocator()
        if device is None:  # a model object stays where it is; files load on the CPU
            params = next(model.parameters(), None) if isinstance(model, nn.Module) else None
            device = params.device if params is not None else "cpu"
        elif device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if isinstance(model, (str, Path)) and Path(model).suffix == ".onnx":
            from .export import OnnxRuntimeModel

            model = OnnxRuntimeModel(model, device=str(self.device))
            backend = "onnxruntime"
        elif isinstance(model, (str, Path)):
            from .convert import load

            model = load(model)
        self.config: ModelConfig = model.config
        self.meta: dict[str, Any] = dict(getattr(model, "meta", None) or {})
        meta = self.meta
        self.label_set = resolve_label_set(label_set or meta.get("label_set"), self.config)
        self.image_size = hw(image_size or meta.get("image_size", DEFAULT_IMAGE_SIZE))
        self.mode = mode or meta.get("eval_mode", "resize")
        self.tta = tta or meta.get("tta", "none")
        self.scales = tuple(float(s) for s in (scales or meta.get("scales", DEFAULT_SCALES)))
        self.mean = tuple(float(v) for v in (mean or meta.get("mean", IMAGENET_MEAN)))
        self.std = tuple(float(v) for v in (std or meta.get("std", IMAGENET_STD)))
        if self.mode not in MODES:
            raise SegformerError(f"unknown inference mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.tta not in TTA_MODES:
            raise SegformerError(f"unknown TTA mode {self.tta!r}; choose from {', '.join(TTA_MODES)}")
        # On a CPU, one image at a time is faster than batches (measured at 512 px: 6.0 vs 5.0
        # images/s with PyTorch, 11.0 vs 6.9 with ONNX Runtime); a GPU wants batches.
        batch_size = batch_size or (8 if self.device.type == "cuda" else 1)
        if min(self.image_size) < 1 or batch_size < 1:
            raise SegformerError("image size and batch size must be positive")
        self.batch_size = batch_size
        self.flip_perm = flip_permutation(self.label_set.flip_pairs, self.config.num_classes)
        self.backend = backend
        if backend == "onnxruntime" and isinstance(model, nn.Module):
            from .export import OnnxRuntimeModel

            model = OnnxRuntimeModel.from_model(model, device=str(self.device))
        elif isinstance(model, nn.Module):
            model = model.to(self.device).eval()
        self.model = model
        # What runs: the exactly equivalent fused graph of a SegFormer (`segformer.models.fuse`).
        self.net = maybe_fuse(model) if isinstance(model, nn.Module) else model

    def settings(self) -> dict[str, Any]:
        """Everything that decides the masks besides the weights, as plain data (a model's meta)."""
        return {
            "label_set": label_set_dict(self.label_set),
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "eval_mode": self.mode,
            "tta": self.tta,
            "scales": list(self.scales),
        }

    @staticmethod
    def read(item: Input) -> np.ndarray:
        """An input as (H, W, 3) uint8 RGB (files through `load_image`, arrays/PIL through `to_rgb`)."""
        if isinstance(item, (str, Path)):
            return load_image(item)
        if isinstance(item, (Image.Image, np.ndarray)):
            return to_rgb(item)
        raise SegformerError(
            f"cannot predict on a {type(item).__name__}: pass a path, a PIL image or a numpy array"
        )

    def __call__(
        self, inputs: Input | Sequence[Input], *, return_probs: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray] | list:
        return self.predict(inputs, return_probs=return_probs)

    def predict(
        self, inputs: Input | Sequence[Input], *, return_probs: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray] | list:
        """Class ids ``(H, W)`` uint8 of one input, or a list of them for a list (or a 4-D array) of
        inputs; with `return_probs`, ``(ids, probs)`` pairs with probs ``(K, H, W)`` float32."""
        single = isinstance(inputs, (str, Path, Image.Image)) or (
            isinstance(inputs, np.ndarray) and inputs.ndim <= 3
        )
        items = [inputs] if single else list(inputs)
        results = self.predict_arrays([self.read(item) for item in items], return_probs=return_probs)
        return results[0] if single else results

    def predict_arrays(self, images: Sequence[np.ndarray], *, return_probs: bool = False) -> list:
        """`predict` on (H, W, 3) uint8 RGB arrays, in order; same-size images share batches."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise SegformerError(
                    f"image {i}: expected (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}"
                )
            groups.setdefault(image.shape[:2], []).append(i)
        results: list[Any] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                with torch.inference_mode():
                    probs = predict_batch(
                        self.net,
                        [images[i] for i in chunk],
                        self.image_size,
                        mean=self.mean,
                        std=self.std,
                        mode=self.mode,
                        tta=self.tta,
                        flip_perm=self.flip_perm,
                        scales=self.scales,
                        device=self.device,
                    )
                    ids = class_ids(probs).to(torch.uint8).cpu().numpy()
                    probs_np = probs.float().cpu().numpy() if return_probs else None
                for j, i in enumerate(chunk):
                    results[i] = (ids[j], probs_np[j]) if probs_np is not None else ids[j]
        return results
