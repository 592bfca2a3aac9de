"""The resumable state of a run (``RUN/state.pt``): the counters (`RunState`), saving and restoring them
with the learner's weights, optimizer and RNGs, and the rules of resuming: which settings may change
(`check_resume`), and how a finished run is extended with more epochs or a larger budget
(`resume_state`).

In deterministic mode on CPU, a resumed run ends with exactly the weights of an uninterrupted one:
augmentation randomness is derived from (seed, epoch, sample index), the sampler from (seed, epoch),
and the torch RNG state (dropout, stochastic depth) is checkpointed here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import unwrap
from ..config import RunConfig, TrainConfig
from ..errors import SegformerError
from ..fileio import atomic_file
from .learner import Learner, class_weight_of
from .rundir import RunDir

# Settings that may differ when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = {
    "train.max_minutes",
    "train.device",
    "train.tensorboard",
    "train.log_every",
    "data.workers",
    "train.tta",
}


@dataclass
class RunState:
    """Counters that go into the checkpoint besides model and optimizer."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done (or skipped) in the current, unfinished epoch
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    elapsed: float = 0.0  # training seconds spent before this process started
    eval_seconds: float = 0.0  # of which evaluating
    eval_cost: float = 0.0  # seconds of the last evaluation: kept back at the end of a time budget
    last_eval_epoch: int = 0
    stopped: str = ""  # why the run ended; empty while it can go on
    extensions: list[str] = field(default_factory=list)  # how the run was extended after it ended


def epoch_of(st: RunState, steps_per_epoch: int) -> float:
    """Epochs done, as a fraction inside an unfinished epoch (an int at epoch ends)."""
    return st.epoch + st.step_in_epoch / steps_per_epoch if st.step_in_epoch else st.epoch


def open_run(run: RunDir, cfg: RunConfig, resume: bool) -> RunConfig | None:
    """The saved config of the run to resume, None for a new run (refused where one exists)."""
    if not resume:
        if run.has_state():
            raise SegformerError(
                f"{run} already holds a run; pass --resume to continue it or choose another --out"
            )
        return None
    if not run.has_state():
        raise SegformerError(f"--resume: no training state at {run.state}")
    return run.read_config()


def check_resume(saved: RunConfig, given: RunConfig, extensible: Iterable[str] = ()) -> RunConfig:
    """The saved config, with the harmless settings of `given` (and the `extensible` ones, which
    lengthen the run); anything else must not change."""
    allowed = RESUMABLE_CHANGES | set(extensible)
    a, b = _flatten(saved.to_dict()), _flatten(given.to_dict())
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in allowed)
    if changed:
        raise SegformerError(
            "--resume: the run was started with different settings for "
            + ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in changed)
        )
    return saved.override({k: b[k] for k in allowed if k in b})


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in doc.items() for k, v in sec.items()}


def resume_state(
    run: RunDir, learner: Learner, saved: RunConfig, tc: TrainConfig, steps_per_epoch: int
) -> tuple[RunState, list[dict[str, Any]]]:
    """The counters and metrics records of the checkpoint; a run that had ended and is given more
    epochs or more time goes on (its schedule re-fitted to the new length)."""
    st, records = load_state(run.state, learner)
    if records is None:  # a state from before the records were kept in it
        records = [r for r in run.read_metrics() if r["epoch"] <= epoch_of(st, steps_per_epoch)]
    if tc.epochs < st.epoch:
        raise SegformerError(
            f"--resume: {run} has completed {st.epoch} epochs already; --epochs must be at least that"
        )
    before = saved.train
    if not st.stopped and before.epochs <= st.epoch and not st.step_in_epoch:
        st.stopped = "epochs done"  # (states from before the reason was kept)
    changes = []
    if tc.epochs != before.epochs:
        changes.append(
            f"epochs {before.epochs} -> {tc.epochs} at step {st.global_step}: "
            f"the learning-rate schedule re-fitted to {tc.epochs} epochs"
        )
    if tc.max_minutes != before.max_minutes:
        new = f"{tc.max_minutes:g} minutes" if tc.max_minutes else "none"
        old = f"{before.max_minutes:g} minutes" if before.max_minutes else "none"
        changes.append(f"time budget {old} -> {new} after {st.elapsed / 60:.1f} minutes")
    if st.stopped and changes and (tc.epochs > st.epoch or st.stopped.startswith("time budget")):
        st.stopped, st.bad_evals = "", 0  # reopened, with fresh patience
    if not st.stopped:
        st.extensions += changes
    return st, records


def save_state(path: Path, learner: Learner, counters: dict[str, Any], records: list[dict[str, Any]]) -> None:
    payload = {
        "model": {k: v.detach().cpu() for k, v in unwrap(learner.model).state_dict().items()},
        "optimizer": learner.optimizer.state_dict(),
        "scaler": learner.scaler.state_dict() if learner.scaler is not None else None,
        "ema": learner.ema.state_dict() if learner.ema is not None else None,
        # the loss's class weights (train.class_weight): a resumed run goes on with these
        "class_weight": class_weight_of(learner),
        "counters": counters,
        "records": records,  # the metrics log, so that it can never disagree with this checkpoint
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
    }
    with atomic_file(path) as f:
        torch.save(payload, f)


def load_state(path: Path, learner: Learner) -> tuple[RunState, list[dict[str, Any]] | None]:
    """Restore `learner` and the RNGs; returns the counters and the metrics records (None in states
    written before they were kept there)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SegformerError(f"{path}: cannot read training state ({err})") from None
    unwrap(learner.model).load_state_dict(payload["model"])
    learner.optimizer.load_state_dict(payload["optimizer"])
    if learner.scaler is not None and payload["scaler"] is not None:
        learner.scaler.load_state_dict(payload["scaler"])
    if learner.ema is not None and payload["ema"] is not None:
        learner.ema.load_state_dict(payload["ema"])
    weight = class_weight_of(learner)
    if weight is not None and payload.get("class_weight") is not None:
        if payload["class_weight"].shape != weight.shape:
            raise SegformerError(
                f"{path}: {len(payload['class_weight'])} class weights for {len(weight)} classes"
            )
        learner.criterion.class_weight.copy_(payload["class_weight"])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    random.setstate(payload["rng"]["python"])
    return RunState(**payload["counters"]), payload.get("records")


__all__ = [
    "RESUMABLE_CHANGES",
    "RunState",
    "check_resume",
    "epoch_of",
    "load_state",
    "open_run",
    "resume_state",
    "save_state",
]
