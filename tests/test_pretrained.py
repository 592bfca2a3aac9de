"""Pretrained tags: one safetensors file per shipped model, loaded by name everywhere a model is taken."""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segformer.apps.export
from segformer import Predictor, SegformerError, create_model, load
from segformer.apps.export import export_model
from segformer.checkpoint import save_model
from segformer.cli import main
from segformer.cli.predict import split_model_and_inputs
from segformer.inference.settings import InferenceSettings
from segformer.pretrained import DEFAULT_TAG, DIR_ENV, PRETRAINED, pretrained_dir, read_pretrained

from conftest import ROOT, tiny_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

TAG = "microsegformer-celebamask"
META = {
    "image_size": 48,
    "label_set": "celebamask",
    "tta": "flip",
    "epoch": 37,
    "scores": {"ce7454_f": 0.7512, "miou": 0.6431},
    "data": {"kind": "folder", "val_fraction": 0.1, "split_seed": 3},
}


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A training run folder with its resolved recipe and a tiny best/ model directory."""
    torch.manual_seed(0)
    run = tmp_path / "run"
    save_model(create_model(tiny_config("micro", num_classes=19)), run / "best", meta=META)
    (run / "config.yaml").write_text("model:\n  name: microsegformer\ntrain:\n  epochs: 3\n")
    return run


@pytest.fixture()
def shipped(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tag's file exported from `run_dir`, in a pretrained folder the package is pointed at."""
    folder = tmp_path / "pretrained"
    monkeypatch.setenv(DIR_ENV, str(folder))
    export_model(run_dir / "best", folder / PRETRAINED[TAG].file, "pretrained")
    return folder


def _face(path: Path, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(path)
    return path


def test_tag_loads_the_exported_model_with_config_and_settings(run_dir, shipped):
    original, model = load(run_dir / "best"), load(TAG)
    assert model.config == original.config
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.meta["scores"] == META["scores"] and model.meta["data"] == META["data"]
    assert InferenceSettings.from_meta(model.meta) == InferenceSettings.from_meta(original.meta)
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)
    assert pretrained_dir() == shipped


def test_fp16_file_is_half_the_size_and_loads_as_float32(run_dir, tmp_path, monkeypatch):
    folder = tmp_path / "pretrained"
    monkeypatch.setenv(DIR_ENV, str(folder))
    full = export_model(run_dir / "best", folder / "full.safetensors", "pretrained")
    half = export_model(run_dir / "best", folder / PRETRAINED[TAG].file, "pretrained", fp16=True)
    assert 0 <= half["fp16_changed"] <= segformer.apps.export.FP16_MAX_CHANGED
    assert half["bytes"] < 0.6 * full["bytes"]
    model, original = load(TAG), load(run_dir / "best")
    for key, value in original.state_dict().items():
        got = model.state_dict()[key]
        assert got.dtype == value.dtype
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(got, expected), key
    _, _, stored = read_pretrained(folder / PRETRAINED[TAG].file)
    assert all(v.dtype == torch.float32 for v in stored.values() if v.is_floating_point())
    assert "float16" in Path(half["card"]).read_text()


def test_fp16_refused_when_predictions_change(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(segformer.apps.export, "FP16_MAX_CHANGED", -1.0)  # any share is too much
    out = tmp_path / "m.safetensors"
    with pytest.raises(SegformerError, match=r"float16 weights change .*% of a check image's pixels"):
        export_model(run_dir / "best", out, "pretrained", fp16=True)
    assert list(tmp_path.glob("*.safetensors*")) == [] and not out.with_suffix(".md").exists()


def test_model_card_has_the_recorded_figures(run_dir, shipped):
    card = (shipped / PRETRAINED[TAG].card).read_text()
    assert "0.7512 (epoch 37)" in card and "0.6431" in card
    assert "val_fraction 0.1, split_seed 3: 90" in card
    assert "non-commercial research" in card
    assert "epochs: 3" in card  # the run's config.yaml, verbatim
    assert f"segformer train --config {run_dir / 'config.yaml'}" in card
    out = shipped / PRETRAINED[TAG].file
    exported = f"segformer export {run_dir / 'best'} --format pretrained --out {out}"
    assert f"{exported} --tta flip\n" in card  # the settings it was exported with, to redo it
    assert "TTA flip" in card and "48 px" in card
    assert re.search(r"\{[a-z0-9_]+(:[^}]*)?\}", card) is None  # every template field filled in


def test_missing_weights_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DIR_ENV, str(tmp_path))
    with pytest.raises(SegformerError, match=f"this build ships no weights for {TAG}"):
        load(TAG)
    with pytest.raises(SegformerError, match=f"this build ships no weights for {TAG}"):
        Predictor(TAG)
    assert main(["predict", str(_face(tmp_path / "a.png")), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"segformer predict: error: this build ships no weights for {TAG}")
    assert len(err.strip().splitlines()) == 1


def test_bad_outputs_refused(run_dir, tmp_path):
    with pytest.raises(SegformerError, match=r"must end in \.safetensors"):
        export_model(run_dir / "best", tmp_path / "m.pth", "pretrained")


def test_existing_path_wins_over_tag_and_tag_over_architecture(
    run_dir, shipped, tmp_path, monkeypatch, capsys
):
    # "microsegformer" names the random-weight architecture (the full-size one), the tag the trained
    # (here tiny) model.
    assert load(TAG).config.embed_dims == (8, 16, 24, 32)
    assert main(["info", "microsegformer", "--size", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["embed_dims"] != [8, 16, 24, 32]
    other = tmp_path / "cwd"
    save_model(create_model(tiny_config("micro", num_classes=7)), other / TAG)
    monkeypatch.chdir(other)
    assert load(TAG).config.num_classes == 7  # ./microsegformer-celebamask is a model directory
    monkeypatch.chdir(tmp_path)
    assert load(TAG).config.num_classes == 19


def test_predict_with_and_without_the_model_argument(run_dir, shipped, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    _face(images / "a.png", seed=1)
    _face(images / "b.png", seed=2)
    outs = {}
    for name, model in (("tag", [TAG]), ("none", []), ("dir", [str(run_dir / "best")])):
        out = tmp_path / name
        inputs = [str(images / "a.png"), str(images)]  # an image first, then a folder
        argv = [*model, *inputs, "--out", str(out), "--quiet", "--whole-image"]  # crops, parsed whole
        assert main(["predict", *argv]) == 0
        outs[name] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
    assert sorted(outs["tag"]) == ["a.png", "b.png"]
    for name in ("none", "dir"):
        assert outs[name].keys() == outs["tag"].keys()
        for key, mask in outs["tag"].items():
            np.testing.assert_array_equal(outs[name][key], mask)


def test_split_model_and_inputs(run_dir, tmp_path):
    image = str(_face(tmp_path / "x.png"))
    assert split_model_and_inputs([TAG, image]) == (TAG, [image])
    assert split_model_and_inputs([image]) == (DEFAULT_TAG, [image])
    assert split_model_and_inputs([str(tmp_path), image]) == (DEFAULT_TAG, [str(tmp_path), image])
    assert split_model_and_inputs([str(run_dir / "best"), image]) == (str(run_dir / "best"), [image])
    assert split_model_and_inputs([str(run_dir), image]) == (str(run_dir), [image])  # load() names best/
    assert split_model_and_inputs(["m.onnx", "v.mp4"]) == ("m.onnx", ["v.mp4"])
    with pytest.raises(SegformerError, match="no INPUT given after the model"):
        split_model_and_inputs([TAG])


def test_info_and_export_take_the_tag(shipped, tmp_path, capsys):
    assert main(["info", TAG, "--size", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_classes"] == 19 and info["meta"]["epoch"] == 37
    assert info["settings"]["tta"] == "flip"
    out = tmp_path / "again.safetensors"
    assert main(["export", TAG, "--format", "pretrained", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert read_pretrained(out)[1]["scores"] == META["scores"]


def test_package_data_carries_weights_and_cards():
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = doc["tool"]["setuptools"]["package-data"]["segformer"]
    package = ROOT / "src" / "segformer"
    shipped = [f"pretrained/{e.file}" for e in PRETRAINED.values()]
    shipped += [f"pretrained/{e.card}" for e in PRETRAINED.values()] + ["pretrained/card_template.md"]
    for name in shipped:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name
    # and every file in the folder that is not code is matched (nothing shipped by accident is lost)
    for path in (package / "pretrained").iterdir():
        if path.suffix != ".py" and path.name != "__pycache__":
            rel = path.relative_to(package).as_posix()
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
    assert DEFAULT_TAG in PRETRAINED
