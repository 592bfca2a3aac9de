"""What a training run says: the lines it starts with (`announce`), one line per evaluated epoch
(`epoch_line`), its summary (`summarize`) and TensorBoard; epoch counts as people read them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..config import RunConfig
from ..errors import SegformerError
from ..runtime import thread_choice
from .budget import Clock
from .data import TrainData, describe_class_weights, describe_repeats
from .learner import AUTOCAST_NAMES, Learner, class_weight_of
from .rundir import RunDir, json_safe
from .state import RunState


def announce(
    cfg: RunConfig,
    data: TrainData,
    learner: Learner,
    steps_per_epoch: int,
    workers: int,
    run: RunDir,
    factors: np.ndarray | None,
) -> None:
    """The lines a run starts with: how the data is balanced, and what trains on what."""
    tc, world = cfg.train, distributed.world_size()
    if factors is not None:
        print(describe_repeats(data, cfg.data.repeat_factor, factors))
    weight = class_weight_of(learner)
    if weight is not None:
        print(describe_class_weights(data, weight))
    precision = f", {AUTOCAST_NAMES[learner.dtype]} autocast" if learner.dtype else ""
    print(
        f"training {cfg.model_name} ({sum(p.numel() for p in learner.model.parameters()):,} params) on "
        f"{len(data.train)} images ({len(data.val)} val) at {cfg.data.image_size}px, "
        f"{steps_per_epoch} steps/epoch x {tc.epochs} epochs, batch {tc.batch_size * world}, "
        f"device {learner.device}{f', {world} processes' if world > 1 else ''}{precision}, "
        f"{thread_choice().describe()}, {workers} data workers -> {run}"
    )


def summarize(
    run: RunDir,
    cfg: RunConfig,
    st: RunState,
    clock: Clock,
    records: list[dict[str, Any]],
    last_scores: dict[str, Any] | None,
) -> dict[str, Any]:
    """summary.json: how the run ended, its best epoch and scores, where things are."""
    evaluated = st.best_epoch >= 0
    minutes = clock() / 60
    return json_safe(
        {
            "run": str(run),
            "model": cfg.model_name,
            "stop_reason": st.stopped,
            "epochs_completed": st.epoch,
            "steps": st.global_step,
            "minutes": minutes,
            "best_epoch": st.best_epoch if evaluated else None,
            "best_score": st.best_score if evaluated else None,
            "monitor": cfg.train.monitor,
            "last_scores": last_scores or next((r["val"] for r in reversed(records) if r.get("val")), None),
            "train_images_per_s": records[-1]["images_per_s"] if records else None,
            "eval_seconds": st.eval_seconds,
            "eval_share": st.eval_seconds / (60 * minutes) if minutes > 0 else 0.0,
            "threads": torch.get_num_threads(),
            "extended": st.extensions,
            "best_dir": str(run.best) if evaluated else None,
            "last_dir": str(run.last),
        }
    )


def epoch_line(record: dict[str, Any], monitor: str, st: RunState) -> str:
    """The line an evaluated epoch prints: loss, scores, speed and the best so far."""
    v = record["val"]
    return (
        f"epoch {format_epoch(record['epoch'])}: loss {_fmt(record['train_loss'])}  "
        f"{monitor} {_fmt(v[monitor])}  mIoU {_fmt(v['miou'])}  {record['images_per_s']:.1f} img/s  "
        f"(best {_fmt(st.best_score)} @ {st.best_epoch})"
    )


def open_tensorboard(run: RunDir) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SegformerError(
            "train.tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(str(run.tensorboard))


def format_epoch(epoch: float) -> str:
    """An epoch count as people read it: "14", "1.29" (a time budget stops runs mid-epoch)."""
    return str(round(epoch)) if abs(epoch - round(epoch)) < 5e-3 else f"{epoch:.2f}"


def format_epochs(epochs: float) -> str:
    """ "14 epochs", "1 epoch", "1.29 epochs"."""
    return f"{format_epoch(epochs)} epoch{'' if format_epoch(epochs) == '1' else 's'}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


__all__ = ["announce", "epoch_line", "format_epoch", "format_epochs", "open_tensorboard", "summarize"]
