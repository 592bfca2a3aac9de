"""`segformer demo` end to end at toy scale: data, a fixed number of epochs, scores, report, reuse,
the promise check, and options on a re-run honoured or refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segformer import load
from segformer.apps.demo import DEFAULTS, DEMO_OVERRIDES, PROMISED_CE7454, promise_warning
from segformer.engine.log import format_epochs

from conftest import run_cli


def test_demo_writes_data_model_predictions_and_report(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--epochs", "1", "--num", "18", "--val", "2", "--size", "32"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    # The work and its expected time are announced before training (measured steps, not a guess).
    assert "demo: 1 epoch x 1 steps of 16 faces at 32 px = 1 steps (measured" in text
    assert "s/step with" in text and "of training" in text
    assert "CE7454 F-score" in text and "with flip test-time augmentation" in text
    assert "after 1 epoch" in text
    assert json.loads((out / "data" / "dataset.json").read_text())["splits"] == {"train": 18, "val": 2}
    model = load(out / "run" / "best")
    assert model.meta["image_size"] == 32
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["epochs_completed"] == 1
    assert summary["stop_reason"] == "epochs done"
    config = (out / "run" / "config.yaml").read_text()
    assert "dice_classes: present" in config and "augment: none" in config and "max_minutes: null" in config
    report = (out / "report.md").read_text()
    assert "| none |" in report and "| flip |" in report and "l_brow" in report
    assert "for 1 epoch (1 steps of 16)" in report and "linear warm-up" in report
    assert (out / "predictions.png").is_file() and len(list((out / "predictions").glob("*.png"))) == 2
    # A toy run is far below the promise: a loud warning with the command that continues this run.
    assert "WARNING: CE7454 F-score" in text and f"below the {PROMISED_CE7454}" in text
    assert f"segformer demo --out {out} --epochs {DEFAULTS['epochs']}" in text
    assert "WARNING" in report

    # Run again without options: the folder's settings and finished training are reused.
    first = text.splitlines()
    done = run_cli("demo", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "run" / "summary.json").read_text()) == summary
    assert [line for line in done.stdout.splitlines() if "CE7454" in line] == [
        line for line in first if "CE7454" in line
    ]


@pytest.mark.parametrize(
    "option, message",
    [
        (["--size", "48"], "--size 48 (the folder has 32)"),
        (["--num", "20"], "--num 20 (the folder has 18)"),
        (["--epochs", "0"], "argument --epochs: must be an integer >= 1"),
        (["--minutes", "20"], "unrecognized arguments: --minutes"),
    ],
)
def test_demo_refuses_options_that_contradict_the_folder(tmp_path, option, message):
    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    meta = {"num": 20, "size": 32, "seed": 0, "splits": {"train": 18, "val": 2}}
    (out / "data" / "dataset.json").write_text(json.dumps(meta))
    done = run_cli("demo", "--out", str(out), "--quiet", *option)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "run").exists()  # refused before any training


def test_demo_trains_a_run_further_with_more_epochs_and_refuses_fewer(tmp_path):
    from segformer import SegformerError
    from segformer.apps.demo import run_demo

    out = tmp_path / "demo"
    first = run_demo(out, epochs=1, num=16, val=1, size=32, progress=False)["summary"]
    assert first["epochs_completed"] == 1 and first["steps"] == 1
    # More epochs on the same folder (data settings from the folder): the run goes on, not from scratch.
    more = run_demo(out, epochs=2, progress=False)
    assert more["summary"]["epochs_completed"] == 2 and more["summary"]["steps"] == 2 and more["epochs"] == 2
    assert "for 2 epochs (2 steps of 16)" in (out / "report.md").read_text()
    with pytest.raises(SegformerError, match="already trained 2 epochs; --epochs 1 cannot undo that"):
        run_demo(out, epochs=1, progress=False)
    assert run_demo(out, progress=False)["summary"] == more["summary"]  # no --epochs: the run as it is


def test_promise_warning_only_when_more_than_the_tolerance_below():
    settings = {**DEFAULTS, "device": "cpu"}
    assert promise_warning(PROMISED_CE7454 - 0.049, Path("d"), settings, 14.0) is None
    warning = promise_warning(0.40, Path("d"), settings, 1.28846)
    assert warning is not None and "this run: 1.29 epochs on 5,000 faces at 128 px" in warning
    assert "segformer demo --out d --epochs 14" in warning
    assert "default data" not in warning  # the promise applies to these settings
    after = promise_warning(0.70, Path("d"), settings, 14.0)
    assert "segformer demo --out d --epochs 21" in after  # already at the default: half as much again


def test_format_epochs_never_rounds_a_fraction_away():
    assert format_epochs(14.0) == "14 epochs" and format_epochs(1.0) == "1 epoch"
    assert format_epochs(1.28846) == "1.29 epochs" and format_epochs(0.3) == "0.30 epochs"


def test_demo_overrides_are_valid_recipe_keys():
    from segformer.config import load_recipe

    cfg = load_recipe("microsegformer-seed").override(DEMO_OVERRIDES)
    assert cfg.train.eval_every == 4 and cfg.model.drop_path_rate == 0.0
