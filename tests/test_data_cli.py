"""`segformer data synth` and `data preview`: what they write, and their bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segformer.cli import main
from segformer.data.check import check_dataset
from segformer.data.datasets import FolderDataset
from segformer.data.io import load_mask
from test_data_datasets import write_pairs


def test_synth_writes_the_folder_layout(tmp_path, capsys):
    out = tmp_path / "faces"
    args = ["data", "synth", str(out), "--num", "5", "--size", "32", "--seed", "3", "--val-fraction", "0.4"]
    assert main(args) == 0
    assert "wrote 5 synthetic faces (32x32)" in capsys.readouterr().out
    assert len(FolderDataset(out, "train")) == 3 and len(FolderDataset(out, "val")) == 2
    first = load_mask(out / "val" / "masks" / "synth_000000.png")
    assert main([*args, "--overwrite"]) == 0
    np.testing.assert_array_equal(load_mask(out / "val" / "masks" / "synth_000000.png"), first)  # seeded


@pytest.mark.parametrize("preset", ["none", "geometric", "photometric", "both"])
def test_preview_writes_samples_and_a_contact_sheet(tmp_path, preset):
    write_pairs(tmp_path / "ds", n=4, size=40)
    out = tmp_path / "prev"
    assert (
        main(["data", "preview", str(tmp_path / "ds"), "--augment", preset, "--num", "6", "--out", str(out)])
        == 0
    )
    ds = FolderDataset(out)  # readable by every tool, as any folder dataset
    assert len(ds) == 6 and {s.split("_", 1)[1] for s in ds.stems} <= {f"face{i:02d}" for i in range(4)}
    image, mask = ds[0]
    assert image.shape == (40, 40, 3) and mask.shape == (40, 40)
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size == (4 * 2 * 128, 2 * 128)  # 6 samples, 4 (image, mask) pairs a row
    assert check_dataset(out, progress=False).ok


def test_preview_size_and_seed(tmp_path):
    write_pairs(tmp_path / "ds", n=3, size=40)
    for name in ("a", "b"):
        main(
            [
                "data",
                "preview",
                str(tmp_path / "ds"),
                "--num",
                "2",
                "--size",
                "24",
                "--seed",
                "1",
                "--out",
                str(tmp_path / name),
            ]
        )
    a, b = FolderDataset(tmp_path / "a"), FolderDataset(tmp_path / "b")
    assert a.stems == b.stems and a[0][0].shape == (24, 24, 3)
    np.testing.assert_array_equal(a[1][1], b[1][1])


def test_bad_input_is_one_line(tmp_path, capsys):
    """(The traceback-free exit of a real process is covered in test_data_check.py.)"""
    write_pairs(tmp_path / "ds", n=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    cases = [
        (
            ["data", "preview", str(tmp_path / "ds"), "--out", str(tmp_path / "busy")],
            "busy: already exists and is not empty",
        ),
        (
            ["data", "preview", str(tmp_path / "none"), "--out", str(tmp_path / "p")],
            "none/train/images: folder not found",
        ),
        (["data", "synth", str(tmp_path / "busy")], "busy: already exists and is not empty"),
        (["data", "synth", str(tmp_path / "s"), "--num", "0"], "need num >= 1"),
        (["data", "check", str(tmp_path / "ds"), "--label-set", "faces"], "unknown label set 'faces'"),
    ]
    for args, message in cases:
        assert main(args) == 1, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("segformer data: error: ") and message in lines[0], (
            lines
        )
