"""Datasets on tiny generated fixtures: the folder layout with seeded hold-outs, ADE20K, Cityscapes, layout
detection, per-sample seeding that does not depend on DataLoader workers, and bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segformer import SegformerError
from segformer.data.datasets import ADE20KDataset, CityscapesDataset, FolderDataset, holdout_stems
from segformer.data.io import save_image, save_mask
from segformer.data.labels import CELEBAMASK
from segformer.data.layouts import build_datasets, detect_kind
from segformer.data.synthetic import generate_face
from segformer.data.transforms import build_transform


def write_pairs(root: Path, split: str = "train", n: int = 6, size: int = 32, seed: int = 0) -> list[str]:
    """`n` synthetic faces in ROOT/<split>/images|masks; returns the stems."""
    stems = []
    for i in range(n):
        image, mask = generate_face(np.random.default_rng((seed, i)), size)
        stem = f"face{i:02d}"
        save_image(root / split / "images" / f"{stem}.png", image)
        save_mask(root / split / "masks" / f"{stem}.png", mask, CELEBAMASK)
        stems.append(stem)
    return stems


def test_folder_dataset_raw_and_transformed(tmp_path):
    stems = write_pairs(tmp_path)
    ds = FolderDataset(tmp_path)
    assert len(ds) == 6 and ds.stems == stems and ds.label_set is CELEBAMASK
    assert ds.image_path(2) == tmp_path / "train" / "images" / "face02.png"
    assert ds.mask_path(2) == tmp_path / "train" / "masks" / "face02.png"
    image, mask = ds[2]
    expected_image, expected_mask = generate_face(np.random.default_rng((0, 2)), 32)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(mask, expected_mask)
    ds.transform = build_transform("both", 24)
    x, y = ds[0]
    assert x.shape == (3, 24, 24) and y.shape == (24, 24) and y.dtype == torch.int64
    with pytest.raises(IndexError):
        ds[6]


def test_subset_by_stems_and_unlabelled_split(tmp_path):
    write_pairs(tmp_path)
    ds = FolderDataset(tmp_path, stems=["face04", "face01"])
    assert ds.stems == ["face04", "face01"]
    with pytest.raises(SegformerError, match="no image named 'nope'"):
        FolderDataset(tmp_path, stems=["nope"])
    save_image(tmp_path / "test" / "images" / "x.jpg", np.zeros((8, 8, 3), np.uint8))
    image, mask = FolderDataset(tmp_path, "test")[0]
    assert image.shape == (8, 8, 3) and mask is None


def test_epoch_seeding_is_per_sample(tmp_path):
    write_pairs(tmp_path, n=4)
    ds = FolderDataset(tmp_path, transform=build_transform("both", 24), seed=3)
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a[0])
    ds.set_epoch(0)
    assert torch.equal(ds[1][0], a[0])
    # worker processes load different samples but each sample's stream is the same
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers)
        batches.append([x for x, _ in loader])
    for x0, x2 in zip(*batches, strict=True):
        torch.testing.assert_close(x0, x2, rtol=0, atol=0)


def test_holdout_is_seeded_and_disjoint(tmp_path):
    stems = [f"s{i:03d}" for i in range(50)]
    train, val = holdout_stems(stems, 0.2, seed=1)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == stems
    assert holdout_stems(list(reversed(stems)), 0.2, seed=1) == (train, val)  # listing order irrelevant
    assert holdout_stems(stems, 0.2, seed=2)[1] != val
    assert len(holdout_stems(stems[:3], 0.1, 0)[1]) == 1  # never empty when asked for
    with pytest.raises(SegformerError, match="val_fraction"):
        holdout_stems(stems, 1.0, 0)


def test_folder_splits_uses_val_when_present(tmp_path):
    write_pairs(tmp_path, n=10)
    train, val = build_datasets(tmp_path, "folder", val_fraction=0.3, seed=0)
    assert len(train) == 7 and len(val) == 3 and not set(train.stems) & set(val.stems)
    assert build_datasets(tmp_path, "folder", val_fraction=0.3, seed=0)[1].stems == val.stems
    write_pairs(tmp_path, "val", n=2, seed=9)
    train, val = build_datasets(tmp_path, "folder", val_fraction=0.3)
    assert len(train) == 10 and len(val) == 2 and val.split == "val"


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(SegformerError, match=r"train/images: folder not found"):
        FolderDataset(tmp_path)
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir()
    with pytest.raises(SegformerError, match=r"train/images: no images found"):
        FolderDataset(tmp_path)
    write_pairs(tmp_path, n=3)
    (tmp_path / "train" / "masks" / "face01.png").unlink()
    with pytest.raises(SegformerError, match=r"images/face01.png: has no mask in masks/ \(1 unpaired"):
        FolderDataset(tmp_path)


def test_size_mismatch_is_reported_at_load(tmp_path):
    write_pairs(tmp_path, n=2)
    save_mask(tmp_path / "train" / "masks" / "face01.png", np.zeros((16, 20), np.uint8), CELEBAMASK)
    ds = FolderDataset(tmp_path)
    ds[0]
    with pytest.raises(
        SegformerError, match=r"masks/face01.png: mask is 20x16 but its image face01.png is 32x32"
    ):
        ds[1]


def test_exif_rotated_image_pairs_with_its_displayed_size(tmp_path):
    stored = np.zeros((20, 30, 3), np.uint8)  # stored landscape, displayed portrait (orientation 6)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    (tmp_path / "train" / "images").mkdir(parents=True)
    img.save(tmp_path / "train" / "images" / "p.jpg", exif=exif.tobytes())
    save_mask(tmp_path / "train" / "masks" / "p.png", np.ones((30, 20), np.uint8), CELEBAMASK)
    image, mask = FolderDataset(tmp_path)[0]
    assert image.shape == (30, 20, 3) and mask.shape == (30, 20)


def make_ade(root: Path) -> None:
    base = root / "ADEChallengeData2016"
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            name = f"ADE_{split[:5]}_{i:08d}"
            save_image(base / "images" / split / f"{name}.jpg", np.full((12, 16, 3), 90, np.uint8))
            ann = np.zeros((12, 16), np.uint8)
            ann[:, 4:8], ann[:, 8:12], ann[:, 12:] = 1, 150, 3
            (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ann, "L").save(base / "annotations" / split / f"{name}.png")


def test_ade20k_reduced_labels(tmp_path):
    make_ade(tmp_path)
    assert detect_kind(tmp_path) == "ade20k" and detect_kind(tmp_path / "ADEChallengeData2016") == "ade20k"
    ds = ADE20KDataset(tmp_path, "train")
    assert len(ds) == 3 and ds.label_set.name == "ade20k"
    _, mask = ds[0]
    np.testing.assert_array_equal(mask[0], [255] * 4 + [0] * 4 + [149] * 4 + [2] * 4)
    train, val = build_datasets(tmp_path)
    assert (len(train), len(val)) == (3, 2)
    with pytest.raises(SegformerError, match="uses the ade20k label set"):
        build_datasets(tmp_path, label_set="celebamask")


def make_cityscapes(root: Path) -> None:
    for split, city in (("train", "aachen"), ("val", "lindau")):
        stem = f"{city}_000000_000019"
        save_image(
            root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", np.zeros((8, 12, 3), np.uint8)
        )
        ids = np.zeros((8, 12), np.uint8)
        ids[:, 3:6], ids[:, 6:9], ids[:, 9:] = 7, 26, 29  # road, car, caravan (not evaluated)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids, "L").save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def test_cityscapes_train_ids(tmp_path):
    make_cityscapes(tmp_path)
    assert detect_kind(tmp_path) == "cityscapes"
    ds = CityscapesDataset(tmp_path, "train")
    _, mask = ds[0]
    np.testing.assert_array_equal(mask[0], [255] * 3 + [0] * 3 + [13] * 3 + [255] * 3)
    train, val = build_datasets(tmp_path, kind="cityscapes")
    assert len(train) == len(val) == 1 and val.stems == ["lindau_000000_000019_leftImg8bit"]
    (tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(SegformerError, match=r"lindau_000000_000019_leftImg8bit.png: no mask \(expected"):
        CityscapesDataset(tmp_path, "val")


def test_layout_detection(tmp_path):
    write_pairs(tmp_path / "f", n=2)
    assert detect_kind(tmp_path / "f") == "folder"
    train, val = build_datasets(tmp_path / "f", val_fraction=0.5)
    assert len(train) == len(val) == 1
    (tmp_path / "raw" / "CelebA-HQ-img").mkdir(parents=True)
    (tmp_path / "raw" / "CelebAMask-HQ-mask-anno").mkdir()
    with pytest.raises(
        SegformerError, match="raw CelebAMask-HQ; convert it first with `segformer data prepare"
    ):
        detect_kind(tmp_path / "raw")
    with pytest.raises(SegformerError, match="unknown dataset layout"):
        detect_kind(tmp_path)
    with pytest.raises(SegformerError, match="dataset folder not found"):
        detect_kind(tmp_path / "missing")
    with pytest.raises(SegformerError, match="unknown dataset kind 'coco'"):
        build_datasets(tmp_path, kind="coco")


# -- the layout table and the one split function ---------------------------------------------------


def test_layout_table_decides_dataset_label_set_and_recipe(tmp_path):
    from segformer.data.layouts import LAYOUTS, default_recipe, get_layout, load_split

    assert list(LAYOUTS) == ["ade20k", "cityscapes", "folder"]  # detection order
    write_pairs(tmp_path / "f", n=10)
    assert (
        get_layout(tmp_path / "f").name == "folder"
        and default_recipe(tmp_path / "f") == LAYOUTS["folder"].recipe
    )
    assert default_recipe(None) == "microsegformer-celebamask"
    # train and val of a folder without val/ are the two halves of one seeded hold-out, whoever asks.
    train = load_split(tmp_path / "f", "train", val_fraction=0.3, split_seed=4)
    val = load_split(tmp_path / "f", "val", val_fraction=0.3, split_seed=4)
    assert (train.stems, val.stems) == holdout_stems([f"face{i:02d}" for i in range(10)], 0.3, 4)
    assert load_split(tmp_path / "f", "val", label_set="ce7454").label_set is CELEBAMASK
    with pytest.raises(
        SegformerError, match=r"unknown dataset kind 'coco'; known: auto, ade20k, cityscapes, folder"
    ):
        load_split(tmp_path / "f", "val", kind="coco")


def test_unknown_layout_is_an_error_never_cityscapes(tmp_path):
    from segformer.data.layouts import load_split

    (tmp_path / "d" / "pictures").mkdir(parents=True)
    with pytest.raises(
        SegformerError, match=r"unknown dataset layout \(expected ade20k: .*folder: train/images"
    ):
        load_split(tmp_path / "d", "val")


def test_missing_paths_are_named_as_missing(tmp_path):
    from segformer.data.layouts import load_split

    with pytest.raises(SegformerError, match=r"nope: dataset folder not found \(the path does not exist\)$"):
        load_split(tmp_path / "nope", "val")
    with pytest.raises(SegformerError, match=r"nope: dataset folder not found \(the path does not exist\)$"):
        load_split(tmp_path / "nope", "val", kind="folder")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SegformerError, match=r"file\.txt: not a folder"):
        load_split(tmp_path / "file.txt", "val")


def test_data_check_on_a_missing_path_says_it_does_not_exist(tmp_path, capsys):
    from segformer.cli import main

    assert main(["data", "check", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"segformer data: error: {tmp_path / 'nope'}: dataset folder not found (the path does not exist)"
    )


# -- data errors are data errors ---------------------------------------------------------------------


def write_bad_mask(root: Path, stem: str = "face03", value: int = 50, split: str = "train") -> Path:
    path = root / split / "masks" / f"{stem}.png"
    mask = np.array(Image.open(path))
    mask[:4, :4] = value
    Image.fromarray(mask).save(path)
    return path


def test_mask_values_outside_the_label_set_name_the_file_and_the_fix(tmp_path):
    from segformer.data.layouts import load_split

    write_pairs(tmp_path, n=6)
    bad = write_bad_mask(tmp_path)
    ds = load_split(tmp_path, "train", val_fraction=0.0)
    i = ds.stems.index("face03")
    with pytest.raises(SegformerError) as err:
        ds[i]
    assert str(err.value) == (
        f"{bad}: out_of_range: 16 pixels with values [50] outside 0-18 and 255 (celebamask); "
        f"`segformer data check {tmp_path} --fix OUT` writes a corrected copy, or set data.bad_labels=ignore"
    )
    ds[0]  # clean masks load


def test_bad_labels_ignore_maps_them_to_the_ignore_index(tmp_path):
    from segformer.data.layouts import load_split

    write_pairs(tmp_path, n=6)
    write_bad_mask(tmp_path)
    clean = generate_face(np.random.default_rng((0, 3)), 32)[1]
    ds = load_split(tmp_path, "train", val_fraction=0.0, bad_labels="ignore")
    _, mask = ds[ds.stems.index("face03")]
    expected = clean.copy()
    expected[:4, :4] = 255
    np.testing.assert_array_equal(mask, expected)


def test_a_dataset_without_masks_is_refused_by_name(tmp_path):
    from segformer.data.layouts import load_split

    save_image(tmp_path / "train" / "images" / "x.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        SegformerError, match=r"train: no masks/ folder, so nothing to train or score against"
    ):
        load_split(tmp_path, "val")


def test_a_data_error_in_a_dataloader_worker_stays_one_line(tmp_path):
    from torch.utils.data import DataLoader

    from segformer.data.layouts import load_split

    write_pairs(tmp_path, n=2)
    bad = write_bad_mask(tmp_path, "face00")
    ds = load_split(tmp_path, "train", val_fraction=0.0)
    with pytest.raises(SegformerError) as err:
        list(DataLoader(ds, num_workers=1, collate_fn=lambda b: b))
    assert str(err.value).startswith(f"{bad}: out_of_range: ") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "extra", [[], ["--set", "data.cache=false", "--workers", "1"]], ids=["cached", "worker"]
)
def test_train_reports_bad_masks_as_data_check_does(tmp_path, extra, capsys):
    from segformer.cli import main

    write_pairs(tmp_path / "d", n=8)
    bad = write_bad_mask(tmp_path / "d", "face05")
    argv = ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--epochs", "1"]
    argv += ["--batch-size", "2", "--img-size", "32", "--quiet", "--set", "data.val_fraction=0.25"]
    argv += ["--set", "model.embed_dims=[8,8,8,8]", "--set", "model.decoder_dim=8", *extra]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"segformer train: error: {bad}: out_of_range: 16 pixels with values [50]")
    hint = "writes a corrected copy, or set data.bad_labels=ignore"
    assert err.endswith(f"`segformer data check {tmp_path / 'd'} --fix OUT` {hint}")


def test_eval_reports_bad_masks_as_data_check_does(tmp_path):
    from segformer import create_model
    from segformer.engine.evaluate import evaluate_model

    write_pairs(tmp_path, n=2)
    write_pairs(tmp_path, "test", n=3)
    bad = write_bad_mask(tmp_path, "face01", split="test")
    model = create_model("microsegformer", embed_dims=(8, 8, 8, 8), decoder_dim=8)
    with pytest.raises(SegformerError, match=rf"^{bad}: out_of_range: .* --fix OUT` writes a corrected copy"):
        evaluate_model(model, tmp_path, "test", img_size=32, progress=False)
