"""The data of a training run: its datasets (layout detection, transforms, synthetic data, an in-memory
cache), the loaders and samplers that feed them (`train_loader`, `eval_loader`; repeat-factor sampling)
and the way their batches reach the device (`collate_batch`, `to_device_batch`)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .. import distributed
from ..config import AUGMENT_DEVICES, DataConfig
from ..data.balance import class_pixels, class_repeat_factors, epoch_indices, epoch_length
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
                root, num=dc.synthetic, size=dc.image_size, seed=seed, val_fraction=dc.val_fraction
            )
    on_device = augment_on_device(dc.augment_device, device)
    # Validation sees what the Predictor feeds the model (`inference.preprocess`).
    val_tf = Preprocess(dc.image_size if dc.eval_mode == "resize" else None)
    train, val = build_datasets(
        root, dc.kind, dc.val_fraction, dc.split_seed, None, val_tf, dc.label_set, dc.bad_labels
    )
    ls = train.label_set
    # Built after the datasets so that flips swap the classes of the label set the data turned out to
    # use (a detected ADE20K or Cityscapes layout has its own).
    train.transform = build_transform(
        dc.augment, dc.image_size, ls, train=True, output="source" if on_device else "uint8"
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
        batch_augment=BatchAugment(dc.image_size, ls) if on_device else None,
        collate=functools.partial(collate_batch, ignore_index=ls.ignore_index),
    )


# -- batches ---------------------------------------------------------------------------------------------


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


# -- loaders ---------------------------------------------------------------------------------------------


class RepeatFactorSampler(Sampler[int]):
    """This process's share of an epoch of repeat-factor sampling (`segformer.data.balance`): image i
    appears about r(i) times in every epoch, all epochs equally long. Every process draws the same
    shuffled epoch from (seed, epoch) and takes every `num_replicas`-th index from `rank` on, the
    tail that does not divide evenly left out, as `DistributedSampler` with ``drop_last`` does."""

    def __init__(self, factors: np.ndarray, num_replicas: int, rank: int, seed: int = 0) -> None:
        self.factors = np.asarray(factors, dtype=np.float64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.total = epoch_length(self.factors)  # over all processes
        self.num_samples = self.total // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        indices = epoch_indices(self.factors, self.seed, self.epoch)
        end = self.num_samples * self.num_replicas
        return iter(indices[self.rank : end : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class EpochSampler(Sampler[tuple[int, int]]):
    """The indices of `base` as ``(epoch, index)`` pairs: epoch `epoch` after skipping its first
    `skip` (to resume inside an epoch), then every following epoch, without end. Each epoch gives
    its first `take` indices (the whole optimizer steps it holds; default: all of them), so no
    batch mixes two epochs.

    One iteration thus feeds a whole run: the DataLoader workers prepare the next epoch's first
    batches while the current one ends (and while it is evaluated), instead of starting from an empty
    pipeline at every epoch. The epoch travels with every index, so workers that live across epochs
    augment each sample with its own epoch's randomness."""

    def __init__(self, base: DistributedSampler | RepeatFactorSampler, take: int | None = None) -> None:
        self.base, self.epoch, self.skip = base, 0, 0
        self.take = len(base) if take is None else min(take, len(base))

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Where the next iteration starts."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.skip
        while self.take > 0:
            self.base.set_epoch(epoch)
            yield from ((epoch, i) for i in itertools.islice(iter(self.base), skip, self.take))
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:
        """The indices left in the first epoch (iteration goes on into the following ones)."""
        return max(0, self.take - self.skip)


class EpochDataset(Dataset):
    """`dataset` indexed by ``(epoch, index)`` (see `EpochSampler`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        self.dataset.set_epoch(epoch)
        return self.dataset[i]


def train_loader(
    dataset: Dataset,
    micro: int,
    workers: int,
    device: torch.device,
    seed: int,
    generator: torch.Generator,
    collate: Callable[[list], Any] = collate_batch,
    factors: np.ndarray | None = None,
    accum: int = 1,
    persistent: bool = True,
) -> tuple[DataLoader, EpochSampler]:
    """The loader of a run's training set (this process's shard, `micro` images per batch, stacked by
    `collate`: `TrainData.collate`) and its sampler, on which `set_epoch` selects where iteration
    starts. One iteration runs through epoch after epoch (`EpochSampler`), each cut to whole
    optimizer steps of `accum` micro-batches. With repeat `factors` (one per image) an epoch repeats
    images (`RepeatFactorSampler`); otherwise it is one shuffled pass. The workers persist across
    iterations unless `persistent` is False (they then end with their iterator)."""
    world, rank = distributed.world_size(), distributed.rank()
    base: DistributedSampler | RepeatFactorSampler
    if factors is not None:
        if len(factors) != len(dataset):
            raise SegformerError(f"{len(factors)} repeat factors for {len(dataset)} images")
        base = RepeatFactorSampler(factors, world, rank, seed)
    else:
        base = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
    sampler = EpochSampler(base, len(base) // (micro * accum) * micro * accum)
    loader = DataLoader(
        EpochDataset(dataset),
        batch_size=micro,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=generator,  # keeps DataLoader from drawing on the global RNG
        persistent_workers=persistent and workers > 0,
    )
    return loader, sampler


def eval_loader(dataset: Dataset, batch: int, workers: int, generator: torch.Generator) -> DataLoader:
    """The loader of this process's shard of the validation set."""
    rank, world = distributed.rank(), distributed.world_size()
    return DataLoader(
        torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world))),
        batch_size=max(1, batch),
        num_workers=workers,
        collate_fn=collate_eval,
        generator=generator,
        persistent_workers=workers > 0,
    )


def collate_eval(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor | list[Tensor]]:
    """Stack images (all at the working size); stack masks when they share a size, else keep a list."""
    images = torch.stack([b[0] for b in batch])
    masks = [b[1] for b in batch]
    if all(m.shape == masks[0].shape for m in masks):
        return images, torch.stack(masks)
    return images, masks


def describe_repeats(data: TrainData, threshold: float, factors: np.ndarray, rarest: int = 5) -> str:
    """One line: the epoch length without and with repeat-factor sampling, and the repeat factors of
    the classes in the fewest training images."""
    present = (data.class_pixels > 0).mean(0)  # fraction of images holding each class
    per_class = class_repeat_factors(data.class_pixels, threshold)
    names = data.label_set.class_names
    rare = [c for c in np.argsort(present, kind="stable") if present[c] > 0][:rarest]
    classes = ", ".join(f"{names[c]} {per_class[c]:.2f} (in {present[c]:.1%})" for c in rare)
    return (
        f"data.repeat_factor={threshold:g}: {len(factors)} -> {epoch_length(factors)} images per epoch; "
        f"repeat factors of the rarest classes: {classes}"
    )


def describe_class_weights(data: TrainData, weight: Tensor, rarest: int = 5) -> str:
    """One line: the cross-entropy weights of the rarest and of the most common class."""
    names, w = data.label_set.class_names, weight.tolist()
    order = sorted(range(len(w)), key=lambda c: -w[c])
    shown = [*order[:rarest], order[-1]]
    return "train.class_weight: " + ", ".join(f"{names[c]} {w[c]:.2f}" for c in shown)
