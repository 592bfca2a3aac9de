"""The training loop under faults: one writer per run folder, kills between writes, NaN losses (also on
one DDP process only), extending finished runs, budgeted evaluation, JSON without NaN."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from segformer import SegformerError, load
from segformer.data.synthetic import write_synthetic_dataset
from segformer.engine import train as engine
from segformer.engine.budget import Clock, budgeted_epochs, fit_eval_every
from segformer.engine.learner import update_ema
from segformer.engine.losses import SegmentationLoss
from segformer.engine.rundir import RunDir
from segformer.engine.state import RunState
from segformer.engine.train import train
from segformer.fileio import MANIFEST_NAME
from test_train import TINY_MODEL, tiny_run, weights

from conftest import SRC, run_cli


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    write_synthetic_dataset(root, num=40, size=48, seed=0, val_fraction=0.2)
    return root


def strict_json(path: Path):
    def refuse(name: str):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- one writer per run folder ---------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(faces, tmp_path):
    run = tmp_path / "run"
    with RunDir(run).lock():
        assert f"{os.getpid()} " in (run / "lock").read_text()
        with pytest.raises(SegformerError, match=rf"being written by process {os.getpid()}"):
            train(tiny_run(faces, epochs=1), run, progress=False)
        proc = run_cli("train", "--data", str(faces), "--out", str(run), "--epochs", "1", "--quiet")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "being written by" in proc.stderr
    assert not run.exists()  # lock released, and the folder it made (empty) removed
    run.mkdir()
    (run / "lock").write_text(f"{dead_pid()} somehost\n")  # left behind by a killed run
    summary = train(tiny_run(faces, epochs=1), run, progress=False)
    assert summary["epochs_completed"] == 1 and not (run / "lock").exists()


def test_the_lock_of_a_killed_run_waits_for_its_orphaned_workers(tmp_path):
    """Forked DataLoader workers share their parent's lock and outlive a kill by a few seconds."""
    fcntl = pytest.importorskip("fcntl")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    fd = os.open(run.lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # an orphan still holds it ...
    os.write(fd, f"{dead_pid()} {os.uname().nodename}\n".encode())  # ... for an owner that is gone
    threading.Timer(1.0, os.close, [fd]).start()  # the orphan exits
    start = time.monotonic()
    with run.lock():
        assert time.monotonic() - start >= 0.9
        assert run.lock_file.read_text().startswith(f"{os.getpid()} ")


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    with pytest.raises(SegformerError, match="no training state"):
        train(tiny_run(tmp_path / "nope"), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(SegformerError):
        train(tiny_run(tmp_path / "nope"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# -- kills between writes --------------------------------------------------------------------------------


def test_a_kill_between_checkpoint_and_log_loses_no_line_and_resumes_bit_identically(
    faces, tmp_path, monkeypatch
):
    epochs = 3  # with an EMA of the weights (last/ holds it), which the checkpoint must carry too
    ref = tmp_path / "ref"
    train(tiny_run(faces, epochs=epochs, ema=0.9), ref, progress=False)

    class Killed(BaseException):  # not an Exception: nothing in the loop may catch it
        pass

    real_write = RunDir.write_metrics

    def write_metrics(self, records):
        if len(records) == 2:
            raise Killed  # state.pt of epoch 2 is renamed into place, metrics.jsonl not yet
        real_write(self, records)

    run = tmp_path / "run"
    monkeypatch.setattr(RunDir, "write_metrics", write_metrics)
    with pytest.raises(Killed):
        train(tiny_run(faces, epochs=epochs, ema=0.9), run, progress=False)
    monkeypatch.setattr(RunDir, "write_metrics", real_write)
    assert torch.load(run / "state.pt", weights_only=True)["counters"]["epoch"] == 2
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    # what a SIGKILL leaves besides: a torn line, atomic-write temporaries, a stale lock
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')
    (run / ".state.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (run / ".best.k1ll3d.tmp").mkdir()
    (run / ".best.k1ll3d.tmp" / "model.safetensors").write_bytes(b"half")
    (run / "last").rename(run / "moved")  # caught between the two renames of a model directory
    (run / ".last.k1ll3d.old").mkdir()
    (run / "moved").rename(run / ".last.k1ll3d.old" / "x")
    (run / "lock").write_text(f"{dead_pid()} {os.uname().nodename}\n")

    summary = train(tiny_run(faces, epochs=epochs, ema=0.9), run, resume=True, progress=False)
    assert summary["epochs_completed"] == epochs
    # no temporary left: only the output policy's record of the run's files
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [MANIFEST_NAME]
    a, b = weights(ref), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["records"] == lines  # the log is the checkpoint's
    ref_lines = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in lines] == [r["train_loss"] for r in ref_lines]
    assert load(run / "last").meta["epoch"] == lines[-1]["epoch"]


KILL_AFTER_STATE = """
import os, signal, sys
from segformer.engine.rundir import RunDir
from segformer.cli import main

real = RunDir.write_metrics

def write_metrics(self, records):  # SIGKILL in the window between the state rename and the log
    if len(records) == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, records)

RunDir.write_metrics = write_metrics
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow  # three processes and the wait for a killed run's orphaned workers
def test_a_sigkill_right_after_the_state_rename_keeps_log_and_checkpoint_together(faces, tmp_path):
    epochs = 3
    ref = tmp_path / "ref"
    train(tiny_run(faces, epochs=epochs), ref, progress=False)
    launcher = tmp_path / "kill.py"
    launcher.write_text(KILL_AFTER_STATE)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    # with workers, whose orphans hold the lock for a few seconds after the kill
    args = ["train", "--config", str(ref / "config.yaml"), "--out", str(run), "--quiet", "--workers", "2"]
    cmd = [sys.executable, str(launcher), "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert torch.load(run / "state.pt", weights_only=True)["counters"]["epoch"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # the kill cost a line ...
    proc = run_cli("train", "--out", str(run), "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]  # ... which the resume restored
    assert torch.load(run / "state.pt", weights_only=True)["records"] == lines
    a, b = weights(ref), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_state_without_records_resumes_from_a_torn_log(faces, tmp_path):
    """Run folders written before the records were kept in state.pt."""
    run = tmp_path / "run"
    train(tiny_run(faces, epochs=2), run, progress=False)
    state = torch.load(run / "state.pt", weights_only=True)
    del state["records"]
    state["counters"]["stopped"] = ""
    state["counters"]["epoch"] = 1  # as if killed after epoch 1 (its log line torn)
    torch.save(state, run / "state.pt")
    text = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(text[0] + "\n" + text[1][:15])
    summary = train(tiny_run(faces, epochs=2), run, resume=True, progress=False)
    assert summary["epochs_completed"] == 2
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# -- non-finite losses -----------------------------------------------------------------------------------


def test_a_step_with_a_nan_loss_leaves_weights_and_optimizer_untouched(faces, tmp_path):
    cfg = tiny_run(faces)
    data = engine.build_train_data(cfg.data, seed=0, out=tmp_path, progress=False)
    model = engine.build_model(engine.model_config(cfg, data))
    learner = engine.build_learner(model, cfg.train, data, torch.device("cpu"))
    images, masks = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4, collate_fn=data.collate)))
    loss, skip = learner.step(iter([(images, masks)]), 1)
    assert float(skip) == 0 and math.isfinite(float(loss))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: v.clone() for k, v in learner.optimizer.state_dict()["state"][0].items()}
    criterion = learner.criterion
    learner.criterion = lambda logits, target: criterion(logits, target) * float("nan")
    loss, skip = learner.step(iter([(images, masks)]), 1)
    assert float(skip) == 1 and not math.isfinite(float(loss))
    learner.criterion = criterion
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    after = learner.optimizer.state_dict()["state"][0]
    assert all(torch.equal(opt_before[k], after[k]) for k in opt_before)  # not even the step count
    assert all(p.grad is None for p in model.parameters())
    learner.step(iter([(images, masks)]), 1)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_diverging_run_stops_and_names_a_checkpoint_that_exists(faces, tmp_path, monkeypatch):
    run = tmp_path / "lr"
    with pytest.raises(SegformerError, match=r"training diverged.*train\.lr.*none saved yet"):
        train(tiny_run(faces, epochs=3, lr=1e9), run, progress=False)
    assert not (run / "state.pt").exists() and not (run / "best").exists()

    calls = {"n": 0}
    real = SegmentationLoss.forward

    def nan_from_epoch_2(self, logits, target):
        calls["n"] += 1
        loss = real(self, logits, target)
        return loss * float("nan") if calls["n"] > 4 else loss  # 4 steps per epoch

    monkeypatch.setattr(SegmentationLoss, "forward", nan_from_epoch_2)
    run = tmp_path / "nan"
    with pytest.raises(SegformerError, match=rf"Last good checkpoint: {run / 'state.pt'} \(epoch 1\)"):
        train(tiny_run(faces, epochs=3), run, progress=False)
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["counters"]["epoch"] == 1 and state["counters"]["best_epoch"] == 1
    assert all(torch.isfinite(v).all() for v in weights(run, "best").values())
    proc = run_cli("train", "--out", str(run), "--resume", "--quiet")  # the checkpoint resumes
    assert proc.returncode == 0, proc.stderr


def test_cli_divergence_is_one_line(faces, tmp_path):
    sets = [x for k, v in TINY_MODEL.items() if k != "name" for x in ("--set", f"model.{k}={json.dumps(v)}")]
    common = ["--data", str(faces), "--img-size", "48", "--batch-size", "8", "--workers", "0", "--quiet"]
    proc = run_cli(
        "train", *common, "--epochs", "2", "--out", str(tmp_path / "r"), *sets, "--set", "train.lr=1e9"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "training diverged" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_summary_of_a_run_without_evaluation_holds_no_infinity(faces, tmp_path, capsys):
    from segformer.cli.train import print_summary

    run = tmp_path / "run"
    try:
        cfg = tiny_run(faces, epochs=0)
    except SegformerError as err:  # refused up front is fine too, if the key is named
        assert "epochs" in str(err)
        return
    summary = train(cfg, run, progress=False)
    assert summary["best_score"] is None and summary["best_dir"] is None
    strict_json(run / "summary.json")
    print_summary(summary)
    out = capsys.readouterr().out
    assert "inf" not in out and "no evaluation" in out


def test_json_files_of_a_run_are_strict(faces, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_run(faces, epochs=1, max_minutes=1.0), run, progress=False)
    for name in ("summary.json", "best_scores.json", "last/config.json"):
        strict_json(run / name)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(c))
    assert summary["threads"] == torch.get_num_threads()
    assert summary["eval_seconds"] > 0 and 0 < summary["eval_share"] < 1
    assert json.loads((run / "metrics.jsonl").read_text())["eval_seconds"] > 0


def test_budgeted_epochs_counts_what_the_time_left_allows():
    clock = Clock(before=600.0, max_minutes=30)  # 30 of 1800 s left ... less a 60 s evaluation
    st = RunState(epoch=20, eval_cost=60.0)
    assert budgeted_epochs(st, clock, epoch_seconds=30.0) == pytest.approx(20 + 1140 / 30, abs=0.01)
    spent = Clock(before=1800.0, max_minutes=30)
    assert budgeted_epochs(st, spent, epoch_seconds=30.0) == 20


def test_a_budget_longer_than_the_epochs_is_pointed_out(faces, tmp_path, capsys):
    # Two epochs take seconds; the 30-minute budget would hold hundreds: the run says so (and ends
    # after its epochs, as configured).
    summary = train(tiny_run(faces, epochs=2, max_minutes=30), tmp_path / "run", progress=True)
    err_out = capsys.readouterr()
    note = [line for line in (err_out.out + err_out.err).splitlines() if line.startswith("note: ")]
    assert len(note) == 1 and re.search(r"the run's 2 epochs end after about \d+ of the 30 minutes", note[0])
    assert re.search(r"pass --epochs \d+ \(or more\) to train for the whole budget", note[0])
    assert summary["stop_reason"] == "epochs done"


# -- extending a finished run ----------------------------------------------------------------------------


def test_a_finished_run_is_extended_with_more_epochs(faces, tmp_path):
    run = tmp_path / "run"
    first = train(tiny_run(faces, epochs=2), run, progress=False)
    again = train(tiny_run(faces, epochs=2), run, resume=True, progress=False)
    assert again["steps"] == first["steps"] and again["stop_reason"] == "epochs done"
    assert again["last_scores"] is not None
    with pytest.raises(SegformerError, match="completed 2 epochs"):
        train(tiny_run(faces, epochs=1), run, resume=True, progress=False)
    longer = train(tiny_run(faces, epochs=3), run, resume=True, progress=False)
    assert longer["epochs_completed"] == 3 and longer["steps"] == 3 * 4
    assert any("epochs 2 -> 3" in note and "re-fitted" in note for note in longer["extended"])
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    proc = run_cli("train", "--out", str(run), "--resume", "--epochs", "4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "extended: epochs 3 -> 4" in proc.stdout and "after 4 epochs" in proc.stdout


def test_an_early_stopped_run_is_extended_with_fresh_patience(faces, tmp_path):
    run = tmp_path / "run"
    first = train(tiny_run(faces, epochs=5, early_stop=1, lr=1e-9, warmup_epochs=0), run, progress=False)
    assert first["stop_reason"].startswith("early stopping") and first["epochs_completed"] < 5
    done = first["epochs_completed"]
    later = train(tiny_run(faces, epochs=done + 1, early_stop=1, lr=1e-9, warmup_epochs=0), run, resume=True,
                  progress=False)  # fmt: skip
    assert later["epochs_completed"] == done + 1


def test_a_budgeted_run_is_extended_with_more_minutes(faces, tmp_path):
    run = tmp_path / "run"
    first = train(tiny_run(faces, epochs=3, max_minutes=1e-4), run, progress=False)
    assert first["stop_reason"].startswith("time budget")
    same = train(tiny_run(faces, epochs=3, max_minutes=1e-4), run, resume=True, progress=False)
    assert same["steps"] == first["steps"]  # nothing left to do
    more = train(tiny_run(faces, epochs=3, max_minutes=30), run, resume=True, progress=False)
    assert more["epochs_completed"] == 3 and more["stop_reason"] == "epochs done"
    assert any("time budget" in note and "30 minutes" in note for note in more["extended"])


# -- evaluation within its share of a budget -------------------------------------------------------------


class FixedClock(Clock):
    def __init__(self, now: float, budget_s: float) -> None:
        super().__init__(0.0, budget_s / 60)
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_eval_every_keeps_evaluation_within_five_percent_of_the_budget():
    budget, eval_s, epoch_s = 1800.0, 3.0, 45.0
    clock, st = FixedClock(epoch_s + eval_s, budget), RunState(eval_seconds=eval_s, eval_cost=eval_s)
    every = fit_eval_every(1, st, clock, epoch_s)
    epochs_left = (budget - clock.now) / epoch_s
    total = eval_s + (epochs_left // every) * eval_s + eval_s  # first, the ones planned, the final one
    assert total <= 0.05 * budget
    denser = eval_s + (epochs_left // (every - 1)) * eval_s + eval_s
    assert every > 1 and denser > 0.05 * budget  # and no rarer than that needs
    assert fit_eval_every(50, st, clock, epoch_s) == 50  # the recipe's interval is a lower bound
    costly = RunState(eval_seconds=60.0, eval_cost=60.0)  # the first evaluation alone took 3.3%
    assert fit_eval_every(1, costly, clock, epoch_s) > 10**6  # none more until the final one


# -- data loading ----------------------------------------------------------------------------------------


def test_persistent_workers_augment_as_the_main_process_does(faces, tmp_path):
    cfg = tiny_run(faces, epochs=2)
    train(cfg, tmp_path / "w0", progress=False)
    train(cfg.override({"data.workers": 2}), tmp_path / "w2", progress=False)
    a, b = weights(tmp_path / "w0"), weights(tmp_path / "w2")
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- DDP -------------------------------------------------------------------------------------------------

LAUNCHER = """
import json, os, sys, torch
from segformer.engine import train as engine
from segformer.engine.losses import SegmentationLoss
from segformer.cli import main

rank = int(os.environ["RANK"])
calls = {"n": 0}
real = SegmentationLoss.forward

def forward(self, logits, target):  # a NaN loss on process 1 only, in its second step
    calls["n"] += 1
    loss = real(self, logits, target)
    return loss * float("nan") if rank == 1 and calls["n"] == 2 else loss

real_eval = engine.evaluate

def evaluate(model, *args, **kwargs):  # every process writes the weights it evaluates
    sums = [float(p.double().sum()) for p in model.parameters()]
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(sums, f)
    return real_eval(model, *args, **kwargs)

SegmentationLoss.forward = forward
engine.evaluate = evaluate
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.dist
def test_a_nan_on_one_ddp_process_skips_the_step_on_every_process(faces, tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    sets = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items() if k != "name"]
    sets += ["train.grad_clip=0", "train.deterministic=true", "train.warmup_epochs=0"]
    common = ["--data", str(faces), "--img-size", "48", "--epochs", "1", "--workers", "0", "--quiet"]
    args = ["train", *common, "--batch-size", "4", "--out", str(tmp_path / "ddp")]
    args += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(launcher), str(tmp_path), *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1  # the processes took the same steps
    assert all(math.isfinite(x) for x in r0)  # and none with the NaN gradient
    record = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["skipped_steps"] == 1 and record["step"] == 4
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "ddp").values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_training_step_never_waits_for_the_gpu(faces, tmp_path):
    cfg = tiny_run(faces, grad_clip=1.0, ema=0.99)
    data = engine.build_train_data(cfg.data, seed=0, out=tmp_path, progress=False)
    device = torch.device("cuda")
    model = engine.build_model(cfg, data).to(device)
    learner = engine.build_learner(model, cfg.train, data, device)
    loader = torch.utils.data.DataLoader(data.train, batch_size=4, collate_fn=data.collate, pin_memory=True)
    batches = list(loader)[:3]
    learner.step(iter(batches[:1]), 1)  # first step: lazy optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:]:
            learner.step(iter([batch]), 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_device_ema_update_is_averaged_models_and_skips_with_the_step():
    from segformer import create_model

    torch.manual_seed(0)
    model = create_model(**{**TINY_MODEL, "num_classes": 3})
    ours, ref = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True
        )
        for _ in range(2)
    )
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        update_ema(ours, model, 0.9, torch.zeros(()))
        ref.update_parameters(model)
        theirs = ref.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())
    before = {k: v.clone() for k, v in ours.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_ema(ours, model, 0.9, torch.ones(()))  # a skipped step
    assert all(torch.equal(before[k], v) for k, v in ours.module.state_dict().items())
