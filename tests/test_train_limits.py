"""What training refuses before it starts, in one line (an empty model, a recipe that is not UTF-8 or
not YAML, a size that cannot fit in memory), what a failed extension leaves behind (the run as it was),
run folders and recipes written before a key was renamed, and help texts that say what the code does."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from segformer import SegformerError, runtime
from segformer.cli import build_parser, main
from segformer.config import RunConfig, load_recipe, parse_overrides
from segformer.data.layouts import default_recipe
from segformer.engine.learner import step_memory
from segformer.engine.losses import SegmentationLoss
from segformer.engine.train import train
from segformer.models import build_model, get_config
from segformer.runtime import peak_memory
from test_train import TINY_MODEL, faces, tiny_run  # noqa: F401  (faces: the module's fixture)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("segformer train: error: ") and "\n" not in err, err
    return err


# -- refused before any work -----------------------------------------------------------------------------


@pytest.mark.parametrize("depths", ["[0,0,0,0]", "[0, 0, 0, 0]"])
def test_a_recipe_that_makes_an_empty_model_is_refused_before_work(depths, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--synthetic", "8", "--out", str(out), "--set", f"model.depths={depths}"])
    assert code == 1
    err = one_line_error(capsys)
    assert "model.depths" in err and "without a transformer block" in err
    assert not out.exists()  # not even the synthetic data was generated
    with pytest.raises(SegformerError, match=r"^model\.depths: "):
        load_recipe("microsegformer-celebamask").override(parse_overrides([f"model.depths={depths}"]))
    # a stage without blocks is a smaller model, not an empty one
    smaller = load_recipe("microsegformer-celebamask").override({"model.depths": [0, 1, 1, 1]})
    assert smaller.model.depths == (0, 1, 1, 1)


def test_a_recipe_that_is_not_utf8_is_one_line_naming_the_file(tmp_path, capsys):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("train:\n  epochs: 2  # réglage\n".encode("latin-1"))
    assert main(["train", "--config", str(recipe), "--synthetic", "8", "--out", str(tmp_path / "run")]) == 1
    err = one_line_error(capsys)
    assert str(recipe) in err and "not a UTF-8" in err and "0xe9" in err
    assert not (tmp_path / "run").exists()


def test_malformed_yaml_is_one_line_with_the_parsers_position(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("train:\n  epochs: [1, 2\n  lr: 3\n")
    assert main(["train", "--config", str(recipe), "--synthetic", "8", "--out", str(tmp_path / "run")]) == 1
    err = one_line_error(capsys)
    assert str(recipe) in err and "invalid YAML" in err and "line 3, column" in err
    assert main(["train", "--synthetic", "8", "--out", str(tmp_path / "run"), "--set", "train.lr=[1"]) == 1
    err = one_line_error(capsys)
    assert "train.lr=[1" in err and "line 1, column" in err


def test_a_size_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--synthetic", "8", "--out", str(out), "--image-size", "100000"]) == 1
    err = one_line_error(capsys)
    assert "data.image_size=100000" in err and "GiB of memory" in err and "available" in err
    assert "--image-size" in err  # what to change
    assert not out.exists()  # refused before the synthetic data or the model were made


def test_the_memory_estimate_grows_with_the_work():
    config = get_config(**{**TINY_MODEL, "num_classes": 3})
    with torch.device("meta"):
        model = build_model(config)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    def step(batch: int, size: int) -> int:
        return step_memory(config, batch, size, 2, False)

    # activations grow with the batch (4 more images hold twice what 2 more do) and with the pixels
    # (a 4x larger step in pixels, a little more for attention); the weights and their moments do not
    assert 1.9 < (step(8, 64) - step(4, 64)) / (step(4, 64) - step(2, 64)) < 2.1
    assert 3.8 < (step(2, 128) - step(2, 64)) / (step(2, 64) - step(2, 32)) < 5.0
    assert step_memory(config, 2, 64, 2, True) - step_memory(config, 2, 64, 2, False) == weights  # the EMA
    inputs_and_logits = 4 * 2 * 32 * 32 * (3 + 3)
    assert peak_memory(model.eval(), (2, 3, 32, 32)) > inputs_and_logits + weights
    assert peak_memory(model.train(), (2, 3, 32, 32), train=True) > peak_memory(model.eval(), (2, 3, 32, 32))


# -- a failed step changes no recorded state ---------------------------------------------------------------


def test_a_failed_extension_leaves_the_run_as_it_was(faces, tmp_path, monkeypatch):  # noqa: F811
    run = tmp_path / "run"
    train(tiny_run(faces, epochs=1), run, progress=False)
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "state.pt", "metrics.jsonl")}
    real = SegmentationLoss.forward
    monkeypatch.setattr(SegmentationLoss, "forward", lambda self, *a: real(self, *a) * float("nan"))
    with pytest.raises(SegformerError, match="training diverged"):
        train(tiny_run(faces, epochs=3), run, resume=True, progress=False)
    after = {name: (run / name).read_bytes() for name in before}
    assert yaml.safe_load(after["config.yaml"])["train"]["epochs"] == 1
    assert after == before
    monkeypatch.setattr(SegmentationLoss, "forward", real)
    summary = train(tiny_run(faces, epochs=2), run, resume=True, progress=False)  # a good extension is kept
    assert summary["epochs_completed"] == 2 and summary["extended"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2


# -- renamed keys -------------------------------------------------------------------------------------------


def test_a_run_folder_written_with_img_size_resumes_and_reads_the_same(faces, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(tiny_run(faces, epochs=1), run, progress=False)
    doc = yaml.safe_load((run / "config.yaml").read_text())
    assert doc["data"]["image_size"] == 48
    doc["data"]["img_size"] = doc["data"].pop("image_size")  # as the release before the rename wrote it
    (run / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert RunConfig.from_dict(doc) == tiny_run(faces, epochs=1)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 2
    with pytest.raises(SegformerError, match=r"^data\.image_size: given twice"):
        RunConfig.from_dict({"data": {"img_size": 32, "image_size": 64}})


def test_the_image_size_flag_and_its_old_spelling():
    parser = build_parser()
    for flag in ("--image-size", "--img-size"):
        assert parser.parse_args(["train", "--synthetic", "8", flag, "64"]).image_size == 64


# -- help --------------------------------------------------------------------------------------------------


def test_both_helps_name_the_recipe_training_uses_without_config(capsys):
    recipe = default_recipe(None)
    assert load_recipe(recipe).model_name == "microsegformer"
    with pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    assert f"train a model ({recipe} recipe by default" in top
    assert "seed recipe" not in top
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    sub = " ".join(capsys.readouterr().out.split())
    assert f"{recipe} for folder (CE7454) data and without --data" in sub


# -- threads under load -------------------------------------------------------------------------------------


def test_a_run_reports_each_epochs_speed_to_the_thread_tuner(faces, tmp_path, monkeypatch, capsys):  # noqa: F811
    seen: list[float] = []

    def measured(self, rate: float) -> str | None:
        seen.append(rate)
        return "threads: 2 -> 1 (moved)" if len(seen) == 2 else None

    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    monkeypatch.setattr(runtime, "idle_cores", lambda interval=0.25: 2.0)
    monkeypatch.setattr(runtime.ThreadTuner, "measured", measured)
    threads = torch.get_num_threads()
    try:
        runtime.set_threads(None)  # the default count, as the command line chooses it
        train(tiny_run(faces, epochs=3, deterministic=False), tmp_path / "a", progress=True)
        assert len(seen) == 3 and all(rate > 0 for rate in seen)
        assert "threads: 2 -> 1 (moved)" in capsys.readouterr().out
        seen.clear()
        train(tiny_run(faces, epochs=2), tmp_path / "b", progress=False)  # deterministic: never moved
        runtime.set_threads(1)  # --threads 1
        train(tiny_run(faces, epochs=2, deterministic=False), tmp_path / "c", progress=False)
        assert seen == []
    finally:
        torch.set_num_threads(threads)
