"""Datasets for a training run: layout detection, transforms, synthetic data and an in-memory cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import DataConfig
from ..data.datasets import SegmentationDataset, build_datasets
from ..data.io import image_size
from ..data.labels import LabelSet
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from ..errors import SegformerError
from ..inference import Preprocess


@dataclass
class TrainData:
    train: Dataset
    val: Dataset
    label_set: LabelSet
    background: int | None
    preprocess: dict[str, Any] = field(default_factory=dict)


class CachedDataset(Dataset):
    """A `SegmentationDataset` whose decoded uint8 images and masks are held in memory.

    Decoding (JPEG/PNG) is done once, up front; every epoch then only augments. DataLoader workers
    inherit the arrays from the parent process without copying them.
    """

    def __init__(self, base: SegmentationDataset, progress: bool = True) -> None:
        self.base = base
        self.items = [
            base.load(i) for i in tqdm(range(len(base)), desc="caching", leave=False, disable=not progress)
        ]

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, i: int):
        image, mask = self.items[i]
        return self.base.transform(image, mask, self.base.rng(i))


def estimated_bytes(ds: SegmentationDataset) -> int:
    """Memory of the decoded dataset, estimated from the first image (RGB + 1-byte mask per pixel)."""
    if len(ds) == 0:
        return 0
    w, h = image_size(ds.image_path(0))
    return len(ds) * w * h * 4


def background_of(label_set: LabelSet) -> int | None:
    """The class excluded from the foreground mean F1: "background" when the label set has one."""
    return label_set.class_names.index("background") if "background" in label_set.class_names else None


def build_train_data(dc: DataConfig, seed: int, out: Path, progress: bool = True) -> TrainData:
    """Train and validation datasets for `dc`; synthetic faces are generated into ``out/data`` when
    no root is given and ``dc.synthetic`` > 0."""
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
    if dc.eval_mode not in ("resize", "slide"):
        raise SegformerError(f"unknown eval_mode {dc.eval_mode!r} (expected resize or slide)")
    train_tf = build_transform(dc.augment, dc.img_size, dc.label_set, train=True)
    # Validation sees what the Predictor feeds the model (`inference.preprocess`).
    val_tf = Preprocess(dc.img_size if dc.eval_mode == "resize" else None)
    label_set = None if dc.kind in ("ade20k", "cityscapes") else dc.label_set
    train, val = build_datasets(root, dc.kind, dc.val_fraction, dc.split_seed, train_tf, val_tf, label_set)
    train.seed = seed  # augmentation stream of this run
    if len(val) == 0:
        raise SegformerError(f"{root}: the validation split is empty (raise data.val_fraction)")
    datasets: list[Dataset] = [train, val]
    if dc.cache and sum(estimated_bytes(d) for d in datasets) <= dc.cache_max_gb * 2**30:
        datasets = [CachedDataset(d, progress) for d in datasets]
    ls = train.label_set
    preprocess = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "eval_mode": dc.eval_mode}
    return TrainData(datasets[0], datasets[1], ls, background_of(ls), preprocess)


def to_device_batch(
    batch: tuple[Tensor, Tensor], device: torch.device, channels_last: bool = False
) -> tuple[Tensor, Tensor]:
    """The one place a training batch reaches the device: ``(images, masks)`` from the loader,
    copied without blocking (the loader pins its memory on CUDA), images in `channels_last` on request."""
    images, masks = batch
    images = images.to(device, non_blocking=True)
    masks = masks.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks
