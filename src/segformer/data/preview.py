"""Augmentation previews: what the model will actually see.

`preview_dataset` writes N augmented samples of a folder-layout dataset *in the folder layout*
(``OUT/train/images`` + ``OUT/train/masks``), so every tool reads them back -- `segformer data check`
included, which is how the geometric preset is verified to keep left and right consistent -- plus
``OUT/contact_sheet.png``, a grid of images beside their colour masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import SegformerError
from ..fileio import staged_output, write_json
from .datasets import FolderDataset
from .io import colorize, save_image, save_mask
from .labels import LabelSet, get_label_set
from .synthetic import DATASET_NAMES
from .transforms import PRESETS, SegTransform, resize_image, resize_mask

SHEET_COLUMNS = 4  # samples per row of the contact sheet (each sample = image + colour mask)
SHEET_MAX = 64  # samples shown on the contact sheet


def contact_sheet(
    images: list[np.ndarray], masks: list[np.ndarray], label_set: LabelSet | str, tile: int = 128
) -> np.ndarray:
    """A grid of (image | colour mask) tiles, `SHEET_COLUMNS` samples a row; (H, W, 3) uint8."""
    label_set = get_label_set(label_set)
    pairs = [
        np.concatenate([resize_image(im, tile), colorize(resize_mask(m, tile), label_set)], axis=1)
        for im, m in zip(images, masks, strict=True)
    ]
    blank = np.full((tile, 2 * tile, 3), 255, dtype=np.uint8)
    pairs += [blank] * (-len(pairs) % SHEET_COLUMNS)
    rows = [np.concatenate(pairs[i : i + SHEET_COLUMNS], axis=1) for i in range(0, len(pairs), SHEET_COLUMNS)]
    return np.concatenate(rows, axis=0)


def preview_dataset(
    root: str | Path,
    out: str | Path,
    augment: str = "geometric",
    num: int = 16,
    seed: int = 0,
    split: str = "train",
    size: int | None = None,
    label_set: LabelSet | str = "celebamask",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write `num` samples of ``ROOT/<split>`` augmented with preset `augment` to `out`.

    Samples are drawn without replacement (cycling when `num` exceeds the dataset) with generator
    ``default_rng(seed)``; sample k is augmented with ``default_rng((seed, k))`` at `size` (default: the
    sample's own size) and saved as ``<k>_<stem>``."""
    out = Path(out)
    if augment not in PRESETS:
        raise SegformerError(f"unknown augmentation preset {augment!r}; known: {', '.join(PRESETS)}")
    if num < 1:
        raise SegformerError(f"--num must be at least 1, got {num}")
    label_set = get_label_set(label_set)
    sheet_images, sheet_masks = [], []
    # the dataset previewed is an input: never written, nor the preview put inside it
    with staged_output(
        out, "data preview", [root], overwrite, names=(*DATASET_NAMES, "contact_sheet.png"), what="a preview"
    ) as tmp:
        ds = FolderDataset(root, split, label_set=label_set)
        if ds.mask_path(0) is None:
            raise SegformerError(f"{Path(root) / split}: no masks folder; previews need labelled data")
        order = np.random.default_rng(seed).permutation(len(ds))
        indices = [int(order[k % len(ds)]) for k in range(num)]
        for k, i in enumerate(tqdm(indices, desc=f"preview {augment}", disable=not progress)):
            image, mask = ds.load(i)
            out_size = (size, size) if size else image.shape[:2]
            transform = SegTransform(augment, out_size, label_set, train=True)
            image, mask = transform.augment(image, mask, np.random.default_rng((seed, k)))
            stem = f"{k:05d}_{ds.stems[i]}"
            save_image(tmp / "train" / "images" / f"{stem}.jpg", image)
            save_mask(tmp / "train" / "masks" / f"{stem}.png", mask, label_set)
            if k < SHEET_MAX:
                sheet_images.append(image)
                sheet_masks.append(mask)
        save_image(tmp / "contact_sheet.png", contact_sheet(sheet_images, sheet_masks, label_set))
        meta = {"generator": "segformer data preview", "source": str(Path(root) / split), "augment": augment}
        write_json(tmp / "dataset.json", {**meta, "num": num, "seed": seed, "size": size})
    return out
