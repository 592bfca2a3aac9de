"""Datasets for a training run (layout detection, transforms, synthetic data, an in-memory cache) and
the way their batches reach the device (`collate_batch`, `to_device_batch`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

from ..config import AUGMENT_DEVICES, DataConfig
from ..data.balance import class_pixels
from ..data.batch_augment import BatchAugment
from ..data.check import is_mirrored
from ..data.datasets import SegmentationDataset
from ..data.io import image_size
from ..data.labels import IGNORE_INDEX, LabelSet
from ..data.layouts import build_datasets
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from ..errors import SegformerError
from ..inference.ops import Preprocess


@dataclass
class TrainData:
    """The datasets of a run. `train` yields uint8 samples; `collate` stacks them and
    `to_device_batch(batch, device, augment=batch_augment)` turns a batch into model input (with
    `batch_augment` set, the batch holds the sources and their drawn augmentation, applied there)."""

    train: Dataset
    val: Dataset
    label_set: LabelSet
    background: int | None
    preprocess: dict[str, Any] = field(default_factory=dict)
    batch_augment: BatchAugment | None = None
    collate: Callable[[list], Any] = default_collate

    @functools.cached_property
    def class_pixels(self) -> np.ndarray:
        """``(N, K)``: pixels of each class in each training mask (`segformer.data.balance`), counted
        once, from the cached masks when the training set is cached (no second decode)."""
        ds = self.train
        if isinstance(ds, CachedDataset):
            masks: Iterable[np.ndarray | None] = (mask for _, mask in ds.items)
        elif isinstance(ds, SegmentationDataset):
            masks = (ds.mask(i) for i in range(len(ds)))
        else:
            raise SegformerError(f"class frequencies need a segmentation dataset, not {type(ds).__name__}")
        return class_pixels(masks, self.label_set.num_classes)


class CachedDataset(Dataset):
    """A `SegmentationDataset` whose decoded uint8 images and masks are held in memory.

    Decoding (JPEG/PNG) is done once, up front; every epoch then only augments. DataLoader workers
    inherit the arrays from the parent process without copying them.
    """

    def __init__(self, base: SegmentationDataset, progress: bool = True) -> None:
        self.base = base
        # Writable copies where the decoder handed out read-only arrays, so that samples become
        # tensors without a copy per epoch.
        self.items = [
            tuple(None if a is None else np.require(a, requirements="W") for a in base.load(i))
            for i in tqdm(range(len(base)), desc="caching", leave=False, disable=not progress)
        ]

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, i: int):
        image, mask = self.items[i]
        return self.base.transform(image, mask, self.base.rng(i))


def mark_mirrored(ds: SegmentationDataset) -> int:
    """Mark the samples of `ds` whose masks have every left/right pair on the wrong side
    (`segformer.data.check.is_mirrored`) to load swapped back; returns how many."""
    marked = {
        i
        for i, path in enumerate(ds.mask_paths)
        if path is not None and is_mirrored(ds.raw_mask(i), ds.label_set)
    }
    ds.swap_sides = frozenset(marked)
    return len(marked)


def estimated_bytes(ds: SegmentationDataset) -> int:
    """Memory of the decoded dataset, estimated from the first image (RGB + 1-byte mask per pixel)."""
    if len(ds) == 0:
        return 0
    w, h = image_size(ds.image_path(0))
    return len(ds) * w * h * 4


def background_of(label_set: LabelSet) -> int | None:
    """The class excluded from the foreground mean F1: "background" when the label set has one."""
    return label_set.class_names.index("background") if "background" in label_set.class_names else None


def augment_on_device(setting: str, device: torch.device | str) -> bool:
    """Whether `data.augment_device` = `setting` augments on the training device: ``auto`` does on a
    GPU; on a CPU the OpenCV path in the workers is faster (benchmarks/bench_data.py)."""
    if setting not in AUGMENT_DEVICES:
        raise SegformerError(
            f"data.augment_device: unknown value {setting!r} (expected {', '.join(AUGMENT_DEVICES)})"
        )
    if setting == "auto":
        return torch.device(device).type != "cpu"
    return setting == "device"


def build_train_data(
    dc: DataConfig, seed: int, out: Path, progress: bool = True, device: torch.device | str = "cpu"
) -> TrainData:
    """Train and validation datasets for `dc`; synthetic faces are generated into ``out/data`` when
    no root is given and ``dc.synthetic`` > 0. `device` is the training device (it decides where
    ``data.augment_device: auto`` augments)."""
    root = dc.root
    if root is None:
        if dc.synthetic <= 0:
            raise SegformerError(
                "no training data: pass --data ROOT (or set data.synthetic=N for synthetic faces)"
            )
        from ..data.synthetic import write_synthetic_dataset

        root = out / "data"
        if not (root / "train" / "images").is_dir():
            write_synthetic_dataset(
                root, num=dc.synthetic, size=dc.img_size, seed=seed, val_fraction=dc.val_fraction
            )
    on_device = augment_on_device(dc.augment_device, device)
    # Validation sees what the Predictor feeds the model (`inference.preprocess`).
    val_tf = Preprocess(dc.img_size if dc.eval_mode == "resize" else None)
    train, val = build_datasets(
        root, dc.kind, dc.val_fraction, dc.split_seed, None, val_tf, dc.label_set, dc.bad_labels
    )
    ls = train.label_set
    # Built after the datasets so that flips swap the classes of the label set the data turned out to
    # use (a detected ADE20K or Cityscapes layout has its own).
    train.transform = build_transform(
        dc.augment, dc.img_size, ls, train=True, output="source" if on_device else "uint8"
    )
    train.seed = seed  # augmentation stream of this run
    if len(val) == 0:
        raise SegformerError(f"{root}: the validation split is empty (raise data.val_fraction)")
    if dc.fix_mirrored:  # before caching: the cache holds the corrected masks
        counts = [f"{mark_mirrored(d)} of {len(d)} {name}" for name, d in (("train", train), ("val", val))]
        if progress:
            print(f"data.fix_mirrored: swapped the left/right classes back in {', '.join(counts)} masks")
    datasets: list[Dataset] = [train, val]
    if dc.cache and sum(estimated_bytes(d) for d in datasets) <= dc.cache_max_gb * 2**30:
        datasets = [CachedDataset(d, progress) for d in datasets]
    preprocess = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "eval_mode": dc.eval_mode}
    return TrainData(
        datasets[0],
        datasets[1],
        ls,
        background_of(ls),
        preprocess,
        batch_augment=BatchAugment(dc.img_size, ls) if on_device else None,
        collate=functools.partial(collate_batch, ignore_index=ls.ignore_index),
    )


def collate_batch(batch: list[tuple], ignore_index: int = IGNORE_INDEX) -> list[Any]:
    """Stack training samples ``(image, mask[, params])``: uint8 images (B, 3, H, W), masks (B, H, W),
    the params' tensors key by key. Sources of different sizes (augmentation on the device) are padded
    at the bottom and right with what the warp puts outside a source anyway: image 0, mask = ignore."""
    shapes = {tuple(b[0].shape) for b in batch}
    if len(shapes) > 1:
        h, w = max(s[1] for s in shapes), max(s[2] for s in shapes)

        def pad(x: Tensor, value: int) -> Tensor:
            return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), value=value)

        batch = [(pad(im, 0), pad(m, ignore_index), *rest) for im, m, *rest in batch]
    return default_collate(batch)


@functools.cache
def _normaliser(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], device=device).view(1, -1, 1, 1)
    return scale, shift


def to_device_batch(
    batch: Sequence[Any],
    device: torch.device | str,
    channels_last: bool = False,
    augment: BatchAugment | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[Tensor, Tensor]:
    """The one place a training batch reaches the device and becomes model input.

    `batch` is ``(images, masks)`` from the loader, or ``(images, masks, params)`` when the sources
    travel with their drawn augmentation, which `augment` then applies on the device. The copies do
    not block (the loader pins its memory on CUDA). uint8 images are normalised with `mean` / `std`
    here, after the copy (a quarter of the bytes to move); float images are taken as normalised.
    Returns float32 images (B, 3, H, W), in `channels_last` on request, and int64 masks (B, H, W).
    """
    device = torch.device(device)
    images, masks, *rest = batch
    images = images.to(device, non_blocking=True)
    masks = masks.to(device, non_blocking=True)
    if rest:
        if augment is None:
            raise SegformerError("the batch holds sources to augment on the device, but no augment was given")
        images, masks = augment(images, masks, rest[0])  # float in [0, 255]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if images.dtype == torch.uint8 or rest:
        scale, shift = _normaliser(tuple(mean), tuple(std), device)
        images = images.to(torch.float32, memory_format=fmt).mul_(scale).sub_(shift)
    else:
        images = images.contiguous(memory_format=fmt)
    return images, masks.long()
