"""InferenceSettings: defaults in one place, every stored form read back, a wrong type named by file and
field, and model directories written before the settings existed loading and predicting the same."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from segformer import Predictor, SegformerError, create_model, load
from segformer.checkpoint import plain_state_dict, save_model
from segformer.cli import main
from segformer.data.labels import CELEBAMASK, LabelSet
from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segformer.engine.evaluate import evaluate_model
from segformer.inference.settings import InferenceSettings, label_set_dict, model_settings, parse_label_set

from conftest import tiny_config


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def test_defaults_and_round_trip():
    s = InferenceSettings()
    assert s.image_size == (512, 512) and s.mean == IMAGENET_MEAN and s.std == IMAGENET_STD
    assert s.eval_mode == "resize" and s.tta == "none" and s.label_set is None
    assert InferenceSettings.from_dict({}) == s
    full = InferenceSettings(image_size=64, label_set="celebamask", tta="flip", scales=[1, 1.5])
    assert full.image_size == (64, 64) and full.label_set is CELEBAMASK and full.scales == (1.0, 1.5)
    doc = json.loads(json.dumps(full.to_dict()))  # plain JSON all the way
    assert InferenceSettings.from_dict(doc) == full
    assert doc["label_set"] == "celebamask" and doc["image_size"] == 64  # as training always wrote them
    custom = LabelSet("celebamask", CELEBAMASK.class_names, ((9, 9, 9),) * 19)
    doc = InferenceSettings(image_size=(64, 32), label_set=custom).to_dict()
    assert doc["label_set"] == label_set_dict(custom) and doc["label_set"]["ignore_index"] == 255
    assert doc["image_size"] == [64, 32] and InferenceSettings.from_dict(doc).label_set == custom
    assert full.replace(tta=None, image_size=(32, 48)).image_size == (32, 48)  # None: not given


def test_every_stored_form_of_a_label_set():
    custom = LabelSet("pets", ("bg", "cat", "dog"), ((0, 0, 0), (1, 2, 3), (4, 5, 6)), ((1, 2),), 7)
    assert parse_label_set(label_set_dict(custom)) == custom
    assert parse_label_set("ce7454") is CELEBAMASK and parse_label_set(CELEBAMASK) is CELEBAMASK
    # what exports wrote before the ignore index was stored
    old = {k: v for k, v in label_set_dict(CELEBAMASK).items() if k != "ignore_index"}
    assert parse_label_set(old) == CELEBAMASK


BAD_VALUES = [
    ("image_size", "big", "image_size"),
    ("image_size", [0, 32], "image_size"),
    ("image_size", [32, 32, 3], "image_size"),
    ("image_size", True, "image_size"),
    ("mean", [0.5, 0.5], "mean"),
    ("mean", ["a", 0, 0], "mean"),
    ("std", [0.2, 0.0, 0.2], "std"),
    ("std", 0.5, "std"),
    ("eval_mode", "crop", "eval_mode"),
    ("eval_mode", 3, "eval_mode"),
    ("tta", ["flip"], "tta"),
    ("scales", [], "scales"),
    ("scales", [1.0, float("nan")], "scales"),
    ("scales", "1,2", "scales"),
    ("label_set", "klingon", "label_set"),
    ("label_set", 19, "label_set"),
    ("label_set", {"name": "x", "class_names": ["a"], "palette": [[0, 0, 300]]}, r"label_set\.palette"),
    ("label_set", {"name": "x", "class_names": "ab", "palette": []}, r"label_set\.class_names"),
    ("label_set", {"name": "x", "class_names": ["a"], "palette": [[0, 0, 0]], "flip": []}, "label_set"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD_VALUES)
def test_a_wrong_value_in_any_field_names_the_file_and_the_field(field, value, named):
    with pytest.raises(SegformerError, match=rf"^run/config\.json: {named}") as err:
        InferenceSettings.from_dict({field: value}, "run/config.json")
    assert "\n" not in str(err.value)


def test_unknown_fields_and_non_mappings():
    with pytest.raises(SegformerError, match=r"m\.onnx: unknown inference setting\(s\) img_size"):
        InferenceSettings.from_dict({"img_size": 64}, "m.onnx")
    with pytest.raises(SegformerError, match="must be a mapping"):
        InferenceSettings.from_dict([1, 2], "x")
    # a model's meta also holds what training records: those entries are not settings
    meta = {"image_size": 48, "epoch": 3, "scores": {"miou": 0.5}, "data": {"kind": "folder"}}
    assert InferenceSettings.from_meta(meta).image_size == (48, 48)
    with pytest.raises(SegformerError, match="sliding windows are square"):
        InferenceSettings(image_size=(32, 48), eval_mode="slide")


def _old_model_dir(path, model, meta):
    """A model directory exactly as the release before `InferenceSettings` wrote it (by hand)."""
    path.mkdir()
    save_file(plain_state_dict(model), str(path / "model.safetensors"), metadata={"format": "pt"})
    doc = {"format": "segformer", "format_version": 1, "model": model.config.to_dict(), "meta": meta}
    (path / "config.json").write_text(json.dumps(doc, indent=2) + "\n")


def test_old_model_directories_load_and_predict_the_same(tmp_path):
    torch.manual_seed(3)
    model = create_model(tiny_config("micro", num_classes=19)).eval()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    # what training wrote: the label set by name, the preprocessing, the split and the scores
    old_meta = {
        "label_set": "celebamask",
        "image_size": 40,
        "mean": mean,
        "std": std,
        "eval_mode": "resize",
        "data": {"kind": "folder", "val_fraction": 0.25, "split_seed": 0},
        "epoch": 2,
        "scores": {"miou": 0.25},
    }
    _old_model_dir(tmp_path / "old", model, old_meta)
    images = [_image(45, 61, 1), _image(40, 40, 2)]
    old = Predictor(tmp_path / "old")
    assert old.label_set is CELEBAMASK and old.image_size == (40, 40) and old.mean == tuple(mean)
    # the same settings given by hand, on the model in memory
    expected = Predictor(model, image_size=40, mean=mean, std=std, label_set="celebamask")(images)
    for got, want in zip(old(images), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # written again today: the settings are stored whole, and the masks do not change
    save_model(load(tmp_path / "old"), tmp_path / "new")
    stored = json.loads((tmp_path / "new" / "config.json").read_text())["meta"]
    assert stored["label_set"] == "celebamask" and stored["epoch"] == 2  # meta is kept as it was
    save_model(load(tmp_path / "old"), tmp_path / "new2", meta=old.settings())
    new = Predictor(tmp_path / "new2")
    assert new.settings() == old.settings()
    for got, want in zip(new(images), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_predictor_settings_are_the_model_settings(tmp_path):
    model = create_model(tiny_config("micro", num_classes=19))
    model.meta = {"image_size": 40, "label_set": "celebamask", "epoch": 1}
    settings = model_settings(model, tta="flip")
    assert Predictor(model, tta="flip").inference_settings == settings
    assert Predictor(model, settings=settings.replace(image_size=32)).image_size == (32, 32)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_classes", "19"), ("embed_dims", "abc"), ("decoder", ["mlp"]), ("mix_ffn", "yes"), ("depths", 5)],
)
def test_model_directory_with_a_wrong_type_is_a_one_line_error(tmp_path, field, value, capsys):
    model = create_model(tiny_config("micro", num_classes=19))
    save_model(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    doc = json.loads(path.read_text())
    doc["model"][field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(SegformerError, match=rf"^model\.{field}: .* \(in .*m/config\.json\)$"):
        load(tmp_path / "m")
    assert main(["predict", str(tmp_path / "m"), "x.png", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and field in err


def test_a_wrong_setting_in_a_model_directory_names_it(tmp_path):
    model = create_model(tiny_config("micro", num_classes=19))
    save_model(model, tmp_path / "m", meta={"image_size": "large"})
    with pytest.raises(SegformerError, match=r"m/config\.json: image_size: expected a list"):
        Predictor(tmp_path / "m")
    save_model(model, tmp_path / "k", meta={"label_set": "ade20k"})
    with pytest.raises(SegformerError, match="label set ade20k has 150 classes but the model predicts 19"):
        Predictor(tmp_path / "k")


def test_evaluation_reads_the_settings(tmp_path):
    from segformer.data.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(
        tmp_path / "data", num=8, size=40, seed=0, val_fraction=0.25, progress=False
    )
    model = create_model(tiny_config("micro", num_classes=19))
    model.meta = InferenceSettings(image_size=32, label_set="celebamask", mean=(0.5,) * 3).to_dict()
    scores = evaluate_model(model, data, progress=False)
    assert scores["img_size"] == 32 and scores["num_images"] == 2
    assert evaluate_model(model, data, img_size=24, progress=False)["img_size"] == 24
    # TTA too: the model's own unless given, and the scores follow what was run
    model.meta = InferenceSettings(image_size=32, label_set="celebamask", tta="flip").to_dict()
    own = evaluate_model(model, data, progress=False)
    flip = evaluate_model(model, data, tta="flip", progress=False)
    plain = evaluate_model(model, data, tta="none", progress=False)
    assert own["tta"] == "flip" and plain["tta"] == "none"
    assert own["ce7454_f"] == flip["ce7454_f"] and own["per_class"] == flip["per_class"]
    assert own["per_class"] != plain["per_class"]  # flipping a random model changes its predictions
