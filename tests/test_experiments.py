"""Experiment suites: the variants as data, every suite in quick mode on synthetic faces (one row per
variant, numbers in range, valid figures), resuming, and the CLI."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from segformer import SegformerError
from segformer.apps.experiments import (
    QUICK,
    SUITE_NAMES,
    ExperimentSettings,
    get_suite,
    make_settings,
    measure_fps,
    run_config,
    run_suite,
)
from segformer.cli import main
from segformer.config import RunConfig
from segformer.data.synthetic import write_synthetic_dataset
from segformer.engine.train import train
from segformer.models import create_model, get_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    # The machine's cores are shared: one thread avoids oversubscription stalls in these tiny runs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    write_synthetic_dataset(root, num=20, size=32, seed=0, val_fraction=0.2, progress=False)
    return root


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 50 and img.height > 50
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 10, f"{path} looks blank"


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- suites as data --------------------------------------------------------------------------------


def test_suites_hold_the_seed_variants():
    def overrides(name):
        return {v.name: v.overrides for v in get_suite(name).variants}

    assert [v.overrides["model.depths"] for v in get_suite("depth").variants] == [
        [1, 1, 1, 1],
        [1, 2, 2, 2],
        [2, 3, 3, 3],
    ]
    assert [v.overrides["model.embed_dims"] for v in get_suite("width").variants] == [
        [16, 32, 64, 96],
        [32, 64, 128, 192],
        [48, 96, 192, 288],
    ]
    assert overrides("loss") == {
        "ce": {"train.loss": "ce"},
        "dice": {"train.loss": "dice"},
        "ce+0.25dice": {"train.loss": "ce+dice", "train.dice_weight": 0.25},
        "ce+0.5dice": {"train.loss": "ce+dice", "train.dice_weight": 0.5},
        "ce+1.0dice": {"train.loss": "ce+dice", "train.dice_weight": 1.0},
    }
    assert overrides("augment") == {
        a: {"data.augment": a} for a in ("none", "geometric", "photometric", "both")
    }
    assert overrides("schedule") == {s: {"train.schedule": s} for s in ("constant", "step", "cosine")}
    assert overrides("efficiency") == {
        "microsegformer": {"model.name": "microsegformer"},
        "segformer-b0": {"model.name": "segformer-b0"},
        "unet": {"model.name": "unet"},
        "unet-w15": {"model.name": "unet", "model.unet_width": 15},
    }
    with pytest.raises(SegformerError, match="unknown experiment suite 'depths'"):
        get_suite("depths")


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_every_variant_is_a_valid_recipe_that_differs_only_by_its_overrides(suite, faces):
    settings = ExperimentSettings(epochs=20, img_size=96, seed=7)
    base = run_config(settings, faces, replace(get_suite(suite).variants[0], overrides={})).to_dict()
    for variant in get_suite(suite).variants:
        cfg = run_config(settings, faces, variant)
        assert cfg.train.seed == 7 and cfg.train.epochs == 20 and cfg.data.img_size == 96
        assert cfg.train.early_stop == 0  # same epochs for every variant
        assert cfg.train.warmup_epochs == pytest.approx(5 * 20 / 150)  # the recipe's share of training
        assert cfg.data.root == str(faces.resolve())
        changed = {
            f"{section}.{key}"
            for section, fields in cfg.to_dict().items()
            for key, value in fields.items()
            if base[section].get(key) != value
        }
        assert changed <= set(variant.overrides)
        model = {k: v for k, v in cfg.to_dict()["model"].items() if k != "name"}
        get_config(cfg.model_name, **model)  # the architecture is valid


def test_settings_overrides_apply_to_every_run_and_variants_win(faces):
    settings = ExperimentSettings(overrides={"train.lr": 1e-3, "train.loss": "focal"})
    cfg = run_config(settings, faces, get_suite("loss").variants[0])
    assert cfg.train.lr == 1e-3 and cfg.train.loss == "ce"
    assert make_settings(True, epochs=3).epochs == 3 and make_settings(True).img_size == QUICK.img_size
    assert make_settings(False, seed=None).seed == ExperimentSettings().seed


def test_measure_fps_counts_forward_passes(monkeypatch):
    model = create_model("microsegformer", embed_dims=(8, 16, 24, 32), decoder_dim=16)
    calls = []
    original = model.forward
    model.forward = lambda x: calls.append(tuple(x.shape)) or original(x)
    fps = measure_fps(model, 32, warmup=2, min_seconds=0.0, min_iters=5)
    assert calls == [(1, 3, 32, 32)] * 7  # 2 warm-up + 5 timed, batch 1 at the size
    assert fps > 0 and not model.training

    class Sleeper(torch.nn.Module):
        config = model.config

        def forward(self, x):
            time.sleep(0.02)
            return x

    assert 25 < measure_fps(Sleeper(), 8, warmup=0, min_seconds=0.0, min_iters=5) <= 50  # 1 / 0.02 s


# -- every suite, quick ----------------------------------------------------------------------------

SLOW_SUITES = {"depth", "width", "loss", "augment", "efficiency"}  # depth: see the CLI test


@pytest.mark.parametrize(
    "suite", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW_SUITES else s for s in SUITE_NAMES]
)
def test_quick_suite_writes_one_row_per_variant_and_valid_figures(suite, faces, tmp_path):
    result = run_suite(suite, faces, tmp_path, QUICK, progress=False)
    variants = [v.name for v in get_suite(suite).variants]
    suite_dir = tmp_path / suite
    rows = read_rows(suite_dir / "results.csv")
    assert [r["run"] for r in rows] == variants == [r["run"] for r in result["rows"]]
    for r in rows:
        assert int(r["params"]) > 1000 and float(r["gflops"]) > 0 and float(r["fps"]) > 0
        for key in ("ce7454_f", "miou", "mean_f1_fg", "pixel_acc", "best_ce7454_f"):
            assert 0.0 <= float(r[key]) <= 1.0, (key, r[key])
        assert float(r["best_ce7454_f"]) >= float(r["ce7454_f"]) - 1e-12
        assert r["seed"] == "0" and r["img_size"] == "32" and r["epochs_completed"] == "2"
        assert int(r["val_images"]) == 4 and r["stop_reason"] == "epochs done"
        summary = json.loads((suite_dir / r["run"] / "summary.json").read_text())
        assert float(r["ce7454_f"]) == pytest.approx(summary["last_scores"]["ce7454_f"])
        assert int(r["params"]) == sum(
            p.numel() for p in create_model(r["model"], **_model_overrides(r)).parameters()
        )

    md = (suite_dir / "results.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| ")]
    assert len(table) == 1 + len(variants)  # header + one row per variant
    assert [line.split(" | ")[0].removeprefix("| ") for line in table[1:]] == variants
    for line in table[1:]:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")[1:]]
        assert len(cells) == 7 and all(float(c) >= 0 for c in cells)
        assert all(0 <= float(c) <= 1 for c in cells[4:])
    tex = (suite_dir / "results.tex").read_text()
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == len(variants) and all(line.rstrip().endswith(r"\\") for line in body)
    assert all(line.count("&") == 7 for line in body)

    figures = ["curves.png", "per_class_f1.png", "predictions.png"]
    if suite in ("depth", "width", "efficiency"):
        figures.append("params_vs_score.png")
    for name in figures:
        assert_png(suite_dir / name)
    per_class = read_rows(suite_dir / "per_class_f1.csv")
    assert len(per_class) == 19 and list(per_class[0]) == ["class", *variants]
    meta = json.loads((suite_dir / "suite.json").read_text())
    assert meta["runs"] == variants and meta["settings"]["seed"] == 0
    if suite == "efficiency":
        by = {r["run"]: r for r in result["rows"]}
        assert by["microsegformer"]["params"] == 1_721_939 and by["segformer-b0"]["params"] == 3_719_027
        assert by["unet"]["params"] == 31_038_803 and by["unet-w15"]["params"] == 1_707_844
        assert by["unet"]["gflops"] > 10 * by["segformer-b0"]["gflops"]
        assert by["segformer-b0"]["gflops"] > by["microsegformer"]["gflops"]


def _model_overrides(row: dict[str, str]) -> dict:
    return {
        k.removeprefix("model."): v
        for k, v in json.loads(row["overrides"]).items()
        if k not in ("model.name",) and k.startswith("model.")
    }


# -- resuming --------------------------------------------------------------------------------------


def test_suite_resumes_interrupted_runs_and_reuses_finished_ones(faces, tmp_path, monkeypatch):
    import segformer.apps.experiments as experiments

    # An interrupted run: the "constant" variant stopped by a tiny budget after one step, summary lost.
    variant = get_suite("schedule").variants[0]
    run_dir = tmp_path / "schedule" / variant.name
    cut = run_config(QUICK, faces, variant).override({"train.max_minutes": 1e-6})
    assert train(cut, run_dir, progress=False)["epochs_completed"] == 0
    (run_dir / "summary.json").unlink()

    calls = []

    def recording_train(cfg, out, resume=False, progress=True):
        calls.append((Path(out).name, resume))
        return train(cfg, out, resume=resume, progress=progress)

    monkeypatch.setattr(experiments, "train", recording_train)
    first = run_suite("schedule", faces, tmp_path, QUICK, progress=False)["rows"]
    assert calls == [("constant", True), ("step", False), ("cosine", False)]
    assert [r["epochs_completed"] for r in first] == [2, 2, 2]
    resumed = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert resumed[0]["epoch"] < 1 and resumed[-1]["epoch"] == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiments, "train", no_training)
    again = run_suite("schedule", faces, tmp_path, QUICK, progress=False)["rows"]
    assert again == first  # scores from the runs, measurements from their cache

    timed = []
    monkeypatch.setattr(experiments, "measure_fps", lambda model, *a, **k: timed.append(model) or 123.0)
    remeasured = run_suite("schedule", faces, tmp_path, QUICK, progress=False, remeasure=True)["rows"]
    assert len(timed) == 3 and [r["fps"] for r in remeasured] == [123.0] * 3
    assert [r["ce7454_f"] for r in remeasured] == [r["ce7454_f"] for r in first]

    # Killed after the last checkpoint but before the summary: resumed (nothing left to train) and scored
    # from last/ by evaluation, which must reproduce the training-time score.
    (tmp_path / "schedule" / "step" / "summary.json").unlink()
    monkeypatch.setattr(experiments, "train", recording_train)
    calls.clear()
    rows = run_suite("schedule", faces, tmp_path, QUICK, progress=False)["rows"]
    assert calls == [("step", True)]
    assert rows[1]["ce7454_f"] == pytest.approx(first[1]["ce7454_f"], abs=1e-9)
    assert rows[1]["miou"] == pytest.approx(first[1]["miou"], abs=1e-9)

    with pytest.raises(SegformerError, match=r"constant holds a run made with other settings.*train.epochs"):
        run_suite("schedule", faces, tmp_path, replace(QUICK, epochs=3), progress=False)


# -- CLI -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_runs_a_suite_on_generated_faces_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "augment", "--quick", "--synthetic", "16", "--out", str(out), "--quiet",
                 "--set", "train.lr=0.002"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| Run | Params (M) | GFLOPs | FPS | Epochs | CE7454 F | mIoU | mean F1 |" in printed
    for name in ("none", "geometric", "photometric", "both"):
        assert f"| {name} |" in printed
        cfg = RunConfig.from_dict(yaml.safe_load((out / "augment" / name / "config.yaml").read_text()))
        assert (
            cfg.train.lr == 0.002
            and cfg.data.augment == name
            and cfg.data.root == str((out / "data").resolve())
        )
    assert (out / "data" / "dataset.json").is_file()


def test_cli_quick_depth_suite(tmp_path, capsys, faces):
    out = tmp_path / "exp"
    assert main(["experiment", "depth", "--quick", "--data", str(faces), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| depths-") == 3
    assert (out / "depth" / "results.tex").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["experiment", "depth", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing: dataset folder not found" in err
    assert main(["experiment", "depth", "--out", str(tmp_path)]) == 1
    assert "pass --data ROOT or --synthetic N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "depths", "--quick"])


def test_ctrl_c_stops_a_suite_within_seconds_and_leaves_resumable_state(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from conftest import SRC

    out = tmp_path / "exp"
    command = [sys.executable, "-m", "segformer", "experiment", "schedule", "--quick", "--synthetic", "12",
               "--epochs", "500", "--out", str(out), "--quiet", "--threads", "1"]  # fmt: skip
    # A terminal's Ctrl-C signals the whole process group (DataLoader workers included).
    proc = subprocess.Popen(
        command, env={**os.environ, "PYTHONPATH": str(SRC)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state = out / "schedule" / "constant" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.exists(), proc.communicate()[1]
    time.sleep(1.0)
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 3.0  # 3-4 s of interpreter teardown before the exit in cli.main
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert state.is_file() and not (out / "schedule" / "constant" / "summary.json").exists()
    meta = json.loads((out / "schedule" / "suite.json").read_text())
    assert meta["complete"] is False  # resumable: the same command continues from state.pt
