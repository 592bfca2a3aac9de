"""Native model directories: round trip, strict loading, atomic replacement."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from segformer import SegformerError
from segformer.checkpoint import is_model_dir, load_model, save_model
from segformer.models import SegFormer

from conftest import tiny_config


def test_round_trip_keeps_weights_config_and_meta(tmp_path):
    model = SegFormer(tiny_config("micro", class_names=("a", "b", "c", "d", "e"))).eval()
    model.meta = {"label_set": "demo", "image_size": 64}
    save_model(model, tmp_path / "m", meta={"mean": [0.5, 0.5, 0.5]})
    assert is_model_dir(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    assert loaded.meta == {"label_set": "demo", "image_size": 64, "mean": [0.5, 0.5, 0.5]}
    x = torch.randn(1, 3, 45, 51)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_wrapped_models_are_saved_without_prefixes(tmp_path):
    model = SegFormer(tiny_config())
    wrapper = torch.nn.Module()
    wrapper.module = model  # what DDP / DataParallel look like
    save_model(wrapper, tmp_path / "m")
    keys = load_file(str(tmp_path / "m" / "model.safetensors")).keys()
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in keys)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    save_model(SegFormer(tiny_config()), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    state["extra.weight"] = state.pop("decoder.classifier.weight")
    save_file(state, str(weights))
    with pytest.raises(SegformerError, match=r"missing keys \['decoder.classifier.weight'\].*extra.weight"):
        load_model(tmp_path / "m")


def test_not_a_model_dir_is_reported_by_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert not is_model_dir(tmp_path)
    with pytest.raises(SegformerError, match=r"config\.json: not a segformer model config"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(SegformerError, match="invalid JSON"):
        load_model(tmp_path)


def test_overwriting_replaces_the_directory_as_a_whole(tmp_path):
    """Saving again over a model directory replaces it, with what a killed save left behind. (A folder
    holding a file of the user's is refused: see test_reliability.py.)"""
    target = tmp_path / "m"
    save_model(SegFormer(tiny_config()), target)
    (target / ".model.safetensors.x1y2.tmp").write_text("left by a killed save")
    save_model(SegFormer(tiny_config("micro")), target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert load_model(target).config.decoder == "micro"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers


def test_failed_save_leaves_the_previous_model(tmp_path):
    target = tmp_path / "m"
    save_model(SegFormer(tiny_config()), target)

    class Broken(SegFormer):
        def state_dict(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_model(Broken(tiny_config("micro")), target)
    assert load_model(target).config.decoder == "mlp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_unknown_or_absent_device_is_a_one_line_error(tmp_path):
    from segformer import load

    save_model(SegFormer(tiny_config()), tmp_path / "m")
    with pytest.raises(SegformerError, match="unknown device 'gpu'; use cpu, cuda, cuda:N or auto"):
        load(tmp_path / "m", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(SegformerError, match="'cuda:1' requested but torch sees no CUDA GPU"):
            load(tmp_path / "m", device="cuda:1")
    assert load(tmp_path / "m", device="auto").config == tiny_config()
