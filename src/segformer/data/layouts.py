"""Dataset layouts in one table: how each is recognised, which dataset class reads it, its label set
and the recipe `segformer train --data ROOT` starts from; and `load_split`, the one function that
turns (root, layout, split settings) into a dataset.

Adding a layout is a dataset class in `datasets.py` and one `Layout` entry in `LAYOUTS` (detection tries
the entries in order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config.validate import provide
from ..errors import SegformerError
from .datasets import (
    ADE20KDataset,
    CityscapesDataset,
    FolderDataset,
    SegmentationDataset,
    Transform,
    ade_root,
    holdout_stems,
)
from .labels import LabelSet, get_label_set


@dataclass(frozen=True)
class Layout:
    name: str
    looks_like: str
    """What the folder holds, for error messages."""
    detect: Callable[[Path], bool]
    open: Callable[[Path, str, Transform | None, LabelSet, int], SegmentationDataset]
    """``open(root, split, transform, label_set, seed)``: every sample of `split`."""
    label_set: str | None
    """The layout's own label set; None: the one the user gives (``data.label_set``)."""
    recipe: str
    """The packaged recipe for training on this layout."""
    has_val: Callable[[Path], bool]
    """Whether the dataset has a labelled val split (otherwise val is a seeded hold-out of train)."""


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "ade20k",
            "ADEChallengeData2016/images/training + annotations/training",
            lambda root: (ade_root(root) / "images" / "training").is_dir(),
            lambda root, split, tf, ls, seed: ADE20KDataset(root, split, tf, seed),
            "ade20k",
            "segformer-ade20k",
            lambda root: True,
        ),
        Layout(
            "cityscapes",
            "Cityscapes leftImg8bit + gtFine",
            lambda root: (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir(),
            lambda root, split, tf, ls, seed: CityscapesDataset(root, split, tf, seed),
            "cityscapes",
            "segformer-cityscapes",
            lambda root: True,
        ),
        Layout(
            "folder",
            "train/images + train/masks",
            lambda root: (root / "train" / "images").is_dir(),
            lambda root, split, tf, ls, seed: FolderDataset(root, split, tf, ls, seed=seed),
            None,
            "microsegformer-celebamask",
            lambda root: (root / "val" / "masks").is_dir(),
        ),
    )
}
provide("data.kind", lambda: ["auto", *LAYOUTS])  # what a recipe's data.kind may name


def detect_kind(root: str | Path) -> str:
    """The name of the layout of a dataset directory (the first entry of `LAYOUTS` that matches)."""
    root = Path(root)
    if not root.exists():
        raise SegformerError(f"{root}: dataset folder not found (the path does not exist)")
    if not root.is_dir():
        raise SegformerError(f"{root}: not a folder (a dataset is a folder)")
    for layout in LAYOUTS.values():
        if layout.detect(root):
            return layout.name
    if (root / "CelebA-HQ-img").is_dir() and (root / "CelebAMask-HQ-mask-anno").is_dir():
        raise SegformerError(
            f"{root}: raw CelebAMask-HQ; convert it first with `segformer data prepare {root} OUT`"
        )
    expected = "; ".join(f"{name}: {layout.looks_like}" for name, layout in LAYOUTS.items())
    raise SegformerError(f"{root}: unknown dataset layout (expected {expected})")


def get_layout(root: str | Path, kind: str = "auto") -> Layout:
    """The layout `kind`, or the detected one when `kind` is ``auto``; an unknown kind is an error."""
    if kind == "auto":
        return LAYOUTS[detect_kind(root)]
    if kind not in LAYOUTS:
        raise SegformerError(f"unknown dataset kind {kind!r}; known: {', '.join(['auto', *LAYOUTS])}")
    if not Path(root).exists():
        raise SegformerError(f"{root}: dataset folder not found (the path does not exist)")
    return LAYOUTS[kind]


def layout_label_set(layout: Layout, label_set: LabelSet | str | None, root: str | Path) -> LabelSet:
    """The label set of a dataset: the layout's own, or `label_set` (default celebamask) for folders."""
    if layout.label_set is None:
        return get_label_set(label_set or "celebamask")
    if label_set is not None and get_label_set(label_set).name != layout.label_set:
        name = label_set if isinstance(label_set, str) else label_set.name
        raise SegformerError(
            f"{root}: a {layout.name} dataset uses the {layout.label_set} label set, not {name} "
            f"(set data.label_set={layout.label_set})"
        )
    return get_label_set(layout.label_set)


def load_split(
    root: str | Path,
    split: str,
    *,
    kind: str = "auto",
    label_set: LabelSet | str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    transform: Transform | None = None,
    seed: int = 0,
    bad_labels: str = "error",
) -> SegmentationDataset:
    """The labelled samples of `split` (``train``, ``val``, ``test``, ...) of the dataset at `root`.

    A dataset without a labelled val split (a folder without ``ROOT/val/masks``) is split: ``val`` is
    the seeded hold-out of `val_fraction` of ``ROOT/train`` (`split_seed`) and ``train`` the rest, so
    training, evaluation and reports see the same images. `seed` seeds the augmentation stream.
    Mask values outside the label set are an error naming the file, or the ignore index with
    ``bad_labels="ignore"``.
    """
    root = Path(root)
    layout = get_layout(root, kind)
    ls = layout_label_set(layout, label_set, root)
    if split in ("train", "val") and not layout.has_val(root):
        everything = layout.open(root, "train", None, ls, seed)
        _require_masks(everything, root, "train")
        train_stems, val_stems = holdout_stems(everything.stems, val_fraction, split_seed)
        stems = train_stems if split == "train" else val_stems
        ds: SegmentationDataset = FolderDataset(root, "train", transform, ls, stems=stems, seed=seed)
    else:
        ds = layout.open(root, split, transform, ls, seed)
        _require_masks(ds, root, split)
    ds.bad_labels = bad_labels
    return ds


def _require_masks(ds: SegmentationDataset, root: Path, split: str) -> None:
    if len(ds) and ds.mask_path(0) is None:
        raise SegformerError(
            f"{root / split}: no masks/ folder, so nothing to train or score against "
            f"(expected {split}/masks/<stem>.png beside {split}/images)"
        )


def build_datasets(
    root: str | Path,
    kind: str = "auto",
    val_fraction: float = 0.1,
    seed: int = 0,
    train_transform: Transform | None = None,
    val_transform: Transform | None = None,
    label_set: LabelSet | str | None = None,
    bad_labels: str = "error",
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, val) datasets of `root` (see `load_split`; `seed` is the split and augmentation seed)."""
    common = {
        "kind": kind,
        "label_set": label_set,
        "val_fraction": val_fraction,
        "split_seed": seed,
        "bad_labels": bad_labels,
    }
    return (
        load_split(root, "train", transform=train_transform, seed=seed, **common),
        load_split(root, "val", transform=val_transform, seed=seed, **common),
    )


def default_recipe(root: str | Path | None) -> str:
    """The packaged recipe for training on `root`: its layout's, or the CE7454 one without data or when
    the layout cannot be told (the dataset's own error then comes after the settings are checked)."""
    try:
        return LAYOUTS[detect_kind(root)].recipe if root is not None else LAYOUTS["folder"].recipe
    except SegformerError:
        return LAYOUTS["folder"].recipe


def split_description(root: str | Path, kind: str, val_fraction: float, split_seed: int) -> str:
    """Where the validation images of `root` come from, in words."""
    if get_layout(root, kind).has_val(Path(root)):
        return "the dataset's val split"
    return f"a seeded {val_fraction:.0%} hold-out of train (split seed {split_seed})"


__all__ = [
    "LAYOUTS",
    "Layout",
    "build_datasets",
    "default_recipe",
    "detect_kind",
    "get_layout",
    "layout_label_set",
    "load_split",
    "split_description",
]
