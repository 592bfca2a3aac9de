"""Raw CelebAMask-HQ preparation on a fake raw tree: parts merged in the official order (later parts win),
images resized to the mask size, the official CelebA split, and errors naming the missing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segformer import SegformerError
from segformer.cli import main
from segformer.data.io import load_image, load_mask
from segformer.data.labels import CELEBAMASK
from segformer.data.prepare import merge_parts, prepare_celebamask

# HQ index -> CelebA index (0-based; the file is index + 1): 2 is file 182638.jpg, the first test image
ORIG = {0: 5, 1: 162771, 2: 182637, 3: 182638, 4: 202598, 5: 100}


def part(size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def make_raw(root: Path, n: int = 6, mapping: bool = True, partition: bool = True) -> None:
    """n HQ images (64 x 64) with 16 x 16 part masks: skin everywhere, hair over the top rows, a nose, a
    necklace that the neck (a later part) partly covers, and l_eye on the image's right."""
    (root / "CelebA-HQ-img").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((64, 64, 3), 10 * i, np.uint8)).save(root / "CelebA-HQ-img" / f"{i}.jpg")
        folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        parts = {
            "skin": (0, 16, 0, 16),
            "hair": (0, 4, 0, 16),
            "nose": (6, 9, 7, 9),
            "l_eye": (5, 6, 10, 13),
            "neck_l": (12, 14, 4, 12),
            "neck": (13, 16, 4, 12),
        }
        for name, box in parts.items():
            Image.fromarray(part(16, box), "L").save(folder / f"{i:05d}_{name}.png")
    if mapping:
        lines = ["idx orig_idx orig_file"] + [f"{i} {ORIG[i]} {ORIG[i] + 1:06d}.jpg" for i in range(n)]
        (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    if partition:
        # CelebA: 1-based files; 000001-162770 train, 162771-182637 val, 182638-202599 test
        files = sorted(i + 1 for i in ORIG.values())
        lines = [f"{f:06d}.jpg {0 if f <= 162770 else 1 if f <= 182637 else 2}" for f in files]
        (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def test_parts_merge_in_the_official_order(tmp_path):
    make_raw(tmp_path, n=1)
    label = merge_parts(tmp_path / "CelebAMask-HQ-mask-anno", 0)
    ids = {name: CELEBAMASK.index(name) for name in CELEBAMASK.class_names}
    assert label[0, 0] == ids["hair"]  # hair (13) is painted after skin (1)
    assert label[10, 0] == ids["skin"] and label[7, 8] == ids["nose"] and label[5, 11] == ids["l_eye"]
    assert label[12, 5] == ids["neck_l"] and label[13, 5] == ids["neck"]  # neck (17) covers neck_l (16)


def test_prepare_applies_the_celeba_partition(tmp_path):
    make_raw(tmp_path / "raw")
    counts = prepare_celebamask(tmp_path / "raw", tmp_path / "out", size=None, progress=False)
    assert counts["split_rule"] == "CelebA partition (list_eval_partition.txt)"
    out = tmp_path / "out"
    assert sorted(p.stem for p in (out / "train" / "images").iterdir()) == ["0", "5"]
    assert sorted(p.stem for p in (out / "val" / "images").iterdir()) == ["1"]
    assert sorted(p.stem for p in (out / "test" / "masks").iterdir()) == ["2", "3", "4"]
    image, mask = load_image(out / "test" / "images" / "2.jpg"), load_mask(out / "test" / "masks" / "2.png")
    assert image.shape == (16, 16, 3) and mask.shape == (16, 16)  # images resized to the mask size
    assert abs(int(image.mean()) - 20) <= 2
    np.testing.assert_array_equal(mask, merge_parts(tmp_path / "raw" / "CelebAMask-HQ-mask-anno", 2))
    assert Image.open(out / "test" / "masks" / "2.png").mode == "P"


def test_split_fallbacks(tmp_path):
    make_raw(tmp_path / "a", partition=False)
    counts = prepare_celebamask(tmp_path / "a", tmp_path / "a_out", size=32, progress=False)
    assert counts["split_rule"] == "CelebA partition boundaries on the file numbers"
    assert (counts["train"], counts["val"], counts["test"]) == (2, 1, 3)  # as with the partition file
    assert load_mask(tmp_path / "a_out" / "train" / "masks" / "0.png").shape == (32, 32)
    make_raw(tmp_path / "b", mapping=False, partition=False)
    counts = prepare_celebamask(tmp_path / "b", tmp_path / "b_out", limit=3, progress=False)
    assert (counts["train"], counts["val"], counts["test"]) == (3, 0, 0)
    assert load_mask(tmp_path / "b_out" / "train" / "masks" / "0.png").shape == (512, 512)


def test_prepare_errors_name_the_files(tmp_path):
    with pytest.raises(SegformerError, match="CelebA-HQ-img: folder not found"):
        prepare_celebamask(tmp_path, tmp_path / "out", progress=False)
    make_raw(tmp_path / "raw", n=2)
    for p in (tmp_path / "raw" / "CelebAMask-HQ-mask-anno" / "0").glob("00001_*.png"):
        p.unlink()
    with pytest.raises(SegformerError, match=r"00001_<part>.png: no part masks for image 1"):
        prepare_celebamask(tmp_path / "raw", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written
    (tmp_path / "raw" / "list_eval_partition.txt").write_text("000006.jpg 7\n")
    with pytest.raises(SegformerError, match=r"list_eval_partition.txt:1: partition must be 0, 1 or 2"):
        prepare_celebamask(tmp_path / "raw", tmp_path / "out", progress=False)


def test_cli_prepare(tmp_path, capsys):
    make_raw(tmp_path / "raw")
    assert main(["data", "prepare", str(tmp_path / "raw"), str(tmp_path / "out"), "--size", "16"]) == 0
    assert "train 2, val 1, test 3 (CelebA partition" in capsys.readouterr().out
