"""`data check` and `--fix`: each problem kind found on a planted fixture, the fixed copy is clean, mirrored
masks on the shared CE7454 data (about 7%), and augmentation previews flagged no more than their source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segformer.cli import main
from segformer.data.check import check_dataset, fix_dataset, is_mirrored, mirror_votes
from segformer.data.io import load_mask, save_mask
from segformer.data.labels import CELEBAMASK
from segformer.data.preview import preview_dataset
from test_data_datasets import write_pairs

from conftest import run_cli


def test_mirror_detection_on_hand_made_masks():
    m = np.zeros((4, 10), np.uint8)
    m[1, 7], m[1, 2] = 4, 5  # l_eye on the image's right: correct
    assert mirror_votes(m, CELEBAMASK) == (1, 0) and not is_mirrored(m, "celebamask")
    m[1, 7], m[1, 2] = 5, 4
    assert is_mirrored(m, CELEBAMASK)
    m[2, 8], m[2, 1] = 6, 7  # brows correct while eyes are swapped: not a mirrored annotation
    assert mirror_votes(m, CELEBAMASK) == (2, 1) and not is_mirrored(m, CELEBAMASK)
    m[2, 8], m[2, 1] = 7, 6
    assert is_mirrored(m, CELEBAMASK)
    lone = np.zeros((4, 10), np.uint8)
    lone[1, 1] = 4  # one eye alone says nothing about sides
    assert mirror_votes(lone, CELEBAMASK) == (0, 0) and not is_mirrored(lone, CELEBAMASK)


def planted(root: Path) -> dict[str, str]:
    """A 10-pair dataset with one instance of every problem; returns kind -> the file it names."""
    write_pairs(root, n=10)
    imgs, masks = root / "train" / "images", root / "train" / "masks"
    m = load_mask(masks / "face01.png")
    save_mask(masks / "face01.png", CELEBAMASK.flip_lut()[m], CELEBAMASK)  # labels mirrored
    m = load_mask(masks / "face02.png")
    m[:3, :3] = 40
    save_mask(masks / "face02.png", m, CELEBAMASK)  # out of range
    save_mask(masks / "face03.png", np.zeros((16, 32), np.uint8), CELEBAMASK)  # size mismatch
    (masks / "face04.png").unlink()  # missing mask
    save_mask(masks / "orphan.png", np.zeros((32, 32), np.uint8), CELEBAMASK)  # missing image
    (imgs / "face05.png").write_bytes((imgs / "face05.png").read_bytes()[:100])  # truncated
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(imgs / "face06.jpg")  # second face06 image
    return {
        "mirrored": str(masks / "face01.png"),
        "out_of_range": str(masks / "face02.png"),
        "size_mismatch": str(masks / "face03.png"),
        "missing_mask": str(imgs / "face04.png"),
        "missing_image": str(masks / "orphan.png"),
        "unreadable": str(imgs / "face05.png"),
        "duplicate": str(imgs / "face06.png"),  # face06.jpg sorts first and is the one kept
    }


def test_every_planted_problem_is_found(tmp_path):
    expected = planted(tmp_path)
    report = check_dataset(tmp_path, progress=False)
    assert not report.ok
    assert {p.kind: p.file for p in report.problems} == expected
    assert report.counts == {kind: 1 for kind in expected}
    assert report.splits["train"]["pairs"] == 9 and report.num_masks == 9
    assert report.mirrored_fraction == pytest.approx(1 / 9)
    out = report.to_dict()
    assert json.loads(json.dumps(out))["counts"]["mirrored"] == 1
    text = report.format()
    assert "out_of_range: 1" in text and "values [40]" in text


def test_fix_writes_a_clean_copy(tmp_path):
    planted(tmp_path / "bad")
    clean_source = tmp_path / "ref"
    write_pairs(clean_source, n=10)
    done = fix_dataset(tmp_path / "bad", tmp_path / "fixed", progress=False)
    assert done["unmirrored"] == 1 and done["relabelled"] == 1
    assert done["dropped"] == 5  # unreadable, size mismatch, duplicate stem, missing mask, orphan mask
    report = check_dataset(tmp_path / "fixed", progress=False)
    assert report.ok, report.format()
    fixed = tmp_path / "fixed" / "train"
    assert sorted(p.stem for p in (fixed / "images").iterdir()) == [
        "face00",
        "face01",
        "face02",
        "face07",
        "face08",
        "face09",
    ]
    # un-mirrored labels equal the original ones; out-of-range pixels became ignore
    np.testing.assert_array_equal(
        load_mask(fixed / "masks" / "face01.png"), load_mask(clean_source / "train" / "masks" / "face01.png")
    )
    m = load_mask(fixed / "masks" / "face02.png")
    assert (m[:3, :3] == 255).all()
    np.testing.assert_array_equal(m[3:], load_mask(clean_source / "train" / "masks" / "face02.png")[3:])
    # untouched files are byte copies
    src = tmp_path / "bad" / "train"
    assert (fixed / "images" / "face07.png").read_bytes() == (src / "images" / "face07.png").read_bytes()
    assert (fixed / "masks" / "face07.png").read_bytes() == (src / "masks" / "face07.png").read_bytes()


def test_fix_refuses_to_write_into_the_dataset(tmp_path):
    write_pairs(tmp_path, n=2)
    from segformer import SegformerError

    with pytest.raises(SegformerError, match="must go outside the dataset"):
        fix_dataset(tmp_path, tmp_path / "fixed", progress=False)


def test_cli_exit_codes_json_and_fix(tmp_path, capsys):
    write_pairs(tmp_path / "clean", n=3)
    assert main(["data", "check", str(tmp_path / "clean")]) == 0
    assert "no problems found" in capsys.readouterr().out
    planted(tmp_path / "bad")
    assert main(["data", "check", str(tmp_path / "bad"), "--json", "--fix", str(tmp_path / "fixed")]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["counts"]["mirrored"] == 1 and out["fix"]["unmirrored"] == 1
    assert main(["data", "check", str(tmp_path / "fixed")]) == 0


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    result = run_cli("data", "check", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        # A missing path is named as missing, not blamed on the layout.
        f"segformer data: error: {tmp_path / 'nowhere'}: dataset folder not found (the path does not exist)"
    ]


def test_shared_data_has_about_seven_percent_mirrored_masks(shared_data):
    report = check_dataset(shared_data, "train", progress=False)
    assert set(report.counts) == {"mirrored"}  # nothing else is wrong with it
    assert 0.05 < report.mirrored_fraction < 0.09
    assert report.side_checked > 0.95 * report.num_masks


def test_geometric_preview_is_flagged_no_more_than_its_source(shared_data, tmp_path):
    """Rotation, scaling and cropping keep left/right consistent; only the flip moves parts across, and it
    renames them. So a `geometric` preview of 150 images is flagged for exactly the source's mirrored masks
    (or fewer, when a crop cuts a pair)."""
    out = preview_dataset(
        shared_data, tmp_path / "prev", "geometric", num=150, seed=0, size=128, progress=False
    )
    preview = check_dataset(out, progress=False)
    assert set(preview.counts) <= {"mirrored"}
    source_mirrored = {p.stem for p in check_dataset(shared_data, "train", progress=False).problems}
    flagged = {p.stem.split("_", 1)[1] for p in preview.problems}
    sources = {p.stem.split("_", 1)[1] for p in (out / "train" / "images").iterdir()}
    assert flagged <= source_mirrored
    assert len(flagged) >= 0.8 * len(source_mirrored & sources) > 0
