"""Raw CelebAMask-HQ -> the folder layout.

The raw release has ``CelebA-HQ-img/<i>.jpg`` (1024 x 1024) and one binary mask per part,
``CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png`` (512 x 512). Label maps are built as the
official preprocessing does (`g_mask.py` of switchablenorms/CelebAMask-HQ): start from background and
paint the parts in the order skin, nose, eye_g, l_eye, r_eye, l_brow, r_brow, l_ear, r_ear, mouth, u_lip,
l_lip, hair, hat, ear_r, neck_l, neck, cloth, the value of part k being k (its id in the CelebAMask-HQ
label set, data/labels.py), so later parts overwrite earlier ones.

The official split follows CelebA's: ``CelebA-HQ-to-CelebA-mapping.txt`` gives each HQ image its
original CelebA file, and CelebA's ``list_eval_partition.txt`` puts that file in train (0), val (1) or
test (2) -- 24,183 / 2,993 / 2,824 images. Without the partition file, CelebA's partition boundaries are
applied to the original file number (files 1-162,770 train, 162,771-182,637 val, the rest test), which is
the same split. (The official `g_partition.py` compares the 0-based `orig_idx` column with these 1-based
numbers, which would move the two boundary files by one.) Without the mapping every image goes to train,
and training holds out a seeded validation fraction.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import SegformerError
from ..fileio import staged_output, write_json
from .io import load_image, load_mask, save_image, save_mask
from .labels import CELEBAMASK
from .synthetic import DATASET_NAMES

IMAGE_DIR = "CelebA-HQ-img"
ANNO_DIR = "CelebAMask-HQ-mask-anno"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
PARTITION_FILE = "list_eval_partition.txt"
PARTS = CELEBAMASK.class_names[1:]  # the official merge order; part k (1-based) gets id k
_GROUPS = {0: "train", 1: "val", 2: "test"}
CELEBA_LAST_TRAIN, CELEBA_LAST_VAL = 162770, 182637  # file numbers (1-based) of list_eval_partition.txt


def _read_mapping(path: Path) -> dict[int, tuple[int, str]]:
    """HQ index -> (original CelebA index, original file name)."""
    out: dict[int, tuple[int, str]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if len(fields) != 3 or not fields[0].isdigit():
            continue  # the header "idx orig_idx orig_file"
        try:
            out[int(fields[0])] = (int(fields[1]), fields[2])
        except ValueError:
            raise SegformerError(f"{path}:{n}: expected 'idx orig_idx orig_file', got {line!r}") from None
    if not out:
        raise SegformerError(f"{path}: no 'idx orig_idx orig_file' lines")
    return out


def _read_partition(path: Path) -> dict[str, int]:
    """CelebA file name -> group (0 train, 1 val, 2 test); whitespace or comma separated."""
    out: dict[str, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.replace(",", " ").split()
        if len(fields) != 2 or not fields[0].lower().endswith(".jpg"):
            continue  # headers ("image_id,partition")
        if fields[1] not in ("0", "1", "2"):
            raise SegformerError(f"{path}:{n}: partition must be 0, 1 or 2, got {fields[1]!r}")
        out[fields[0]] = int(fields[1])
    if not out:
        raise SegformerError(f"{path}: no '<file>.jpg <0|1|2>' lines")
    return out


def official_split(raw_root: str | Path, indices: list[int]) -> tuple[dict[int, str], str]:
    """Split name of each HQ index, and how it was decided."""
    raw_root = Path(raw_root)
    mapping_path = raw_root / MAPPING_FILE
    partition_path = next(
        (p for p in (raw_root / PARTITION_FILE, raw_root / "Eval" / PARTITION_FILE) if p.is_file()), None
    )
    if not mapping_path.is_file():
        return {i: "train" for i in indices}, f"no {MAPPING_FILE}: every image in train"
    mapping = _read_mapping(mapping_path)
    missing = [i for i in indices if i not in mapping]
    if missing:
        raise SegformerError(f"{mapping_path}: no entry for image {missing[0]}")
    if partition_path is not None:
        partition = _read_partition(partition_path)
        split = {}
        for i in indices:
            orig_file = mapping[i][1]
            if orig_file not in partition:
                raise SegformerError(f"{partition_path}: no partition for {orig_file} (HQ image {i})")
            split[i] = _GROUPS[partition[orig_file]]
        return split, f"CelebA partition ({partition_path.name})"

    def by_file(orig_file: str) -> str:
        number = int(Path(orig_file).stem)
        return "train" if number <= CELEBA_LAST_TRAIN else "val" if number <= CELEBA_LAST_VAL else "test"

    return {i: by_file(mapping[i][1]) for i in indices}, "CelebA partition boundaries on the file numbers"


def merge_parts(anno_root: str | Path, index: int) -> np.ndarray:
    """The (H, W) label map of HQ image `index` from its part masks (see the module docstring)."""
    prefix = Path(anno_root) / str(index // 2000) / f"{index:05d}"
    label: np.ndarray | None = None
    for k, part in enumerate(PARTS, 1):
        path = prefix.parent / f"{prefix.name}_{part}.png"
        if not path.is_file():
            continue  # parts that are not visible have no file
        part_mask = load_mask(path)
        if label is None:
            label = np.zeros(part_mask.shape, dtype=np.uint8)
        elif part_mask.shape != label.shape:
            raise SegformerError(
                f"{path}: part mask is {part_mask.shape[::-1]}, others are {label.shape[::-1]}"
            )
        label[part_mask > 0] = k
    if label is None:
        raise SegformerError(f"{prefix}_<part>.png: no part masks for image {index}")
    return label


def prepare_celebamask(
    raw_root: str | Path,
    out_root: str | Path,
    size: int | None = 512,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int | str]:
    """Convert raw CelebAMask-HQ into ``OUT/{train,val,test}/{images,masks}`` (stems = HQ indices).

    Images are resized to `size` (the masks' 512 by default; None keeps the mask size) with area
    averaging, masks with nearest neighbour. `limit` converts only the first N images. Returns the number
    of images per split and the split rule used."""
    raw_root, out_root = Path(raw_root), Path(out_root)
    image_dir, anno_dir = raw_root / IMAGE_DIR, raw_root / ANNO_DIR
    for d in (image_dir, anno_dir):
        if not d.is_dir():
            raise SegformerError(f"{d}: folder not found (is {raw_root} the raw CelebAMask-HQ folder?)")
    indices = sorted(int(p.stem) for p in image_dir.glob("*.jpg") if p.stem.isdigit())
    if not indices:
        raise SegformerError(f"{image_dir}: no <index>.jpg images")
    indices = indices[:limit] if limit else indices
    split_of, rule = official_split(raw_root, indices)

    def convert(i: int, tmp: Path) -> None:
        mask = merge_parts(anno_dir, i)
        target = size or mask.shape[0]
        if mask.shape != (target, target):
            mask = cv2.resize(mask, (target, target), interpolation=cv2.INTER_NEAREST_EXACT)
        image = load_image(image_dir / f"{i}.jpg")
        if image.shape[:2] != (target, target):
            interp = cv2.INTER_AREA if image.shape[0] > target else cv2.INTER_LINEAR
            image = cv2.resize(image, (target, target), interpolation=interp)
        split = split_of[i]
        save_image(tmp / split / "images" / f"{i}.jpg", image, quality=95)
        save_mask(tmp / split / "masks" / f"{i}.png", mask, CELEBAMASK)

    counts: dict[str, int | str] = {
        s: sum(v == s for v in split_of.values()) for s in ("train", "val", "test")
    }
    counts["split_rule"] = rule
    with staged_output(
        out_root, "data prepare", [raw_root], overwrite, names=DATASET_NAMES, what="a dataset"
    ) as tmp:
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            jobs = pool.map(lambda i: convert(i, tmp), indices)
            for _ in tqdm(jobs, total=len(indices), desc="prepare CelebAMask-HQ", disable=not progress):
                pass
        meta = {"generator": "segformer data prepare", "source": str(raw_root), "size": size, "limit": limit}
        write_json(tmp / "dataset.json", {**meta, **counts})
    return counts
