"""The run folder of `segformer train` under the output policy (`segformer.fileio.OutputFolder`): a file
is the run's only when the folder's manifest records that segformer train wrote it; a user's entry at one
of the run's names is refused in one line and left as it was, even with --overwrite; a resumed run
replaces its own files; one writer per run folder. And `segformer.save` / `convert` the same way."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import segformer
from segformer import SegformerError
from segformer.checkpoint import convert
from segformer.cli import main
from segformer.data.synthetic import write_synthetic_dataset
from segformer.engine.rundir import RunDir
from segformer.engine.train import train
from segformer.fileio import MANIFEST_NAME, OutputFolder
from test_train import tiny_run

from conftest import SRC, run_cli, tiny_config


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    write_synthetic_dataset(root, num=20, size=32, seed=0, val_fraction=0.2)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m"
    segformer.save(
        segformer.create_model(tiny_config(num_classes=19)), path, meta={"label_set": "celebamask"}
    )
    return path


def sums(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("segformer train: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def users_run_lookalike(run: Path, model: Path, faces: Path) -> None:
    """A folder of the user's with files named like a run's, whose contents even look like segformer's
    (a recipe, a metrics line, a segformer model folder), but which no segformer train recorded."""
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_run(faces, epochs=1).to_dict(), sort_keys=False))
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.5, "mine": true}\n')
    shutil.copytree(model, run / "best", ignore=shutil.ignore_patterns(MANIFEST_NAME))
    (run / "notes.txt").write_text("my notes\n")


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_users_files_at_the_runs_names_are_refused_in_one_line(overwrite, model, faces, tmp_path, capsys):
    run = tmp_path / "run"
    users_run_lookalike(run, model, faces)
    before = sums(run)
    argv = ["train", "--data", str(faces), "--epochs", "1", "--out", str(run), "--quiet"]
    assert main([*argv, "--overwrite"] if overwrite else argv) == 1
    err = one_line(capsys)
    assert str(run) in err and "which segformer did not write" in err
    for name in ("config.yaml", "metrics.jsonl", "best"):
        assert name in err, name
    assert "notes.txt" not in err  # (not at one of the run's names)
    assert sums(run) == before  # nothing changed, nothing added: no lock, no manifest
    assert sorted(p.name for p in run.iterdir()) == ["best", "config.yaml", "metrics.jsonl", "notes.txt"]


def test_resuming_a_folder_without_the_runs_record_is_refused(faces, tmp_path, capsys):
    """A run folder whose manifest is gone (copied without it, or written before manifests existed)
    holds nothing segformer may replace: resuming it is refused, and nothing in it changes."""
    ref = tmp_path / "ref"
    train(tiny_run(faces, epochs=1), ref, progress=False)
    run = tmp_path / "run"
    shutil.copytree(ref, run, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    before = sums(run)
    with pytest.raises(SegformerError, match="which segformer did not write") as err:
        train(tiny_run(faces, epochs=2), run, resume=True, progress=False)
    assert "\n" not in str(err.value) and "state.pt" in str(err.value)
    assert sums(run) == before and not (run / MANIFEST_NAME).exists()


def test_a_resumed_run_replaces_its_own_files_and_records_them(faces, tmp_path):
    run = tmp_path / "run"
    train(tiny_run(faces, epochs=1), run, progress=False)
    first = sums(run)
    (run / "notes.txt").write_text("my notes\n")  # the user's, beside the run: kept
    summary = train(tiny_run(faces, epochs=2), run, resume=True, progress=False)
    assert summary["epochs_completed"] == 2
    after = sums(run)
    for name in ("state.pt", "metrics.jsonl", "summary.json", "curves.png", "last/model.safetensors"):
        assert after[name] != first[name], name  # replaced: the run's own
    assert after["notes.txt"] == hashlib.sha256(b"my notes\n").hexdigest()
    files = json.loads((run / MANIFEST_NAME).read_text())["files"]
    ours = {n for n in after if n != MANIFEST_NAME and n != "notes.txt"}
    assert set(files) == ours  # every file of the run recorded, the user's not
    for name in ours:
        assert files[name]["command"] == "train" and files[name]["sha256"] == after[name], name

    # one of the run's files changed by the user after the run: a new run never replaces it
    (run / "best_scores.json").write_text('{"mine": true}\n')
    kept = sums(run)
    with pytest.raises(SegformerError, match=r"best_scores\.json, which segformer did not write"):
        train(tiny_run(faces, epochs=1), run, progress=False, overwrite=True)
    assert sums(run) == kept


def test_a_run_never_writes_into_its_data(faces, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(faces, data)
    before = sums(data)
    for out in (data, data / "run"):
        with pytest.raises(SegformerError, match="never writes over its input") as err:
            train(tiny_run(data, epochs=1), out, progress=False, overwrite=True)
        assert "\n" not in str(err.value)
    assert sums(data) == before


def test_a_second_writer_of_a_run_folder_is_refused_in_one_line(faces, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "recipe.yaml"
    doc = tiny_run(faces, epochs=1000).to_dict()
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    first = subprocess.Popen(
        [sys.executable, "-m", "segformer", "train", "--config", str(cfg), "--out", str(run), "--quiet"],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(1200):
            if (run / "lock").is_file() and (run / "lock").read_text().strip():
                break
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.1)
        for extra in ([], ["--resume"]):
            second = run_cli("train", "--config", str(cfg), "--out", str(run), "--quiet", *extra)
            assert second.returncode == 1, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and f"is being written by process {first.pid}" in lines[0], second.stderr
        # nor does another command write into it meanwhile
        with (
            pytest.raises(SegformerError, match=f"being written by process {first.pid}"),
            OutputFolder(run, "x"),
        ):
            pass
        assert first.poll() is None  # undisturbed
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)


def test_a_run_folder_is_not_written_while_another_command_writes_it(faces, tmp_path):
    run = tmp_path / "run"
    busy = r"being written by process \d+"
    with OutputFolder(run, "predict"), pytest.raises(SegformerError, match=busy):
        train(tiny_run(faces, epochs=1), run, progress=False)
    with RunDir(run).lock(), pytest.raises(SegformerError, match=busy), OutputFolder(run, "predict"):
        pass
    assert not run.exists()


# -- segformer.save and convert -----------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("call", ["save", "save hf", "convert", "convert hf"])
def test_save_and_convert_refuse_a_users_config_json(call, overwrite, model, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(model, out, ignore=shutil.ignore_patterns(MANIFEST_NAME))  # a model of the user's
    (out / "notes.txt").write_text("my notes\n")
    before = sums(out)
    fmt = "hf" if call.endswith("hf") else "native"
    with pytest.raises(
        SegformerError, match=r"config\.json.*which segformer (save|convert) did not write"
    ) as err:
        if call.startswith("save"):
            segformer.save(segformer.load(model), out, format=fmt, overwrite=overwrite)
        else:
            convert(model, out, to=fmt, overwrite=overwrite)
    assert "\n" not in str(err.value) and str(out) in str(err.value)
    assert sums(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "notes.txt"]
    )


def test_save_replaces_only_its_own_model(model, tmp_path):
    net = segformer.load(model)
    out = tmp_path / "out"
    segformer.save(net, out)
    written = sums(out)
    segformer.save(net, out, format="hf")  # its own: replaced without asking
    assert sums(out)["config.json"] != written["config.json"]
    assert json.loads((out / "config.json").read_text())["model_type"] == "segformer"
    convert(model, tmp_path / "conv")
    with pytest.raises(
        SegformerError, match=r"config\.json, model\.safetensors, which segformer save did not"
    ):
        segformer.save(net, tmp_path / "conv", overwrite=True)  # another command's output is not save's
    assert segformer.load(tmp_path / "conv").config == net.config
