"""Training speed: our training step against a reference's, and against itself fed by the real data
pipeline (`bench_train_end_to_end`)."""

from __future__ import annotations

import itertools
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..config import RunConfig, load_recipe
from ..devices import resolve_device
from ..engine.data import EpochSampler, build_train_data, train_loader
from ..engine.learner import Learner, build_learner
from ..engine.losses import SegmentationLoss
from ..engine.train import model_config
from ..errors import SegformerError
from ..models import build_model
from ..models.summary import count_flops
from ..runtime import auto_workers
from .memory import rows_with_memory
from .references import comparable_model, load_reference
from .report import Report, Row, alternate, gemm_flops_per_s, hw, process_settings, title


def bench_train(
    name: str,
    size: int | Sequence[int] = 512,
    batch: int = 2,
    compare: str = "none",
    *,
    num_classes: int | None = None,
    threads: int = 2,
    warmup: int = 2,
    rounds: int = 6,
    memory: bool = True,
    tune: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Report:
    """Training steps per second (forward + cross-entropy + backward + AdamW) against `reference`.

    Both sides start from the same weights and use the same optimizer (fused AdamW, as our trainer);
    our side runs the model and loss of `segformer train` (logits upsampled to the labels, CE).
    """
    process_settings(threads, tune)
    h, w = hw(size)
    model = comparable_model(name, num_classes, compare, overrides)
    reference = load_reference(compare)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.config.in_channels, h, w, generator=gen)
    y = torch.randint(0, model.config.num_classes, (batch, h, w), generator=gen)
    peak = gemm_flops_per_s()
    flops = {"ours": 3 * count_flops(model, (h, w), literal=False)[""] * batch}
    ref = reference(model) if reference is not None else None
    criterion = SegmentationLoss("ce")
    steps = {"ours": train_step(model, lambda: criterion(model(x), y))}
    if ref is not None:
        steps[ref.name] = train_step(ref.module, lambda: ref.loss(x, y))
        flops[ref.name] = 3 * count_flops(model, (h, w))[""] * batch
    times = alternate(steps, warmup, rounds)
    spec = {"name": name, "num_classes": model.config.num_classes, "compare": compare,
            "overrides": overrides or {}}  # fmt: skip
    rows = rows_with_memory(times, batch, flops, spec if memory else None, (h, w), "train", threads, tune)
    return Report(title("training step", name, model, h, w, batch, threads), rows, peak)


def train_step(module: nn.Module, loss: Callable[[], Tensor]) -> Callable[[], None]:
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=True)

    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_train_end_to_end(
    name: str,
    data: str | Path,
    size: int = 256,
    batch: int = 16,
    *,
    recipe: str = "microsegformer-celebamask",
    augment: str | None = None,
    workers: int | None = None,
    threads: int = 2,
    steps: int | None = None,
    warmup: int = 1,
    rounds: int = 3,
    device: str = "cpu",
    tune: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Report:
    """Images/s of `segformer train`'s step fed by its real data pipeline (the run's loader, workers
    and augmentation, from the dataset at `data`) against the same step on one batch already in
    memory (the bare step), in blocks of `steps` steps (default: one epoch), alternating; the ratio
    is end to end / bare.

    Each end-to-end block starts fresh workers on an empty pipeline and stops them at its end, so
    they take nothing from the bare blocks; a run pays that start once (its batches stream from epoch
    to epoch), a block once per `steps`, which makes the ratio a lower bound. `overrides` are dotted
    recipe keys (``{"train.amp": "bf16"}``).
    """
    process_settings(threads, tune)
    changes = {"model.name": name, "data.root": str(data), "data.img_size": size, "train.batch_size": batch,
               "train.grad_accum": 1, "train.device": device}  # fmt: skip
    if augment is not None:
        changes["data.augment"] = augment
    if workers is not None:
        changes["data.workers"] = workers
    run = _TrainingRun.build(load_recipe(recipe).override({**changes, **(overrides or {})}), batch)
    if len(run.loader) < 1:
        raise SegformerError(f"{data}: {run.train_size} training images are fewer than one batch of {batch}")
    steps = len(run.loader) if steps is None else steps
    fixed = next(iter(run.loader))
    epoch = iter(range(1, 1 << 30))

    def end_to_end() -> None:
        run.sampler.set_epoch(next(epoch))
        batches = iter(run.loader)
        for _ in range(steps):
            run.learner.step(batches, 1)
        _sync(run.device)
        del batches  # (its workers end here)

    def bare() -> None:
        for _ in range(steps):
            run.learner.step(itertools.repeat(fixed), 1)
        _sync(run.device)

    peak = gemm_flops_per_s()
    times = alternate({"end to end": end_to_end, "bare step": bare}, warmup, rounds)
    flops = 3 * count_flops(run.model, (size, size), literal=False)[""] * batch
    rows = [Row(side, statistics.median(t) / steps, batch, flops) for side, t in times.items()]  # per step
    what = f"training end to end ({run.cfg.data.augment} augmentation, {run.workers} workers, {run.device})"
    report = Report(title(what, name, run.model, size, size, batch, threads), rows, peak)
    report.ratio_label = "end to end / bare step"
    report.notes.append(f"{steps} steps per block, {rounds} blocks per side, data {data}")
    return report


@dataclass
class _TrainingRun:
    """What `segformer train` builds for a recipe: the model, its learner and a loader of `batch` images."""

    cfg: RunConfig
    device: torch.device
    model: nn.Module
    learner: Learner
    loader: DataLoader
    sampler: EpochSampler
    workers: int
    train_size: int

    @classmethod
    def build(cls, cfg: RunConfig, batch: int) -> _TrainingRun:
        dev = resolve_device(cfg.train.device)
        with tempfile.TemporaryDirectory() as tmp:  # (written into only for synthetic data)
            train_data = build_train_data(
                cfg.data, seed=cfg.train.seed, out=Path(tmp), progress=False, device=dev
            )
        model = build_model(model_config(cfg, train_data)).to(dev)
        learner = build_learner(model, cfg.train, train_data, dev)
        generator = torch.Generator().manual_seed(cfg.train.seed)
        workers = auto_workers(cfg.data.workers, dev.type)
        loader, sampler = train_loader(
            train_data.train,
            batch,
            workers,
            dev,
            cfg.train.seed,
            generator,
            train_data.collate,
            persistent=False,
        )
        return cls(cfg, dev, model, learner, loader, sampler, workers, len(train_data.train))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
