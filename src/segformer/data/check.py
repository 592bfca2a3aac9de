"""Dataset checks: find what would break or silently poison training, and write a fixed
copy.

For a folder-layout dataset (every split under ROOT, or one) the check reports:

- ``unreadable``: an image or mask that does not decode (truncated, corrupt, a colour mask, ...);
- ``missing_mask`` / ``missing_image``: a file without its partner; ``duplicate``: two images with one stem;
- ``size_mismatch``: image and mask of different sizes (after the image's EXIF rotation);
- ``out_of_range``: mask values that are neither a class id nor the ignore index;
- ``mirrored``: a mask whose left/right classes are swapped. For every flip pair of the label set whose
  two classes are both present, the horizontal centroids are compared; the first class of a pair
  (CelebAMask-HQ: the subject's left) belongs on the image's right. A mask is mirrored when at least one
  pair is present and every present pair lies on the wrong side. In the CE7454 training data about 7%
  of the masks are like that: the annotator's left and right were swapped for the whole face.

A split without a ``masks`` folder (an unlabelled test split) is only checked for unreadable images.

`fix_dataset` writes a corrected copy: mirrored masks get their left/right ids swapped back (the image is
not mirrored, only the labels were), out-of-range values become the ignore index, and every sample with
an unreadable file, a missing partner, a duplicate stem or a size mismatch is left out. Files needing no
change are copied byte for byte.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import SegformerError
from ..fileio import staged_output, write_json
from .datasets import scan_folder
from .io import copy_file, load_image, load_mask, save_mask
from .labels import LabelSet, get_label_set
from .synthetic import DATASET_NAMES

KINDS = (
    "unreadable",
    "missing_mask",
    "missing_image",
    "duplicate",
    "size_mismatch",
    "out_of_range",
    "mirrored",
)
# Problems that make a sample unusable: `fix_dataset` leaves the sample out.
DROPPED = ("unreadable", "missing_mask", "missing_image", "duplicate", "size_mismatch")


@dataclass
class Problem:
    split: str
    stem: str
    file: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}: {self.message}"


@dataclass
class CheckReport:
    root: str
    label_set: str
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    side_checked: int = 0  # masks holding at least one complete left/right pair

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(p.kind for p in self.problems)
        return {k: c[k] for k in KINDS if c[k]}

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def num_masks(self) -> int:
        return sum(s["masks_read"] for s in self.splits.values())

    @property
    def mirrored_fraction(self) -> float:
        """Mirrored masks over the masks that were read."""
        return self.counts.get("mirrored", 0) / max(1, self.num_masks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "label_set": self.label_set,
            "ok": self.ok,
            "splits": self.splits,
            "counts": self.counts,
            "masks_read": self.num_masks,
            "masks_with_lr_pairs": self.side_checked,
            "mirrored_fraction": self.mirrored_fraction,
            "problems": [asdict(p) for p in self.problems],
        }

    def format(self, max_per_kind: int = 10) -> str:
        lines = [f"{self.root} ({self.label_set} labels)"]
        for split, s in self.splits.items():
            if s["labelled"]:
                lines.append(f"  {split}: {s['images']} images, {s['masks']} masks, {s['pairs']} pairs")
            else:
                lines.append(f"  {split}: {s['images']} images (no masks folder: unlabelled)")
        if self.ok:
            lines.append("no problems found")
            return "\n".join(lines)
        for kind, n in self.counts.items():
            extra = ""
            if kind == "mirrored":
                extra = f" ({100 * self.mirrored_fraction:.1f}% of {self.num_masks} masks)"
            lines.append(f"{kind}: {n}{extra}")
            shown = [p for p in self.problems if p.kind == kind]
            lines += [f"  {p.file}: {p.message}" for p in shown[:max_per_kind]]
            if len(shown) > max_per_kind:
                lines.append(f"  ... and {len(shown) - max_per_kind} more (--json lists all)")
        lines.append(f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def mirror_votes(mask: np.ndarray, label_set: LabelSet) -> tuple[int, int]:
    """(pairs present, pairs on the wrong side) of a mask: for each flip pair (a, b) with both classes
    present, is a's mean column left of b's? (a belongs on the image's right.)"""
    if not label_set.flip_pairs:
        return 0, 0
    h, w = mask.shape
    flat = mask.ravel()
    counts = np.bincount(flat, minlength=256)
    cols = np.bincount(flat, weights=np.tile(np.arange(w, dtype=np.float64), h), minlength=256)
    present = wrong = 0
    for a, b in label_set.flip_pairs:
        if counts[a] and counts[b]:
            present += 1
            wrong += cols[a] / counts[a] < cols[b] / counts[b]
    return present, int(wrong)


def is_mirrored(mask: np.ndarray, label_set: LabelSet | str) -> bool:
    present, wrong = mirror_votes(mask, get_label_set(label_set))
    return present > 0 and wrong == present


def _splits_of(root: Path, split: str | None) -> list[str]:
    if not root.exists():
        raise SegformerError(f"{root}: dataset folder not found (the path does not exist)")
    if split is not None:
        return [split]
    splits = sorted(p.name for p in root.iterdir() if (p / "images").is_dir()) if root.is_dir() else []
    if not splits:
        raise SegformerError(
            f"{root}: no <split>/images folders (expected the folder layout, e.g. train/images)"
        )
    return splits


def _check_pair(
    split: str, stem: str, image_path: Path, mask_path: Path | None, label_set: LabelSet
) -> tuple[list[Problem], bool, bool]:
    """Problems of one sample, whether its mask was read, whether the mask holds a left/right pair."""
    out: list[Problem] = []
    image = mask = None
    try:
        image = load_image(image_path)
    except SegformerError as err:
        out.append(Problem(split, stem, str(image_path), "unreadable", _strip(err, image_path)))
    if mask_path is None:
        return out, False, False
    try:
        mask = load_mask(mask_path, label_set)
    except SegformerError as err:
        out.append(Problem(split, stem, str(mask_path), "unreadable", _strip(err, mask_path)))
    if mask is None:
        return out, False, False
    if image is not None and image.shape[:2] != mask.shape:
        out.append(
            Problem(
                split,
                stem,
                str(mask_path),
                "size_mismatch",
                f"mask {mask.shape[1]}x{mask.shape[0]}, image {image.shape[1]}x{image.shape[0]}",
            )
        )
    bad = ~label_set.valid_lut()[mask]
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))
        out.append(
            Problem(
                split,
                stem,
                str(mask_path),
                "out_of_range",
                f"{int(bad.sum())} pixels with values {values[:8]}{'...' if len(values) > 8 else ''} "
                f"outside 0-{label_set.num_classes - 1} and {label_set.ignore_index}",
            )
        )
    present, wrong = mirror_votes(mask, label_set)
    if present and wrong == present:
        out.append(
            Problem(
                split, stem, str(mask_path), "mirrored", f"all {present} left/right pair(s) on the wrong side"
            )
        )
    return out, True, present > 0


def _strip(err: SegformerError, path: Path) -> str:
    """The error's message without the leading path (the problem already names the file)."""
    msg = str(err)
    prefix = f"{path}: "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


def check_dataset(
    root: str | Path,
    split: str | None = None,
    label_set: LabelSet | str = "celebamask",
    progress: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check every split of a folder-layout dataset (or only `split`); see the module docstring."""
    root = Path(root)
    label_set = get_label_set(label_set)
    report = CheckReport(str(root), label_set.name)
    workers = workers or min(4, os.cpu_count() or 1)
    for name in _splits_of(root, split):
        scan = scan_folder(root, name)
        for p in scan.missing_masks:
            report.problems.append(
                Problem(name, p.stem, str(p), "missing_mask", "image has no mask in masks/")
            )
        for p in scan.missing_images:
            report.problems.append(
                Problem(name, p.stem, str(p), "missing_image", "mask has no image in images/")
            )
        for p in scan.duplicates:
            report.problems.append(
                Problem(
                    name, p.stem, str(p), "duplicate", f"second image with stem {p.stem!r}; only one is used"
                )
            )
        jobs = [
            (name, s, scan.images[s], scan.masks.get(s) if scan.has_masks else None, label_set)
            for s in scan.stems
        ]
        masks_read = 0
        with ThreadPoolExecutor(workers) as pool:  # decoding releases the GIL
            results = pool.map(lambda job: _check_pair(*job), jobs)
            for problems, mask_read, paired in tqdm(
                results, total=len(jobs), desc=f"check {name}", disable=not progress
            ):
                report.problems += problems
                masks_read += mask_read
                report.side_checked += paired
        report.splits[name] = {
            "labelled": int(scan.has_masks),
            "images": len(scan.images) + len(scan.duplicates),
            "masks": len(scan.masks),
            "pairs": len(scan.stems) if scan.has_masks else 0,
            "masks_read": masks_read,
        }
    return report


def fix_dataset(
    root: str | Path,
    out: str | Path,
    split: str | None = None,
    label_set: LabelSet | str = "celebamask",
    report: CheckReport | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Write a corrected copy of `root` to `out` (see the module docstring); returns what was done."""
    root, out = Path(root), Path(out)
    label_set = get_label_set(label_set)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise SegformerError(f"{out}: the fixed copy must go outside the dataset {root}")
    lut_flip, valid = label_set.flip_lut(), label_set.valid_lut()
    with staged_output(
        out, "data check", [root], overwrite, names=DATASET_NAMES, what="a fixed dataset"
    ) as tmp:
        report = report or check_dataset(root, split, label_set, progress)
        by_stem: dict[tuple[str, str], set[str]] = {}
        for p in report.problems:
            by_stem.setdefault((p.split, p.stem), set()).add(p.kind)
        done = Counter()
        for name in report.splits:
            scan = scan_folder(root, name)
            for stem in tqdm(scan.stems, desc=f"fix {name}", disable=not progress):
                kinds = by_stem.get((name, stem), set())
                if kinds & set(DROPPED):
                    done["dropped"] += 1
                    continue
                image = scan.images[stem]
                copy_file(image, tmp / name / "images" / image.name)
                done["images"] += 1
                if not scan.has_masks:
                    continue
                mask_path = scan.masks[stem]
                if kinds & {"mirrored", "out_of_range"}:
                    mask = load_mask(mask_path, label_set)
                    if "out_of_range" in kinds:
                        mask = np.where(valid[mask], mask, label_set.ignore_index).astype(np.uint8)
                        done["relabelled"] += 1
                    if "mirrored" in kinds:
                        mask = lut_flip[mask]
                        done["unmirrored"] += 1
                    save_mask(tmp / name / "masks" / mask_path.name, mask, label_set)
                else:
                    copy_file(mask_path, tmp / name / "masks" / mask_path.name)
                done["masks"] += 1
            # files without a partner never reach the loop above
            done["dropped"] += sum(
                p.split == name and p.kind in ("missing_mask", "missing_image") for p in report.problems
            )
        counts = {k: done[k] for k in ("images", "masks", "unmirrored", "relabelled", "dropped")}
        meta = {"generator": "segformer data check --fix", "source": str(root), "label_set": label_set.name}
        write_json(tmp / "dataset.json", {**meta, **counts})
    return counts
