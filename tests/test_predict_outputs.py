"""`segformer predict` as a demanding user runs it: one model named strictly, options that cannot apply
refused, exact counts, nothing of the user's changed (the output policy), closed or broken streams,
two commands at once, an interrupted run resumed, and the overlapped pipeline writing the same bytes
as the sequential one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segformer import Predictor, create_model
from segformer.checkpoint import save_model
from segformer.cli import main
from segformer.data.synthetic import write_synthetic_dataset
from segformer.fileio import OutputFolder
from segformer.inference import files as files_module
from segformer.inference.files import predict_files
from segformer.inference.stream import BackgroundWriter, prefetch

from conftest import SRC, tiny_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    out = tmp_path_factory.mktemp("model") / "tiny"
    save_model(create_model(tiny_config("micro", num_classes=19)), out, meta={"label_set": "celebamask"})
    return out


@pytest.fixture(scope="module")
def scenes_model(tmp_path_factory) -> Path:
    """A model of a label set without faces (5 classes: no face localisation)."""
    out = tmp_path_factory.mktemp("model") / "scenes"
    save_model(create_model(tiny_config("micro", num_classes=5)), out)
    return out


def _images(folder: Path, count: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = 24 + 4 * (i % 3), 32 - 2 * i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def _video(path: Path, frames: int = 4) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    rng = np.random.default_rng(7)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    writer.release()
    return path


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("segformer predict: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# -- the model, named strictly ------------------------------------------------------------------------


def test_a_model_that_fails_to_load_is_an_error_not_another_model(model_dir, tmp_path, capsys):
    images = _images(tmp_path / "images", 2)
    out = tmp_path / "out"
    weights_only = tmp_path / "weights_only"  # a model folder without config.json
    weights_only.mkdir()
    (weights_only / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    assert main(["predict", str(weights_only), str(images), "--out", str(out), "--quiet"]) == 1
    _one_line(capsys, str(weights_only), "no config.json")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    assert main(["predict", str(tmp_path / "broken.pth"), str(images), "--out", str(out)]) == 1
    _one_line(capsys, "broken.pth: cannot read")
    assert main(["predict", "microsegformer-celebmask", str(images), "--out", str(out)]) == 1
    _one_line(capsys, "not a pretrained tag", "did you mean microsegformer-celebamask?")
    assert not out.exists()  # nothing was predicted with the shipped model instead


def test_one_model_per_command(model_dir, tmp_path, capsys):
    images = _images(tmp_path / "images", 2)
    out = tmp_path / "out"
    assert main(["predict", str(model_dir), str(images), str(model_dir), "--out", str(out)]) == 1
    _one_line(capsys, f"{model_dir}: is a model folder, but predict runs one model", "its own --out")
    assert main(["predict", "--model", str(model_dir), str(images), "x.onnx", "--out", str(out)]) == 1
    _one_line(capsys, "x.onnx: is a model file")
    assert not out.exists()
    argv = ["predict", "--model", str(model_dir), "--whole-image", str(images / "im0.png"), str(images)]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["im0.png", "im1.png"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert capsys.readouterr().out.startswith("usage: segformer predict [MODEL] INPUT [INPUT ...] --out DIR")


def test_face_options_without_face_localisation_are_refused(model_dir, scenes_model, tmp_path, capsys):
    images = _images(tmp_path / "images", 1)
    out = tmp_path / "out"
    assert main(["predict", str(scenes_model), str(images), "--out", str(out), "--faces-json"]) == 1
    _one_line(capsys, "--faces-json: only a face parser", "has no face classes")
    argv = ["predict", "--whole-image", str(model_dir), str(images), "--out", str(out), "--instances"]
    assert main(argv) == 1
    _one_line(capsys, "--instances: only a face parser", "--whole-image")
    assert not out.exists()


# -- the output policy ---------------------------------------------------------------------------------


def test_inputs_and_other_commands_files_are_never_written(model_dir, tmp_path, capsys):
    pngs = _images(tmp_path / "pngs", 2)
    before = _checksums(pngs)
    assert main(["predict", "--whole-image", str(model_dir), str(pngs / "im0.png"), "--out", str(pngs)]) == 1
    _one_line(capsys, "segformer never writes over its input")
    assert main(["predict", "--whole-image", str(model_dir), str(pngs / "*.png"), "--out", str(pngs)]) == 1
    _one_line(capsys, f"{pngs / 'im0.png'}: already exists")  # a file a glob matched: the user's
    assert _checksums(pngs) == before
    # label maps of an earlier predict (ours), read again as inputs through a glob: still inputs
    out = tmp_path / "out"
    assert main(["predict", "--whole-image", str(model_dir), str(pngs), "--out", str(out), "--quiet"]) == 0
    ours = _checksums(out)
    assert main(["predict", "--whole-image", str(model_dir), str(out / "*.png"), "--out", str(out)]) == 1
    _one_line(capsys, f"{out / 'im0.png'}: is the command's input; segformer never writes over its input")
    assert _checksums(out) == ours
    # the ground-truth masks of a dataset: `data synth` wrote them, predict never replaces them
    data = tmp_path / "data"
    write_synthetic_dataset(data, num=3, size=32, progress=False)
    masks = data / "train" / "masks"
    truth = _checksums(data)
    argv = ["predict", "--whole-image", str(model_dir), str(data / "train" / "images"), "--out", str(masks)]
    assert main([*argv, "--quiet"]) == 1
    _one_line(capsys, str(masks), "segformer predict did not write it")
    assert _checksums(data) == truth


def test_a_second_predict_into_the_same_folder_waits_its_turn(model_dir, tmp_path, capsys):
    images = _images(tmp_path / "images", 1)
    out = tmp_path / "out"
    with OutputFolder(out, "predict"):  # another predict at work
        assert main(["predict", "--whole-image", str(model_dir), str(images), "--out", str(out)]) == 1
        _one_line(capsys, f"{out} is being written by process {os.getpid()}")
    assert main(["predict", "--whole-image", str(model_dir), str(images), "--out", str(out), "--quiet"]) == 0


def test_counts_are_exact_when_a_users_file_blocks_one_output(model_dir, tmp_path, capsys):
    clip = _video(tmp_path / "clip.avi", frames=4)
    out = tmp_path / "out"
    (out / "clip").mkdir(parents=True)
    (out / "clip" / "000002.png").write_bytes(b"the user's own frame")  # blocks one label map
    user = _checksums(out)
    argv = ["predict", "--whole-image", str(model_dir), str(clip), "--out", str(out), "--overlay", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "not written: " in err and "000002.png: already exists" in err
    assert "wrote 3 label map(s) and 4 other file(s)" in err and "1 input(s) failed" in err
    assert sorted(p.name for p in (out / "clip").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert len(list((out / "overlays" / "clip").iterdir())) == 4  # the frame's other output is written
    assert _checksums(out)["clip/000002.png"] == user["clip/000002.png"]


# -- streams -------------------------------------------------------------------------------------------


def _predict_process(model: Path, images: Path, out: Path, **streams) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "segformer", "predict", "--whole-image", "--backend", "torch"]
    argv += [str(model), str(images)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([*argv, "--out", str(out)], env=env, timeout=300, **streams)


def test_closed_or_broken_stdout_and_stderr_never_stop_the_work(model_dir, tmp_path):
    images = _images(tmp_path / "images", 3)
    closed = _predict_process(model_dir, images, tmp_path / "closed", preexec_fn=lambda: os.close(2))
    assert closed.returncode == 0
    read, write = os.pipe()
    os.close(read)  # a reader that has gone: every write fails with EPIPE
    try:
        broken = _predict_process(model_dir, images, tmp_path / "broken", stdout=write, stderr=write)
    finally:
        os.close(write)
    assert broken.returncode == 0
    for out in ("closed", "broken"):
        assert sorted(p.name for p in (tmp_path / out).glob("*.png")) == ["im0.png", "im1.png", "im2.png"]


# -- resuming and overlapping --------------------------------------------------------------------------


def test_an_interrupted_run_resumes_where_it_stopped(model_dir, tmp_path, monkeypatch):
    images = _images(tmp_path / "images", 5)
    predictor = Predictor(model_dir, faces=False, backend="torch")
    predict_files(predictor, [images], tmp_path / "whole", overlay_images=True, progress=False)
    label_map = files_module.PredictionWriter.label_map

    def killed_at_im3(self, p):
        if p.name == "im3":
            raise KeyboardInterrupt
        label_map(self, p)

    monkeypatch.setattr(files_module.PredictionWriter, "label_map", killed_at_im3)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_files(predictor, [images], out, overlay_images=True, progress=False)
    assert sorted(p.name for p in out.glob("*.png")) == ["im0.png", "im1.png", "im2.png"]
    monkeypatch.setattr(files_module.PredictionWriter, "label_map", label_map)
    report = predict_files(predictor, [images], out, overlay_images=True, progress=False, skip_existing=True)
    assert (report.skipped, report.written, report.files) == (3, 2, 4)
    assert _checksums(out) == _checksums(tmp_path / "whole")  # manifest included: the same records


def test_overlapped_and_sequential_runs_write_the_same_bytes(model_dir, tmp_path):
    images = _images(tmp_path / "images", 5)
    _video(images / "clip.avi", frames=3)
    (images / "bad.png").write_text("not an image")
    predictor = Predictor(model_dir, faces=False, backend="torch", batch_size=2)
    options = {"overlay_images": True, "probs": True, "parts": "skin,hair", "cutout": True, "soft": True}
    reports = {}
    for overlap in (False, True):
        out = tmp_path / f"overlap_{overlap}"
        reports[overlap] = predict_files(predictor, [images], out, progress=False, overlap=overlap, **options)
    assert _checksums(tmp_path / "overlap_True") == _checksums(tmp_path / "overlap_False")
    assert len(_checksums(tmp_path / "overlap_True")) == 8 * 6 + 1  # 8 frames x 6 outputs + the manifest
    assert reports[True].failed == reports[False].failed and len(reports[True].failed) == 1


def test_the_background_stages_stay_bounded_and_pass_errors_on():
    made: list[int] = []

    def numbers():
        for i in range(50):
            made.append(i)
            yield i

    seen = []
    for i in prefetch(numbers(), size=3):
        time.sleep(0.002)
        seen.append(i)
        assert len(made) - len(seen) <= 3 + 1  # the queue, and the item being put
    assert seen == list(range(50))

    def failing():
        yield 1
        raise ValueError("decoder bug")

    with pytest.raises(ValueError, match="decoder bug"):
        list(prefetch(failing(), size=2))

    written, release = [], threading.Event()
    writer = BackgroundWriter(lambda item: (release.wait(5), written.append(item)), size=2)
    for i in range(3):
        writer.put(i)  # the first is being written, two wait in the queue
    release.set()
    writer.close()  # everything put is written before it returns
    assert written == [0, 1, 2]
    writer = BackgroundWriter(lambda item: 1 / 0, size=1)
    writer.put("x")
    with pytest.raises(ZeroDivisionError):  # raised in the caller, by a later put
        for _ in range(100):
            writer.put("y")


def test_the_predict_side_reads_on_a_screen_or_two():
    """Issue 28: no module over 500 lines, no function over 80 (`predict_files` was 147 lines)."""
    from test_architecture import PACKAGE, too_long

    paths = [PACKAGE / "inference" / f"{name}.py" for name in ("files", "stream", "parts")]
    found = [f for p in [*paths, PACKAGE / "cli" / "predict.py"] for f in too_long(p)]
    assert not found, "\n".join(found)
