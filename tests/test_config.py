"""Recipes are checked when they are built: every validated key refuses its bad values with one line
naming the key (and, for choices, what is allowed), before any data is read; model directories with
wrong types in config.json are one-line errors; the choice lists are the ones the code dispatches on."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from segformer import SegformerError, create_model, save
from segformer.config import (
    FIELD_RULES,
    TTA_MODES,
    Bounds,
    DataConfig,
    ModelConfig,
    OneOf,
    RunConfig,
    TrainConfig,
    load_recipe,
    parse_overrides,
)
from segformer.models import get_config, list_archs

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def bad_cases() -> list[tuple[str, object]]:
    """(dotted key, bad value) for every rule in FIELD_RULES; a per-stage or other tuple field gets a
    list of the right length holding the bad value."""
    out = []
    for section, rules in FIELD_RULES.items():
        cls = SECTIONS[section]
        for key, rule in rules.items():
            default = getattr(cls(), key)
            for bad in rule.bad_values():
                out.append((f"{section}.{key}", [bad] * len(default) if isinstance(default, tuple) else bad))
    return out


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# -- every validated key -----------------------------------------------------------------------------


def test_every_numeric_field_has_a_rule():
    # A number without bounds would let 0, -1 or NaN through; a new field must say what it accepts.
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            numeric = {int, float} & {hint, *typing.get_args(hint)}
            if numeric and f.name not in FIELD_RULES[section]:
                pytest.fail(f"{section}.{f.name} is a number without a rule in FIELD_RULES")


@pytest.mark.parametrize("key, bad", bad_cases(), ids=lambda v: str(v))
def test_a_bad_value_of_every_validated_key_is_one_line_naming_the_key(key, bad):
    with pytest.raises(SegformerError) as err:
        load_recipe("microsegformer-celebamask").override({key: bad})
    message = one_line(err)
    assert message.startswith(f"{key}: "), message
    section, name = key.split(".")
    rule = FIELD_RULES[section][name]
    if isinstance(rule, OneOf):  # choices are listed
        assert all(choice in message for choice in rule.allowed())


@pytest.mark.parametrize("key, bad", bad_cases(), ids=lambda v: str(v))
def test_bad_values_fail_before_any_data_is_read(key, bad, tmp_path, capsys):
    from segformer.cli import main

    missing = tmp_path / "no-such-dataset"
    value = json.dumps(bad).replace("NaN", "nan")  # YAML reads nan as a string; the float field parses it
    assert (
        main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), "--set", f"{key}={value}"])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("segformer train: error: ") and "\n" not in err
    assert key in err and "no-such-dataset" not in err  # the recipe was refused before the data was looked at
    assert not (tmp_path / "run").exists()


def test_valid_edges_are_accepted():
    cfg = RunConfig.from_dict(
        {
            "data": {"workers": 0, "val_fraction": 0.0, "synthetic": 0, "cache_max_gb": 0},
            "train": {"ema": 0.0, "early_stop": 0, "grad_clip": 0, "weight_decay": 0, "warmup_epochs": 0},
        }
    )
    assert cfg.data.workers == 0 and cfg.train.ema == 0.0 and cfg.train.max_minutes is None


# -- the values users get wrong ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.monitor=mIoU",
            r"^train\.monitor: unknown value 'mIoU'; choose from ce7454_f, miou, mean_f1_fg",
        ),
        ("train.epochs=0", r"^train\.epochs: must be >= 1, got 0$"),
        ("train.max_minutes=0", r"^train\.max_minutes: must be > 0, got 0\.0$"),
        ("train.lr=nan", r"^train\.lr: must be a finite number, got nan$"),
        ("train.lr=inf", r"^train\.lr: must be a finite number, got inf$"),
        ("train.lr=-1e-3", r"^train\.lr: must be > 0"),
        ("train.ema=1.0", r"^train\.ema: must lie in \[0, 1\), got 1\.0$"),
        ("train.grad_accum=3", r"^train\.grad_accum: 3 does not divide train\.batch_size 32$"),
        ("train.schedule=linear", r"^train\.schedule: unknown value 'linear'; choose from cosine, constant"),
        ("train.amp=fp32", r"^train\.amp: unknown value 'fp32'; choose from none, auto, bf16, fp16$"),
        ("train.device=gpu", r"^train\.device: unknown value 'gpu'; choose from auto, cpu, cuda$"),
        ("train.betas=[0.9]", r"^train\.betas: expected two values \(beta1, beta2\), got \(0\.9,\)$"),
        ("train.betas=[0.9, 1.5]", r"^train\.betas: must lie in \[0, 1\), got 1\.5$"),
        ("train.epochs=2.5", r"^train\.epochs: expected int, got 2\.5$"),
        ("train.deterministic=maybe", r"^train\.deterministic: expected bool, got 'maybe'$"),
        ("data.img_size=0", r"^data\.img_size: must be >= 1, got 0$"),
        (
            "data.kind=coco",
            r"^data\.kind: unknown value 'coco'; choose from auto, ade20k, cityscapes, folder$",
        ),
        ("data.label_set=faces", r"^data\.label_set: unknown label set 'faces'"),
        ("data.augment=flip", r"^data\.augment: unknown value 'flip'; choose from none, geometric"),
        ("data.bad_labels=drop", r"^data\.bad_labels: unknown value 'drop'; choose from error, ignore$"),
        ("data.workers=-1", r"^data\.workers: must be >= 0, got -1$"),
        (
            "model.name=segformer-b9",
            r"^model\.name: unknown model 'segformer-b9'; available: .*microsegformer",
        ),
        ("model.arch=vit", r"^model\.arch: unknown value 'vit'; choose from segformer, unet$"),
        (
            "model.decoder=fpn",
            r"^model\.decoder: unknown decoder 'fpn' for arch 'segformer'; registered: mlp, micro$",
        ),
        ("model.depth_s=[1,1,1,1]", r"^model: unknown field\(s\) model\.depth_s; known: arch, num_classes"),
        ("train.mointor=miou", r"^train: unknown field\(s\) train\.mointor; known: epochs"),
        ("model.depths=[1,1]", r"per-stage fields must have the same non-zero length"),
    ],
)
def test_the_values_users_get_wrong(override, message):
    base = load_recipe("microsegformer-celebamask")
    with pytest.raises(SegformerError, match=message) as err:
        base.override(parse_overrides([override]))
    one_line(err)


def test_a_recipe_that_is_not_a_mapping_is_refused():
    with pytest.raises(SegformerError, match="recipe: section train must be a mapping"):
        RunConfig.from_dict({"train": [1, 2]})
    with pytest.raises(SegformerError, match="recipe: expected a mapping"):
        RunConfig.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(SegformerError, match=r"model\.name: expected a model name"):
        RunConfig.from_dict({"model": {"name": 3}})


def test_python_api_construction_is_checked_too():
    with pytest.raises(SegformerError, match=r"^train\.epochs: must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(SegformerError, match=r"^model\.depths: expected a list, got 5$"):
        ModelConfig(depths=5)  # type: ignore[arg-type]
    assert DataConfig(root=__import__("pathlib").Path("/x")).root == "/x"  # a Path is a path


# -- RunConfig.model is a ModelConfig ------------------------------------------------------------------


def test_run_config_model_is_the_registered_config_with_the_recipe_overrides():
    cfg = RunConfig.from_dict(
        {"model": {"name": "segformer-b0", "drop_path_rate": 0.0, "depths": [1, 1, 1, 1]}}
    )
    assert isinstance(cfg.model, ModelConfig) and cfg.model_name == "segformer-b0"
    assert cfg.model == get_config("segformer-b0", drop_path_rate=0.0, depths=(1, 1, 1, 1))
    assert cfg.model_overrides() == {"drop_path_rate": 0.0, "depths": [1, 1, 1, 1]}
    # Written back as name + overrides (what config.yaml of a run holds), and read back the same.
    assert cfg.to_dict()["model"] == {"name": "segformer-b0", "drop_path_rate": 0.0, "depths": [1, 1, 1, 1]}
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    # Changing the model keeps the overrides, as --model NAME with --set model.X did before.
    other = cfg.override({"model.name": "microsegformer"})
    assert other.model == get_config("microsegformer", drop_path_rate=0.0, depths=(1, 1, 1, 1))


def test_packaged_recipes_round_trip():
    for name in ("microsegformer-celebamask", "segformer-ade20k", "segformer-cityscapes"):
        cfg = load_recipe(name)
        assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# -- model directories with wrong types --------------------------------------------------------------


def wrong_value(hint: object) -> object:
    """A JSON value of the wrong type for a field annotated `hint`."""
    if typing.get_origin(hint) is tuple:
        return ["x"] if typing.get_args(hint)[0] in (int, float) else 5
    return {int: "many", float: "big", str: 5, bool: "yes"}[hint]  # type: ignore[index]


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ModelConfig)])
def test_model_dir_with_a_wrongly_typed_field_is_a_one_line_error(field, tmp_path):
    from segformer import load

    model = create_model("microsegformer", num_classes=3, embed_dims=(8, 8, 8, 8), decoder_dim=8)
    save(model, tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    doc["model"][field] = wrong_value(typing.get_type_hints(ModelConfig)[field])
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(SegformerError, match=rf"^model\.{field}: expected") as err:
        load(tmp_path / "m")
    one_line(err)


def test_model_dir_whose_model_section_is_not_a_mapping(tmp_path):
    from segformer import load

    save(
        create_model("microsegformer", num_classes=3, embed_dims=(8, 8, 8, 8), decoder_dim=8), tmp_path / "m"
    )
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    doc["model"] = [1, 2, 3]
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(SegformerError, match=r"^model: expected a mapping of fields"):
        load(tmp_path / "m")


# -- the lists are the ones the code uses ------------------------------------------------------------


def test_choice_lists_are_the_ones_the_code_dispatches_on():
    import torch

    from segformer.data.layouts import LAYOUTS
    from segformer.engine import losses, optim
    from segformer.inference import ops
    from segformer.metrics import SegmentationMetrics
    from segformer.models.decoder import DECODERS

    assert losses.LOSSES is FIELD_RULES["train"]["loss"].choices
    assert optim.SCHEDULES is FIELD_RULES["train"]["schedule"].choices
    assert tuple(ops.TTA_MODES) == TTA_MODES
    assert FIELD_RULES["data"]["kind"].allowed() == ["auto", *LAYOUTS]
    assert list_archs() == ["segformer", "unet"]
    # The standalone CE7454 run.py cannot use the registry (it copies plain definitions): its table
    # must name the registered classes.
    from segformer.apps.export import run_py_source
    from segformer.models import arch_class

    source = run_py_source(create_model("microsegformer", num_classes=3))
    assert all(f"{arch!r}: ({arch_class(arch).__name__}, ())" in source for arch in list_archs())
    with pytest.raises(SegformerError, match="registered: mlp, micro"):
        ModelConfig(decoder="fpn")
    assert set(DECODERS) == {"mlp", "micro"}
    metrics = SegmentationMetrics(3)
    metrics.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    scores = metrics.compute()
    for name in FIELD_RULES["train"]["monitor"].allowed():
        assert isinstance(scores[name], float)


def test_bounds_describe_what_they_accept():
    assert Bounds(0, 1, high_open=True).problem(1.0) == "must lie in [0, 1), got 1.0"
    assert Bounds(0, low_open=True).problem(float("inf")) == "must be > 0, got inf"
    assert Bounds(1).problem((1, 2, 0)) == "must be >= 1, got 0"
    assert Bounds(0).problem(None) is None
