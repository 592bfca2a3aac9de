"""The training engine end to end on tiny synthetic data: run folder, eval, resume, budgets, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from segformer import SegformerError, create_model, load
from segformer.cli import main
from segformer.config import RunConfig, load_recipe
from segformer.data.synthetic import write_synthetic_dataset
from segformer.engine.train import train

from conftest import SRC, run_cli

TINY_MODEL = {
    "name": "microsegformer",
    "embed_dims": [8, 16, 24, 32],
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 1, 1],
    "decoder_dim": 16,
}


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    write_synthetic_dataset(root, num=40, size=48, seed=0, val_fraction=0.2)
    return root


def tiny_run(data: Path, **train) -> RunConfig:
    doc = {
        "model": dict(TINY_MODEL),
        "data": {"root": str(data), "img_size": 48, "augment": "both", "workers": 0},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "warmup_epochs": 1,
            "lr": 3e-3,
            "deterministic": True,
            "log_every": 1,
            **train,
        },
    }
    return RunConfig.from_dict(doc)


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / which / "model.safetensors"))


def test_train_writes_a_complete_run_folder(faces, tmp_path, capsys):
    run = tmp_path / "run"
    summary = train(tiny_run(faces), run, progress=False)
    assert summary["epochs_completed"] == 2 and summary["stop_reason"] == "epochs done"
    for name in (
        "config.yaml",
        "state.pt",
        "metrics.jsonl",
        "curves.png",
        "summary.json",
        "best_scores.json",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["train_loss"] > 0 and r["images_per_s"] > 0 and r["lr"] > 0
        assert 0 <= r["val"]["ce7454_f"] <= 1 and 0 <= r["val"]["miou"] <= 1
    assert Image.open(run / "curves.png").format == "PNG"
    state = torch.load(run / "state.pt", weights_only=True)  # plain types only
    assert state["counters"]["epoch"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["depths"] == [1, 1, 1, 1]
    # best/ and last/ are loadable model directories that remember how to preprocess
    model = load(run / "best")
    assert model.config.num_classes == 19 and model.config.class_names[4] == "l_eye"
    assert model.meta["image_size"] == 48 and model.meta["label_set"] == "celebamask"
    assert model.meta["epoch"] == summary["best_epoch"]

    # segformer eval reproduces the scores training recorded for the last epoch
    assert main(["eval", str(run / "last"), "--data", str(faces), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["ce7454_f"] == pytest.approx(records[-1]["val"]["ce7454_f"], abs=1e-9)
    assert set(scores["per_class"]) >= {"background", "skin", "l_eye", "neck_l"}
    assert main(["eval", str(run / "last"), "--data", str(faces), "--tta", "flip"]) == 0
    assert "CE7454 F-score" in capsys.readouterr().out


def test_an_existing_run_is_not_overwritten(faces, tmp_path):
    run = tmp_path / "run"
    train(tiny_run(faces, epochs=1), run, progress=False)
    with pytest.raises(SegformerError, match="already holds a run"):
        train(tiny_run(faces, epochs=1), run, progress=False)


def test_resume_refuses_changed_settings(faces, tmp_path):
    run = tmp_path / "run"
    train(tiny_run(faces, epochs=1), run, progress=False)
    with pytest.raises(SegformerError, match=r"train\.lr"):
        train(tiny_run(faces, epochs=1, lr=1.0), run, resume=True, progress=False)


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(faces, tmp_path):
    epochs = 4
    ref = tmp_path / "ref"
    train(tiny_run(faces, epochs=epochs), ref, progress=False)

    run = tmp_path / "killed"
    args = ["train", "--config", str(ref / "config.yaml"), "--out", str(run), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "segformer", *args], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run / "summary.json").exists(), "killed too late to test anything"

    summary = train(tiny_run(faces, epochs=epochs), run, resume=True, progress=False)
    assert summary["epochs_completed"] == epochs
    a, b = weights(ref), weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, epochs + 1))


def test_time_budget_stops_cleanly_then_resumes_inside_the_epoch(faces, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_run(faces, epochs=3, max_minutes=1e-4), run, progress=False)
    assert summary["stop_reason"].startswith("time budget")
    assert summary["steps"] >= 1 and summary["epochs_completed"] == 0
    assert (run / "last" / "model.safetensors").is_file() and summary["last_scores"] is not None
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["counters"]["step_in_epoch"] == summary["steps"]
    done = train(tiny_run(faces, epochs=3, max_minutes=60), run, resume=True, progress=False)
    assert done["epochs_completed"] == 3
    assert done["steps"] == 3 * 4  # 32 training images / batch 8, none repeated or skipped


def test_cli_train_with_overrides_and_resume(faces, tmp_path):
    run = tmp_path / "cli"
    model_sets = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items() if k != "name"]
    sets = [x for s in [*model_sets, "train.warmup_epochs=0", "data.augment=none"] for x in ("--set", s)]
    common = ["--data", str(faces), "--img-size", "48", "--batch-size", "8", "--workers", "0", "--quiet"]
    assert main(["train", *common, "--epochs", "1", "--out", str(run), *sets]) == 0
    cfg = load_recipe(run / "config.yaml")
    assert cfg.train.warmup_epochs == 0 and cfg.data.augment == "none" and cfg.train.lr == 1.5e-3
    proc = run_cli("train", "--out", str(run), "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "epochs done" in proc.stdout


def test_cli_errors_are_one_line(tmp_path):
    proc = run_cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 1
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", "--out", str(tmp_path / "r2"), "--resume")
    assert proc.returncode == 1 and "no training state" in proc.stderr


def test_packaged_recipes():
    seed = load_recipe("microsegformer-seed")
    t = seed.train
    assert (t.lr, t.weight_decay, t.batch_size, t.epochs, t.warmup_epochs) == (1.5e-3, 5e-4, 32, 150, 5)
    assert (t.early_stop, t.grad_clip, t.loss, t.dice_weight, t.schedule) == (
        30,
        1.0,
        "ce+dice",
        0.5,
        "cosine",
    )
    paper = load_recipe("segformer-ade20k").train
    assert (paper.lr, paper.weight_decay, paper.head_lr_mult, paper.schedule) == (6e-5, 0.01, 10.0, "poly")
    with pytest.raises(SegformerError, match="unknown field"):
        seed.override({"train.learning_rate": 1})


@pytest.mark.dist
def test_two_process_ddp_step_equals_the_single_process_step(faces, tmp_path):
    """SGD steps on global batches of 8: 2 gloo processes x 4 images == 1 process x 8 images."""
    sets = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items() if k != "name"]
    sets += [
        "model.drop_path_rate=0.0",
        "train.optimizer=sgd",
        "train.lr=0.5",
        "train.warmup_epochs=0",
        "train.schedule=constant",
        "data.augment=none",
        "train.grad_clip=0",
        "train.deterministic=true",
    ]
    sets = [x for s in sets for x in ("--set", s)]
    # The seed recipe: the face recipe's bf16 autocast and class-weighted CE (a weighted mean over
    # each process's pixels) are not bit-for-bit the same split over processes.
    common = ["--config", "microsegformer-seed", "--data", str(faces), "--img-size", "48", "--epochs", "1",
              "--workers", "0", "--quiet", *sets]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    single = run_cli("train", *common, "--batch-size", "8", "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "segformer", "train", *common, "--batch-size", "4", "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)
    # the steps really moved the weights away from the (seeded) initial ones
    torch.manual_seed(0)
    init = create_model(**{**TINY_MODEL, "drop_path_rate": 0.0}).state_dict()
    moved = max(float((a[k] - init[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert moved > 1e-2
    single_log = json.loads((tmp_path / "single" / "metrics.jsonl").read_text().splitlines()[0])
    ddp_log = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    assert single_log["step"] == ddp_log["step"] == 4
    assert ddp_log["train_loss"] == pytest.approx(single_log["train_loss"], rel=1e-5)
