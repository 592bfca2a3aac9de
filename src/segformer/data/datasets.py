"""Segmentation datasets: the folder layout (CE7454), ADE20K and Cityscapes, as torch Datasets.

Folder layout (the CE7454 data)::

    ROOT/<split>/images/<stem>.jpg|png|...     ROOT/<split>/masks/<stem>.png

ADE20K: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` + ``annotations/.../*.png``
(reduced labels). Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` +
``gtFine/<split>/<city>/*_gtFine_labelIds.png`` (19 train ids).

Augmentation is reproducible whatever the number of DataLoader workers: sample i of epoch e draws its
randomness from ``np.random.default_rng((seed, e, i))``, so the stream depends on the sample, not on
the worker that happens to load it. Call `set_epoch` at the start of every epoch.

Which class reads a dataset directory, and how train and val are split, is decided in `layouts.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from ..errors import SegformerError
from .io import IMAGE_EXTENSIONS, load_image, load_mask
from .labels import LabelSet, ade20k_lut, cityscapes_lut, get_label_set

Transform = Callable[[np.ndarray, np.ndarray | None, np.random.Generator | None], Any]
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class FolderScan:
    """What is in ``ROOT/<split>``: matched pairs, and files that have no partner."""

    split_dir: Path
    stems: list[str]
    images: dict[str, Path]
    masks: dict[str, Path]
    has_masks: bool
    missing_masks: list[Path]  # images without a mask
    missing_images: list[Path]  # masks without an image
    duplicates: list[Path]  # a second image with the same stem (a.jpg and a.png)


def _list_images(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    found: dict[str, Path] = {}
    duplicates: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            if p.stem in found:
                duplicates.append(p)
            else:
                found[p.stem] = p
    return found, duplicates


def scan_folder(root: str | Path, split: str) -> FolderScan:
    """List ``ROOT/<split>/images`` and ``masks`` without reading any file."""
    split_dir = Path(root) / split
    image_dir, mask_dir = split_dir / "images", split_dir / "masks"
    if not image_dir.is_dir():
        raise SegformerError(f"{image_dir}: folder not found (expected ROOT/<split>/images)")
    images, duplicates = _list_images(image_dir)
    has_masks = mask_dir.is_dir()
    masks = (
        {p.stem: p for p in sorted(mask_dir.glob("*.png")) if not p.name.startswith(".")} if has_masks else {}
    )
    stems = [s for s in images if s in masks] if has_masks else list(images)
    return FolderScan(
        split_dir=split_dir,
        stems=stems,
        images=images,
        masks=masks,
        has_masks=has_masks,
        missing_masks=[images[s] for s in images if s not in masks] if has_masks else [],
        missing_images=[masks[s] for s in masks if s not in images],
        duplicates=duplicates,
    )


class SegmentationDataset(Dataset):
    """A list of (image, mask) files, a label set, an optional id lookup table applied to masks as they
    load (ADE20K reduction, Cityscapes train ids), and an optional transform.

    ``ds[i]`` is ``transform(image, mask, rng)`` -- (image tensor, mask tensor) for `SegTransform` --
    or the raw ``(image uint8 (H, W, 3), mask uint8 (H, W))`` arrays when `transform` is None.
    """

    def __init__(
        self,
        image_paths: Sequence[Path],
        mask_paths: Sequence[Path | None],
        label_set: LabelSet | str,
        transform: Transform | None = None,
        mask_lut: np.ndarray | None = None,
        seed: int = 0,
        name: str = "dataset",
    ) -> None:
        if len(image_paths) != len(mask_paths):
            raise SegformerError(f"{name}: {len(image_paths)} images but {len(mask_paths)} masks")
        self.image_paths = [Path(p) for p in image_paths]
        self.mask_paths = [None if p is None else Path(p) for p in mask_paths]
        self.label_set = get_label_set(label_set)
        self.transform = transform
        self.mask_lut = mask_lut
        self.seed = seed
        self.epoch = 0
        self.name = name
        self.bad_labels = "error"  # mask values outside the label set: "error" or "ignore" (-> 255)
        self.swap_sides: frozenset[int] = frozenset()  # samples whose masks load left/right-swapped
        self._valid = self.label_set.valid_lut()
        self._flip = self.label_set.flip_lut()

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def stems(self) -> list[str]:
        return [p.stem for p in self.image_paths]

    def image_path(self, i: int) -> Path:
        return self.image_paths[i]

    def mask_path(self, i: int) -> Path | None:
        return self.mask_paths[i]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of `epoch` (every sample's randomness depends on it)."""
        self.epoch = int(epoch)

    def rng(self, i: int) -> np.random.Generator:
        """The generator of sample `i` in the current epoch."""
        return np.random.default_rng((self.seed, self.epoch, i))

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Sample `i` as uint8 arrays, before any transform; sizes are checked."""
        image = load_image(self.image_paths[i])
        mask_path = self.mask_paths[i]
        if mask_path is None:
            return image, None
        mask = self._sided_mask(i)
        if mask.shape != image.shape[:2]:
            raise SegformerError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{self.image_paths[i].name} is {image.shape[1]}x{image.shape[0]}"
            )
        return image, self.check_labels(mask, mask_path)

    def mask(self, i: int) -> np.ndarray | None:
        """Mask `i` as `load` gives it (sides swapped back, labels checked), without decoding the image."""
        mask_path = self.mask_paths[i]
        return None if mask_path is None else self.check_labels(self._sided_mask(i), mask_path)

    def _sided_mask(self, i: int) -> np.ndarray:
        mask = self.raw_mask(i)
        if i in self.swap_sides:  # a mirrored annotation (`segformer.engine.data.mark_mirrored`)
            mask = self._flip[mask]
        return mask

    def raw_mask(self, i: int) -> np.ndarray:
        """Mask `i` as the file gives it, in training ids (no checks, no swapped sides)."""
        mask_path = self.mask_paths[i]
        assert mask_path is not None
        if self.mask_lut is None:
            return load_mask(mask_path, self.label_set)  # colour masks map through the palette
        return self.mask_lut[load_mask(mask_path)]  # raw dataset ids -> training ids

    def check_labels(self, mask: np.ndarray, path: Path) -> np.ndarray:
        """`mask`, whose values must be class ids or the ignore index: others are an error naming the
        file (as `segformer data check` reports them), or become the ignore index when
        ``bad_labels == "ignore"``. A value >= num_classes would otherwise index past the logits."""
        bad = ~self._valid[mask]
        if not bad.any():
            return mask
        if self.bad_labels == "ignore":
            return np.where(bad, np.uint8(self.label_set.ignore_index), mask)
        values = sorted(int(v) for v in np.unique(mask[bad]))
        ls = self.label_set
        root = getattr(self, "root", "ROOT")
        raise SegformerError(
            f"{path}: out_of_range: {int(bad.sum())} pixels with values {values[:8]}"
            f"{'...' if len(values) > 8 else ''} outside 0-{ls.num_classes - 1} and {ls.ignore_index} "
            f"({ls.name}); `segformer data check {root} --fix OUT` writes a corrected copy, or set "
            "data.bad_labels=ignore"
        )

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} samples")
        image, mask = self.load(i)
        if self.transform is None:
            return image, mask
        return self.transform(image, mask, self.rng(i))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} samples, label_set={self.label_set.name!r})"


class FolderDataset(SegmentationDataset):
    """``ROOT/<split>/images`` + ``ROOT/<split>/masks`` (a split without a ``masks`` folder yields
    images with mask None). `stems` restricts and orders the samples (a seeded hold-out, a subset)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        label_set: LabelSet | str = "celebamask",
        stems: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        scan = scan_folder(root, split)
        problems = scan.missing_masks[:1] or scan.missing_images[:1] or scan.duplicates[:1]
        if problems:
            p = problems[0]
            what = (
                "has no mask in masks/"
                if p in scan.missing_masks
                else "has no image in images/"
                if p in scan.missing_images
                else "duplicates the stem of another image"
            )
            n = len(scan.missing_masks) + len(scan.missing_images) + len(scan.duplicates)
            raise SegformerError(
                f"{p}: {what} ({n} unpaired file(s) in {scan.split_dir}; `segformer data check` lists them)"
            )
        if stems is None:
            stems = scan.stems
            if not stems:
                raise SegformerError(f"{scan.split_dir / 'images'}: no images found")
        else:
            unknown = [s for s in stems if s not in scan.images]
            if unknown:
                raise SegformerError(f"{scan.split_dir}: no image named {unknown[0]!r}")
        self.root = Path(root)
        self.split = split
        super().__init__(
            [scan.images[s] for s in stems],
            [scan.masks[s] if scan.has_masks else None for s in stems],
            label_set,
            transform,
            seed=seed,
            name=str(scan.split_dir),
        )


def holdout_stems(stems: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded random split of `stems` into (train, val); the same stems for the same seed and stem set."""
    if not 0.0 <= val_fraction < 1.0:
        raise SegformerError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    ordered = sorted(stems)
    n_val = round(len(ordered) * val_fraction)
    if val_fraction > 0 and len(ordered) > 1:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    val = {ordered[i] for i in perm[:n_val]}
    return [s for s in ordered if s not in val], [s for s in ordered if s in val]


class PairedFolderDataset(SegmentationDataset):
    """A dataset whose images and masks lie in two parallel folder trees (ADE20K, Cityscapes).

    A subclass says it as data: its `title`, the `splits` it accepts (name -> folder), the two folders of
    a split (`folders`), the image files (`pattern`), each image's mask (`mask_of`, which must exist)
    and the label set and id table (`lut`) the masks are read through.
    """

    title: str
    splits: ClassVar[Mapping[str, str]]
    pattern: str
    labels: str
    lut: Callable[[], np.ndarray]

    def __init__(
        self, root: str | Path, split: str = "train", transform: Transform | None = None, seed: int = 0
    ) -> None:
        if split not in self.splits:
            known = ", ".join(s for s in SPLIT_NAMES if s in self.splits)
            raise SegformerError(f"{self.title}: unknown split {split!r}; known: {known}")
        image_dir, mask_dir = self.folders(Path(root), self.splits[split])
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise SegformerError(f"{d}: folder not found")
        images = sorted(image_dir.glob(self.pattern))
        if not images:
            raise SegformerError(f"{image_dir}: no images matching {self.pattern}")
        masks = [self.mask_of(p, mask_dir) for p in images]
        for image, mask in zip(images, masks, strict=True):
            if not mask.is_file():
                raise SegformerError(f"{image}: no mask (expected {mask})")
        super().__init__(
            images, masks, self.labels, transform, mask_lut=self.lut(), seed=seed, name=str(image_dir)
        )

    def folders(self, root: Path, folder: str) -> tuple[Path, Path]:
        """The image and mask folders of the split whose folder name is `folder`."""
        raise NotImplementedError

    def mask_of(self, image: Path, mask_dir: Path) -> Path:
        """The mask file of `image`."""
        raise NotImplementedError


# -- ADE20K -----------------------------------------------------------------------------------------


def ade_root(root: Path) -> Path:
    return root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root


class ADE20KDataset(PairedFolderDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016``), 150 classes with reduced labels."""

    title, pattern, labels, lut = "ADE20K", "*.jpg", "ade20k", staticmethod(ade20k_lut)
    splits: ClassVar[Mapping[str, str]] = {
        "train": "training",
        "training": "training",
        "val": "validation",
        "validation": "validation",
    }

    def folders(self, root: Path, folder: str) -> tuple[Path, Path]:
        base = ade_root(root)
        return base / "images" / folder, base / "annotations" / folder

    def mask_of(self, image: Path, mask_dir: Path) -> Path:
        return mask_dir / f"{image.stem}.png"


# -- Cityscapes -------------------------------------------------------------------------------------


class CityscapesDataset(PairedFolderDataset):
    """Cityscapes fine annotations mapped to the 19 train ids (everything else -> ignore)."""

    title, labels, lut = "Cityscapes", "cityscapes", staticmethod(cityscapes_lut)
    pattern = "*/*_leftImg8bit.png"
    splits: ClassVar[Mapping[str, str]] = {s: s for s in SPLIT_NAMES}

    def folders(self, root: Path, folder: str) -> tuple[Path, Path]:
        return root / "leftImg8bit" / folder, root / "gtFine" / folder

    def mask_of(self, image: Path, mask_dir: Path) -> Path:
        stem = image.name[: -len("_leftImg8bit.png")]
        return mask_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
