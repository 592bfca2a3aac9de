"""`segformer demo` end to end at toy scale: data, a few seconds of training, scores, report, reuse."""

from __future__ import annotations

import json

from segformer import load
from segformer.demo import DEMO_OVERRIDES

from conftest import run_cli


def test_demo_writes_data_model_predictions_and_report(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--minutes", "0.05", "--num", "18", "--val", "2"]
    args += ["--size", "32", "--quiet"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "CE7454 F-score" in text and "with flip test-time augmentation" in text
    assert json.loads((out / "data" / "dataset.json").read_text())["splits"] == {"train": 18, "val": 2}
    model = load(out / "run" / "best")
    assert model.meta["image_size"] == 32
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["steps"] >= 1 and summary["stop_reason"].startswith("time budget")
    config = (out / "run" / "config.yaml").read_text()
    assert "dice_classes: present" in config and "augment: none" in config
    report = (out / "report.md").read_text()
    assert "| none |" in report and "| flip |" in report and "l_brow" in report
    assert (out / "predictions.png").is_file() and len(list((out / "predictions").glob("*.png"))) == 2

    # Run again: the finished training is reused, the scores are the same.
    first = text.splitlines()
    done = run_cli(*args)
    text = done.stdout
    assert done.returncode == 0 and json.loads((out / "run" / "summary.json").read_text()) == summary
    assert [line for line in text.splitlines() if "CE7454" in line] == [
        line for line in first if "CE7454" in line
    ]


def test_demo_overrides_are_valid_recipe_keys():
    from segformer.config import load_recipe

    cfg = load_recipe("microsegformer-celebamask").override(DEMO_OVERRIDES)
    assert cfg.train.eval_every == 4 and cfg.model.drop_path_rate == 0.0
