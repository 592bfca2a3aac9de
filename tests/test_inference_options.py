"""Inference settings as one currency: Predictor(model, settings, **overrides) with the old keyword
spellings, the shared CLI flags (new and old spellings parse alike), inputs of every kind checked with a
one-line error naming them, and working sizes that cannot fit in memory refused before any work."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segformer import Predictor, SegformerError, create_model
from segformer.checkpoint import save_model
from segformer.cli import main
from segformer.cli.options import RUNTIME, SETTINGS, add_inference_options, inference_overrides
from segformer.engine.evaluate import evaluate_model
from segformer.inference.settings import InferenceSettings, split_overrides

from conftest import tiny_config

HUGE = "100000"  # a working size whose logits alone need hundreds of GiB


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = create_model(tiny_config("micro", num_classes=19)).eval()
    m.meta = {"label_set": "celebamask", "image_size": 32}
    return m


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def test_overrides_old_spellings_and_settings_whole(model):
    new = Predictor(model, eval_mode="slide", image_size=40, tta="flip", backend="torch", faces=False)
    old = Predictor(model, mode="slide", img_size=40, tta="flip", backend="torch", faces=False)
    assert new.inference_settings == old.inference_settings
    assert new.eval_mode == new.mode == "slide" and new.image_size == (40, 40)
    # settings passed whole, overrides on top
    whole = Predictor(model, new.inference_settings, tta="none", faces=False, backend="torch")
    assert whole.inference_settings == new.inference_settings.replace(tta="none")
    image = _image(45, 52)
    np.testing.assert_array_equal(
        whole(image), Predictor(model, settings=whole.inference_settings, faces=False, backend="torch")(image)
    )
    with pytest.raises(SegformerError, match=r"Predictor: eval_mode given twice"):
        Predictor(model, mode="slide", eval_mode="resize")
    with pytest.raises(SegformerError, match=r"Predictor: unknown option 'size'; known: .*eval_mode"):
        Predictor(model, size=32)
    assert split_overrides({"mode": "slide", "tta": None, "device": "cpu"}) == (
        {"eval_mode": "slide"},
        {"device": "cpu"},
    )


def _parse(argv: list[str], **kwargs) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_inference_options(parser, SETTINGS, RUNTIME, **kwargs)
    return parser.parse_args(argv)


def test_cli_flags_new_and_old_spellings_give_the_same_overrides():
    new = inference_overrides(_parse(["--image-size", "64", "--eval-mode", "slide", "--tta", "flip"]))
    old = inference_overrides(_parse(["--img-size", "64", "--mode", "slide", "--tta", "flip"]))
    assert (
        new
        == old
        == {"image_size": 64, "eval_mode": "slide", "tta": "flip", "device": "cpu", "backend": "auto"}
    )
    # flags not given leave the model's settings alone; the runtime flags
    full = _parse(["--scales", "1,1.5", "--whole-image", "--batch-size", "3", "--backend", "torch"])
    assert inference_overrides(full) == {
        "scales": [1.0, 1.5],
        "batch_size": 3,
        "device": "cpu",
        "backend": "torch",
        "faces": False,
    }
    assert _parse([], batch_size=4).batch_size == 4
    # a command without a flag contributes nothing for it
    assert inference_overrides(argparse.Namespace(image_size=None, device="cuda")) == {"device": "cuda"}


def test_cli_help_names_the_old_spellings(capsys):
    for command in ("eval", "export", "attention", "info"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--image-size" in text and "alias until 1.0" in text, command
        if command in ("eval", "export"):
            assert "--mode {resize,slide} old spelling of --eval-mode, kept as an alias until 1.0" in text


def test_eval_and_export_read_old_and_new_flags_alike(model, tmp_path, capsys):
    from segformer.data.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(
        tmp_path / "data", num=6, size=40, seed=0, val_fraction=0.34, progress=False
    )
    save_model(model, tmp_path / "m")
    common = ["eval", str(tmp_path / "m"), "--data", str(data), "--json"]
    outputs = []
    for flags in (
        ["--image-size", "24", "--eval-mode", "resize"],
        ["--img-size", "24", "--eval-mode", "resize"],
    ):
        assert main([*common, *flags]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and '"img_size": 24' in outputs[0]
    for flags, name in (
        (["--image-size", "40", "--mode", "slide"], "a"),
        (["--img-size", "40", "--eval-mode", "slide"], "b"),
    ):
        argv = ["export", str(tmp_path / "m"), "--out", str(tmp_path / f"{name}.onnx"), "--no-check", *flags]
        assert main(argv) == 0
    capsys.readouterr()
    a, b = (Predictor(tmp_path / f"{n}.onnx", faces=False) for n in "ab")
    assert (
        a.inference_settings == b.inference_settings and a.eval_mode == "slide" and a.image_size == (40, 40)
    )


PIL_MODES = [
    "1",
    "L",
    "P",
    "RGB",
    "RGBA",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "I;16",
    "I;16B",
    "F",
    "LA",
    "PA",
]


def test_pil_images_of_every_mode_predict_like_their_rgb(model):
    predictor = Predictor(model, faces=False, backend="torch")
    rgb = Image.fromarray(_image(23, 31, 1))
    for mode in PIL_MODES:
        if mode == "F":
            image = Image.fromarray(np.asarray(rgb.convert("L"), np.float32) / 255, "F")
        elif mode.startswith("I"):
            image = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).convert(mode)
        else:
            image = rgb.convert(mode)
        mask = predictor(image)
        assert mask.shape == (23, 31), mode
        if mode in ("L", "RGB", "F", "I", "I;16"):  # lossless conversions: the grey or RGB mask exactly
            reference = rgb if mode == "RGB" else rgb.convert("L")
            np.testing.assert_array_equal(mask, predictor(np.asarray(reference)), err_msg=mode)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (None, r"^cannot predict on None: pass a path, a PIL image or a numpy array$"),
        (b"\x89PNG", r"^cannot predict on a bytes: "),
        (
            Image.fromarray(np.full((4, 5), 5.0, np.float32), "F"),
            r"^PIL image of mode F \(5x4\) with values in \[5, 5\]",
        ),
        (
            Image.fromarray(np.full((4, 5), np.nan, np.float32), "F"),
            r"^PIL image of mode F \(5x4\) with values in \[nan",
        ),
        (
            Image.fromarray(np.full((4, 5), -3, np.int32), "I"),
            r"^PIL image of mode I \(5x4\) with values in \[-3, -3\]",
        ),
        (Image.new("La", (5, 4)), r"^PIL image of mode La \(5x4\): cannot convert to RGB"),
        (Image.new("RGB", (0, 4)), r"^PIL image of mode RGB \(0x4\): empty image$"),
        (np.full((4, 5, 3), 5.0, np.float32), r"^float image with values in \[5, 5\]: expected \[0, 1\]"),
    ],
)
def test_inputs_that_cannot_be_images_are_one_line_errors(model, item, message):
    predictor = Predictor(model, faces=False, backend="torch")
    with pytest.raises(SegformerError, match=message) as err:
        predictor(item)
    assert "\n" not in str(err.value)
    with pytest.raises(SegformerError, match=r"^input 1: " + message.lstrip("^")):
        predictor([_image(8, 8), item])


def test_sizes_that_cannot_fit_in_memory_are_refused_before_any_work(model, tmp_path, capsys):
    with pytest.raises(
        SegformerError, match=rf"^image_size {HUGE}x{HUGE}: a forward pass needs at least .* GiB"
    ):
        Predictor(model, image_size=int(HUGE))
    with pytest.raises(SegformerError, match=r"^image_size 20000x20000 \(x1.5 for TTA scales\)"):
        Predictor(model, image_size=20000, tta="scales", batch_size=8)
    with pytest.raises(SegformerError, match=rf"image_size {HUGE}x{HUGE}: a forward pass needs"):
        evaluate_model(model, tmp_path / "no-data", image_size=int(HUGE), progress=False)  # before the data
    save_model(model, tmp_path / "m")
    Image.fromarray(_image(40, 40)).save(tmp_path / "face.png")
    for argv in (
        [
            "predict",
            str(tmp_path / "m"),
            str(tmp_path / "face.png"),
            "--out",
            str(tmp_path / "p"),
            "--img-size",
            HUGE,
        ],
        ["eval", str(tmp_path / "m"), "--data", str(tmp_path), "--image-size", HUGE],
        [
            "attention",
            str(tmp_path / "m"),
            str(tmp_path / "face.png"),
            "--out",
            str(tmp_path / "a"),
            "--size",
            HUGE,
        ],
        ["info", "microsegformer", "--size", "1000000"],
    ):
        assert main(argv) == 1, argv[0]
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "needs at least" in err and "Traceback" not in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "p").exists()
    assert InferenceSettings(image_size=int(HUGE)).image_size == (100000, 100000)  # a setting is not the work
