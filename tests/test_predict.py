"""`segformer predict`: files, folders, globs and videos in; palette PNGs of class ids, overlays and
probabilities out; bad files reported by name and skipped, with the exit code saying so."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segformer import Predictor, create_model
from segformer.checkpoint import save_model
from segformer.cli import main
from segformer.data.io import load_image, load_mask
from segformer.data.labels import CELEBAMASK
from segformer.inference.files import collect_inputs

from conftest import run_cli, tiny_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    out = tmp_path_factory.mktemp("model") / "tiny"
    model = create_model(tiny_config("micro", num_classes=19))
    save_model(model, out, meta={"label_set": "celebamask", "image_size": 40})
    return out


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


@pytest.fixture
def folder(tmp_path) -> Path:
    """Good images of several sizes and modes, a truncated JPEG and a text file named .png."""
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_image(40, 40, 1)).save(d / "a.jpg", quality=95)
    Image.fromarray(_image(33, 51, 2)).save(d / "b.png")
    Image.fromarray(_image(27, 19, 3)[..., 0], "L").save(d / "c.png")
    rgba = np.dstack([_image(30, 30, 4), np.full((30, 30), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "d.png")
    (d / "e_truncated.jpg").write_bytes((d / "a.jpg").read_bytes()[:400])
    (d / "f_text.png").write_text("not an image")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def test_folder_with_corrupt_files(model_dir, folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--whole-image",
            str(model_dir),
            str(folder),
            "--out",
            str(out),
            "--quiet",
            "--batch-size",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "e_truncated.jpg" in err and "f_text.png" in err and "2 input(s) failed" in err
    # the label maps, and the manifest that says they are predict's (segformer.fileio.OutputFolder)
    assert sorted(p.name for p in out.iterdir()) == [
        ".segformer-manifest.json",
        "a.png",
        "b.png",
        "c.png",
        "d.png",
    ]
    predictor = Predictor(model_dir, faces=False)
    for stem in "abcd":
        image = load_image(next(folder.glob(f"{stem}.*")))
        png = Image.open(out / f"{stem}.png")
        assert png.mode == "P" and png.size == (image.shape[1], image.shape[0])
        # pixel values are class ids and the palette is the label set's
        np.testing.assert_array_equal(np.asarray(png), predictor(image))
        np.testing.assert_array_equal(load_mask(out / f"{stem}.png"), predictor(image))
        assert bytes(png.getpalette()) == CELEBAMASK.palette_bytes()


def test_files_globs_overlays_and_probabilities(model_dir, folder, tmp_path):
    out = tmp_path / "out"
    args = [
        "predict",
        "--whole-image",
        str(model_dir),
        str(folder / "a.jpg"),
        str(folder / "[bc].png"),
        "--out",
        str(out),
    ]
    assert main([*args, "--overlay", "--probs", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    for stem in "abc":
        mask = load_mask(out / f"{stem}.png")
        image = load_image(next(folder.glob(f"{stem}.*")))
        overlay = np.asarray(Image.open(out / "overlays" / f"{stem}.png"))
        assert overlay.shape == image.shape
        # background pixels show the image; the others are blended towards the class colour
        np.testing.assert_array_equal(overlay[mask == 0], image[mask == 0])
        probs = np.load(out / "probs" / f"{stem}.npy")
        assert probs.dtype == np.float16 and probs.shape == (19, *mask.shape)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=1e-2)
        chosen = np.take_along_axis(probs, mask[None].astype(np.int64), 0)[0]
        np.testing.assert_array_equal(chosen, probs.max(0))  # the mask is the argmax


def test_missing_inputs_and_collisions(model_dir, folder, tmp_path, capsys):
    out = tmp_path / "out"
    predict = ["predict", "--whole-image", str(model_dir)]
    assert main([*predict, str(folder / "a.jpg"), str(tmp_path / "nope*.jpg"), "--out", str(out)]) == 1
    assert "nope*.jpg: no such file" in capsys.readouterr().err
    assert (out / "a.png").is_file()
    assert main([*predict, str(tmp_path / "nothing"), "--out", str(out)]) == 1
    assert "no input images found" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    Image.fromarray(_image(20, 20)).save(tmp_path / "other" / "a.png")
    assert main([*predict, str(folder / "a.jpg"), str(tmp_path / "other"), "--out", str(out)]) == 1
    assert "would both write" in capsys.readouterr().err
    files, missing = collect_inputs([folder, folder / "a.jpg", str(folder / "*.jpg")])
    assert [p.name for p in files] == ["a.jpg", "b.png", "c.png", "d.png", "e_truncated.jpg", "f_text.png"]
    assert missing == []


def test_video_writes_one_mask_per_frame(model_dir, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 36))
    assert writer.isOpened()
    for i in range(5):
        writer.write(cv2.cvtColor(_image(36, 48, 10 + i), cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--whole-image",
                str(model_dir),
                str(video),
                "--out",
                str(out),
                "--overlay",
                "--quiet",
            ]
        )
        == 0
    )
    masks = sorted((out / "clip").glob("*.png"))
    assert [p.name for p in masks] == [f"{i:06d}.png" for i in range(5)]
    assert len(list((out / "overlays" / "clip").glob("*.png"))) == 5
    capture = cv2.VideoCapture(str(video))
    predictor = Predictor(model_dir, faces=False)
    for path in masks:
        ok, frame = capture.read()
        assert ok
        np.testing.assert_array_equal(load_mask(path), predictor(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    assert (
        main(
            [
                "predict",
                "--whole-image",
                str(model_dir),
                str(tmp_path / "broken.mp4"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 1
    )


def test_cli_subprocess_with_onnxruntime(model_dir, folder, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "o"
    proc = run_cli(
        "predict",
        "--whole-image",
        str(model_dir),
        str(folder / "b.png"),
        "--out",
        str(out),
        "--backend",
        "onnxruntime",
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 label map(s)" in proc.stdout
    assert load_mask(tmp_path / "o" / "b.png").shape == (33, 51)


def test_a_run_folder_suggests_its_best_model(model_dir, folder, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    shutil.copytree(model_dir, run / "best")
    assert (
        main(
            [
                "predict",
                "--whole-image",
                str(run),
                str(folder / "a.jpg"),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"{run}: a training run folder, not a model directory; did you mean {run / 'best'}?" in err
    assert err.count("\n") == 1


def test_a_partly_unreadable_video_is_reported(model_dir, tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 36))
    for i in range(8):
        writer.write(cv2.cvtColor(_image(36, 48, 20 + i), cv2.COLOR_RGB2BGR))
    writer.release()
    data = video.read_bytes()
    frames = [m.start() for m in re.finditer(b"00dc", data)]  # the chunk of every frame
    assert len(frames) >= 8
    video.write_bytes(data[: frames[6]])  # cut off the last frames: the header still lists 8
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    readable = 0
    while capture.read()[0]:
        readable += 1
    assert 3 <= readable < 8
    out = tmp_path / "out"
    assert main(["predict", "--whole-image", str(model_dir), str(video), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    missing = 8 - readable
    assert (
        f"clip.avi: {missing} frame(s) could not be decoded ({readable}-7); wrote the other {readable}" in err
    )
    assert [p.name for p in sorted((out / "clip").glob("*.png"))] == [f"{i:06d}.png" for i in range(readable)]
