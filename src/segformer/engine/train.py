"""The training loop: `train` sets a run up, then repeats `train_one_epoch`, `evaluate_and_checkpoint`
and `log_epoch` until the epochs, the time budget or the patience run out.

The run folder (`RunDir`) is written atomically, so a run killed at any moment resumes from its last
checkpoint, and its metrics log always agrees with that checkpoint. In deterministic mode on CPU, a
resumed run ends with exactly the weights of an uninterrupted one: augmentation randomness is derived
from (seed, epoch, sample index), the sampler from (seed, epoch), and the torch RNG state (dropout,
stochastic depth) is checkpointed.

With a wall-clock budget (`max_minutes`) the learning-rate schedule runs on whichever is further
along, steps or time, so a budget-limited run still warms up and anneals completely; evaluation is then
spread so that it takes at most `EVAL_SHARE` of the budget. A finished run is extended by resuming it
with more epochs or a larger budget: the schedule is re-fitted to the new length.

Nothing in a training step waits for the device: the loss is accumulated on the device, a step with a
non-finite loss (on any process) is skipped by the optimizer itself, and the host looks at the numbers
only every `log_every` steps, where it also stops a run that has diverged.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .. import distributed
from ..checkpoint import save_model, unwrap
from ..config import ModelConfig, RunConfig, TrainConfig
from ..data.balance import class_repeat_factors, class_weights, epoch_indices, epoch_length, repeat_factors
from ..data.batch_augment import BatchAugment
from ..devices import has_fast_bf16, resolve_device
from ..errors import SegformerError
from ..fileio import atomic_file, check_output_dir, write_json, write_text
from ..inference.ops import flip_permutation
from ..inference.settings import InferenceSettings
from ..models import build_model
from ..models.registry import adjust_logits, final_classifier
from ..runtime import auto_workers, tune_cpu_allocator
from .data import TrainData, build_train_data, collate_batch, to_device_batch
from .evaluate import collate_eval, evaluate
from .losses import SegmentationLoss
from .optim import build_optimizer, lr_factor, set_lr
from .rundir import RunDir, json_safe

# Settings that may differ when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = {
    "train.max_minutes",
    "train.device",
    "train.tensorboard",
    "train.log_every",
    "data.workers",
    "train.tta",
}
EVAL_SHARE = 0.05  # most of a time budget that evaluation may take
DIVERGED_STEPS = 10  # consecutive non-finite steps that stop a run


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


class TrainingDiverged(SegformerError):
    pass


AUTOCAST_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        amp = "bf16" if has_fast_bf16(device) else "none"
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise SegformerError("amp fp16 needs a CUDA device; use bf16 on CPU")
        return torch.float16
    raise SegformerError(f"unknown amp mode {amp!r} (expected none, auto, bf16 or fp16)")


# -- data loading ----------------------------------------------------------------------------------------


class RepeatFactorSampler(Sampler[int]):
    """This process's share of an epoch of repeat-factor sampling (`segformer.data.balance`): image i
    appears about r(i) times in every epoch, all epochs equally long. Every process draws the same
    shuffled epoch from (seed, epoch) and takes every `num_replicas`-th index from `rank` on, the
    tail that does not divide evenly left out, as `DistributedSampler` with ``drop_last`` does."""

    def __init__(self, factors: np.ndarray, num_replicas: int, rank: int, seed: int = 0) -> None:
        self.factors = np.asarray(factors, dtype=np.float64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.total = epoch_length(self.factors)  # over all processes
        self.num_samples = self.total // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        indices = epoch_indices(self.factors, self.seed, self.epoch)
        end = self.num_samples * self.num_replicas
        return iter(indices[self.rank : end : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class EpochSampler(Sampler[tuple[int, int]]):
    """The indices of `base` as ``(epoch, index)`` pairs: epoch `epoch` after skipping its first
    `skip` (to resume inside an epoch), then every following epoch, without end. Each epoch gives
    its first `take` indices (the whole optimizer steps it holds; default: all of them), so no
    batch mixes two epochs.

    One iteration thus feeds a whole run: the DataLoader workers prepare the next epoch's first
    batches while the current one ends (and while it is evaluated), instead of starting from an empty
    pipeline at every epoch. The epoch travels with every index, so workers that live across epochs
    augment each sample with its own epoch's randomness."""

    def __init__(self, base: DistributedSampler | RepeatFactorSampler, take: int | None = None) -> None:
        self.base, self.epoch, self.skip = base, 0, 0
        self.take = len(base) if take is None else min(take, len(base))

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Where the next iteration starts."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.skip
        while self.take > 0:
            self.base.set_epoch(epoch)
            yield from ((epoch, i) for i in itertools.islice(iter(self.base), skip, self.take))
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:
        """The indices left in the first epoch (iteration goes on into the following ones)."""
        return max(0, self.take - self.skip)


class EpochDataset(Dataset):
    """`dataset` indexed by ``(epoch, index)`` (see `EpochSampler`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        self.dataset.set_epoch(epoch)
        return self.dataset[i]


def train_loader(
    dataset: Dataset,
    micro: int,
    workers: int,
    device: torch.device,
    seed: int,
    generator: torch.Generator,
    collate: Callable[[list], Any] = collate_batch,
    factors: np.ndarray | None = None,
    accum: int = 1,
    persistent: bool = True,
) -> tuple[DataLoader, EpochSampler]:
    """The loader of a run's training set (this process's shard, `micro` images per batch, stacked by
    `collate`: `TrainData.collate`) and its sampler, on which `set_epoch` selects where iteration
    starts. One iteration runs through epoch after epoch (`EpochSampler`), each cut to whole
    optimizer steps of `accum` micro-batches. With repeat `factors` (one per image) an epoch repeats
    images (`RepeatFactorSampler`); otherwise it is one shuffled pass. The workers persist across
    iterations unless `persistent` is False (they then end with their iterator)."""
    world, rank = distributed.world_size(), distributed.rank()
    base: DistributedSampler | RepeatFactorSampler
    if factors is not None:
        if len(factors) != len(dataset):
            raise SegformerError(f"{len(factors)} repeat factors for {len(dataset)} images")
        base = RepeatFactorSampler(factors, world, rank, seed)
    else:
        base = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
    sampler = EpochSampler(base, len(base) // (micro * accum) * micro * accum)
    loader = DataLoader(
        EpochDataset(dataset),
        batch_size=micro,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=generator,  # keeps DataLoader from drawing on the global RNG
        persistent_workers=persistent and workers > 0,
    )
    return loader, sampler


def eval_loader(dataset: Dataset, batch: int, workers: int, generator: torch.Generator) -> DataLoader:
    """The loader of this process's shard of the validation set."""
    rank, world = distributed.rank(), distributed.world_size()
    return DataLoader(
        torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world))),
        batch_size=max(1, batch),
        num_workers=workers,
        collate_fn=collate_eval,
        generator=generator,
        persistent_workers=workers > 0,
    )


# -- one optimizer step ----------------------------------------------------------------------------------


@dataclass
class Learner:
    """What an optimizer step touches: the model (plain, and wrapped for DDP / torch.compile),
    optimizer, loss, mixed precision and the EMA of the weights."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    device: torch.device
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
    ema_decay: float = 0.0
    grad_clip: float = 0.0
    channels_last: bool = False
    augment: BatchAugment | None = None  # augmentation on the device (`TrainData.batch_augment`)

    def step(self, batches: Iterable[tuple[Tensor, Tensor]], accum: int) -> tuple[Tensor, Tensor]:
        """One optimizer step over `accum` micro-batches; returns the step's loss and 1.0 when the
        step was skipped because the loss or the gradients were not finite on some process, both
        on the device (nothing here waits for it)."""
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(itertools.islice(batches, accum)):
            images, masks = to_device_batch(batch, self.device, self.channels_last, self.augment)
            # DDP all-reduces gradients on the last micro-batch only
            accumulating = i < accum - 1 and isinstance(self.net, DistributedDataParallel)
            with (
                self.net.no_sync() if accumulating else nullcontext(),
                torch.autocast(
                    self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
                ),
            ):
                loss = self.criterion(self.net(images), masks) / accum
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += loss.detach().float()
        skip = (~torch.isfinite(loss_sum)).float()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            if self.scaler is None:  # (fp16 overflows are the scaler's to handle)
                skip = torch.maximum(skip, (~torch.isfinite(norm)).float())
        # Every process must take the same decision, or their weights part ways.
        distributed.all_reduce_max([skip])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips on non-finite gradients, as NaN losses give
            self.scaler.update()
        else:
            self.optimizer.found_inf = skip  # the fused optimizer skips the step on the device
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            update_ema(self.ema, self.model, self.ema_decay, skip)
        return loss_sum, skip


def update_ema(
    ema: torch.optim.swa_utils.AveragedModel, model: nn.Module, decay: float, skip: Tensor
) -> None:
    """What ``ema.update_parameters(model)`` computes with `get_ema_multi_avg_fn` (a copy at the first
    update, then ``lerp(ema, model, 1 - decay)``), without its host synchronisations, and leaving the
    average unchanged after a skipped step (`skip` = 1, on the device)."""
    first = int(ema.n_averaged) == 0  # (a CPU counter)
    weight = (1.0 - skip) * (1.0 if first else 1.0 - decay)
    averaged = list(itertools.chain(ema.module.parameters(), ema.module.buffers()))
    current = list(itertools.chain(model.parameters(), model.buffers()))
    floats = [
        (a.detach(), c.detach()) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()
    ]
    if floats:
        torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
    for a, c in zip(averaged, current, strict=True):
        if not a.is_floating_point():
            a.detach().copy_(c.detach())  # counters such as BatchNorm's num_batches_tracked
    ema.n_averaged += 1


def build_learner(model: nn.Module, tc: TrainConfig, data: TrainData, device: torch.device) -> Learner:
    dtype = amp_dtype(tc.amp, device)
    net: nn.Module = model
    if distributed.world_size() > 1:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)
    ema = None
    if tc.ema > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema), use_buffers=True
        )
    criterion = SegmentationLoss(
        tc.loss,
        tc.dice_weight,
        data.label_set.ignore_index,
        label_smoothing=tc.label_smoothing,
        dice_classes=tc.dice_classes,
        boundary_weight=tc.boundary_weight,
        boundary_width=tc.boundary_width,
        class_weight=class_weights(data.class_pixels) if tc.class_weight == "sqrt_inv_freq" else None,
    ).to(device)
    return Learner(
        model=model,
        net=net,
        optimizer=build_optimizer(model, tc),
        criterion=criterion,
        device=device,
        dtype=dtype,
        scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        ema=ema,
        ema_decay=tc.ema,
        grad_clip=tc.grad_clip,
        channels_last=tc.channels_last,
        augment=data.batch_augment,
    )


# -- run folder: config, state, curves ---------------------------------------------------------------------


def model_config(cfg: RunConfig, data: TrainData) -> ModelConfig:
    """The run's model config, with the class count and names of the data's label set."""
    ls = data.label_set
    if "num_classes" in cfg.model_overrides() and cfg.model.num_classes != ls.num_classes:
        raise SegformerError(
            f"model.num_classes={cfg.model.num_classes} but label set {ls.name} has {ls.num_classes} classes"
        )
    return cfg.model.replace(num_classes=ls.num_classes, class_names=cfg.model.class_names or ls.class_names)


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


def save_state(path: Path, learner: Learner, counters: dict[str, Any], records: list[dict[str, Any]]) -> None:
    payload = {
        "model": {k: v.detach().cpu() for k, v in unwrap(learner.model).state_dict().items()},
        "optimizer": learner.optimizer.state_dict(),
        "scaler": learner.scaler.state_dict() if learner.scaler is not None else None,
        "ema": learner.ema.state_dict() if learner.ema is not None else None,
        # the loss's class weights (train.class_weight): a resumed run goes on with these
        "class_weight": _class_weight(learner),
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
    weight = _class_weight(learner)
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


def _class_weight(learner: Learner) -> Tensor | None:
    weight = getattr(learner.criterion, "class_weight", None)
    return None if weight is None else weight.detach().cpu()


def plot_curves(records: list[dict[str, Any]], path: Path, monitor: str) -> None:
    """Loss, validation scores and learning rate per epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def values(rs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> list[float]:
        return [math.nan if get(r) is None else get(r) for r in rs]  # gaps where NaN was logged

    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].plot(epochs, values(records, lambda r: r["train_loss"]), label="train loss")
    axes[0].set_title("training loss")
    evals = [r for r in records if r.get("val")]
    for key in dict.fromkeys([monitor, "ce7454_f", "miou", "mean_f1_fg"]):
        xs = [r["epoch"] for r in evals]
        axes[1].plot(xs, values(evals, lambda r, key=key: r["val"][key]), marker=".", label=key)
    axes[1].set_title("validation")
    axes[1].legend(loc="lower right")
    axes[2].plot(epochs, values(records, lambda r: r["lr"]))
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as f:  # a file object: Pillow ignores a short write to a path
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


@contextmanager
def writer_lock(run: RunDir) -> Iterator[None]:
    """Hold `run`'s lock (taken by the main process) on every process, or raise on every process."""
    with ExitStack() as stack:
        error = None
        if distributed.is_main():
            try:
                stack.enter_context(run.lock())
            except SegformerError as err:
                error = str(err)
        error = distributed.broadcast_object(error)
        if error:
            raise SegformerError(error)
        yield


# -- the loop ---------------------------------------------------------------------------------------------


def train(
    cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Train a model as `cfg` says, writing the run folder `out`; returns the summary. A non-empty `out`
    that is not a run folder is refused unless `overwrite` (its files are then kept)."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    tune_cpu_allocator()
    try:
        device = distributed.init(str(resolve_device(cfg.train.device)))
        run = RunDir(out)
        if not resume:
            check_output_dir(out, "run", overwrite)  # before the lock creates the folder
        with writer_lock(run):
            return _train(cfg, run, resume, progress, device)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        distributed.cleanup()


def _train(cfg: RunConfig, run: RunDir, resume: bool, progress: bool, device: torch.device) -> dict[str, Any]:
    main, world = distributed.is_main(), distributed.world_size()
    show = progress and main

    # -- configuration: a resumed run keeps its own, and may only be lengthened
    saved = open_run(run, cfg, resume)
    cfg = check_resume(saved, cfg, extensible=["train.epochs"]) if saved else cfg
    tc = cfg.train
    if main:
        run.remove_leftovers()
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    # -- data
    data = build_train_data(cfg.data, seed=tc.seed, out=run.path, progress=show, device=device)
    if tc.batch_size % tc.grad_accum:
        raise SegformerError(f"batch_size {tc.batch_size} is not divisible by grad_accum {tc.grad_accum}")
    micro = tc.batch_size // tc.grad_accum
    if len(data.train) < micro * world:
        raise SegformerError(
            f"{len(data.train)} training images are fewer than one batch ({micro} x {world} processes)"
        )
    generator = torch.Generator().manual_seed(tc.seed)
    factors = repeat_factors(data.class_pixels, cfg.data.repeat_factor) if cfg.data.repeat_factor else None
    workers = auto_workers(cfg.data.workers, device.type)
    loader, sampler = train_loader(
        data.train, micro, workers, device, tc.seed, generator, data.collate, factors, tc.grad_accum
    )
    val_loader = eval_loader(data.val, micro, workers, generator)
    steps_per_epoch = len(sampler.base) // (micro * tc.grad_accum)

    # -- model, optimizer, loss; the checkpoint of a resumed run
    model = build_model(model_config(cfg, data)).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    learner = build_learner(model, tc, data, device)
    st, records = RunState(), []
    if saved:
        st, records = resume_state(run, learner, saved, tc, steps_per_epoch)
    if main:
        write_text(run.config, _yaml(cfg))
        if saved:
            run.write_metrics(records)  # repairs a log cut short by a kill

    clock = Clock(st.elapsed, tc.max_minutes)
    if main and progress:
        if factors is not None:
            print(describe_repeats(data, cfg.data.repeat_factor, factors))
        weight = _class_weight(learner)
        if weight is not None:
            print(describe_class_weights(data, weight))
        precision = f", {AUTOCAST_NAMES[learner.dtype]} autocast" if learner.dtype else ""
        print(
            f"training {cfg.model_name} ({sum(p.numel() for p in model.parameters()):,} params) on "
            f"{len(data.train)} images ({len(data.val)} val) at {cfg.data.img_size}px, "
            f"{steps_per_epoch} steps/epoch x {tc.epochs} epochs, batch {tc.batch_size * world}, "
            f"device {device}{f', {world} processes' if world > 1 else ''}{precision}, "
            f"{torch.get_num_threads()} threads, {workers} data workers -> {run}"
        )
    writer = open_tensorboard(run) if tc.tensorboard and main else None
    schedule = Schedule(tc, steps_per_epoch, clock)
    eval_every = tc.eval_every
    length = f"{tc.epochs}"  # the progress bar's "epoch N/length"; under a budget, its estimate
    noted = False  # whether the user was told that the epochs end before the budget
    last_scores: dict[str, Any] | None = None
    checkpoint = f"{run.state} (epoch {format_epoch(_epoch_of(st, steps_per_epoch))})" if saved else None
    if not st.stopped and st.epoch >= tc.epochs:
        st.stopped = "epochs done"
    if not st.stopped and saved and distributed.any_process(clock.out_of_time(0.0)):
        st.stopped = f"time budget of {tc.max_minutes:g} minutes"
    # one stream of batches for the whole run, from where it stands (`EpochSampler`)
    sampler.set_epoch(st.epoch, skip=st.step_in_epoch * tc.batch_size)
    batches = iter(loader)
    while not st.stopped:
        # -- train one epoch (or what is left of it)
        try:
            stats = train_one_epoch(learner, batches, st, tc, steps_per_epoch, schedule, clock, show, length)
        except TrainingDiverged as err:
            raise SegformerError(
                f"{err}; lower train.lr (now {tc.lr:g}) or check the data. "
                f"Last good checkpoint: {checkpoint or 'none saved yet'}"
            ) from None
        if st.step_in_epoch == steps_per_epoch:
            st.epoch, st.step_in_epoch = st.epoch + 1, 0
        record = epoch_record(stats, st, steps_per_epoch, learner, tc.batch_size)
        if clock.budget is not None and stats.steps:
            estimate = budgeted_epochs(st, clock, stats.seconds / stats.steps * steps_per_epoch)
            if show and estimate > 1.1 * tc.epochs and not noted:
                noted = True
                tqdm.write(
                    f"note: the run's {tc.epochs} epochs end after about "
                    f"{tc.epochs / estimate * tc.max_minutes:.0f} of the {tc.max_minutes:g} minutes; "
                    f"pass --epochs {math.ceil(estimate * 1.2)} (or more) to train for the whole budget"
                )
            length = f"{tc.epochs}" if estimate >= tc.epochs else f"~{estimate:.0f}"
        if st.epoch >= tc.epochs:
            st.stopped = "epochs done"
        elif stats.out_of_time:
            st.stopped = f"time budget of {tc.max_minutes:g} minutes"

        # -- evaluate every eval_every epochs (with a budget: as often as EVAL_SHARE of it allows), at the end
        since = st.epoch - st.last_eval_epoch
        due = st.step_in_epoch == 0 and (since >= eval_every if clock.budget else st.epoch % eval_every == 0)
        if st.stopped or due:
            last_scores = evaluate_and_checkpoint(learner, val_loader, data, cfg, run, st, record, progress)
            if tc.early_stop and st.bad_evals >= tc.early_stop and not st.stopped:
                st.stopped = f"early stopping ({tc.early_stop} evaluations without improvement)"
            if clock.budget is not None:  # (from the main process's clock: all must evaluate together)
                epoch_seconds = stats.seconds / stats.steps * steps_per_epoch
                eval_every = distributed.broadcast_object(
                    fit_eval_every(tc.eval_every, st, clock, epoch_seconds)
                )

        # -- log: state.pt (with the metrics records), metrics.jsonl, curves, one line
        records.append(json_safe({**record, "elapsed_minutes": clock() / 60}))
        if main:
            log_epoch(run, learner, st, records, clock, tc.monitor, writer, progress)
        checkpoint = f"{run.state} (epoch {format_epoch(records[-1]['epoch'])})"
        distributed.barrier()

    if writer is not None:
        writer.close()
    summary = summarize(run, cfg, st, clock, records, last_scores)
    if main:
        write_json(run.summary, summary)
    return summary


def describe_repeats(data: TrainData, threshold: float, factors: np.ndarray, rarest: int = 5) -> str:
    """One line: the epoch length without and with repeat-factor sampling, and the repeat factors of
    the classes in the fewest training images."""
    present = (data.class_pixels > 0).mean(0)  # fraction of images holding each class
    per_class = class_repeat_factors(data.class_pixels, threshold)
    names = data.label_set.class_names
    rare = [c for c in np.argsort(present, kind="stable") if present[c] > 0][:rarest]
    classes = ", ".join(f"{names[c]} {per_class[c]:.2f} (in {present[c]:.1%})" for c in rare)
    return (
        f"data.repeat_factor={threshold:g}: {len(factors)} -> {epoch_length(factors)} images per epoch; "
        f"repeat factors of the rarest classes: {classes}"
    )


def describe_class_weights(data: TrainData, weight: Tensor, rarest: int = 5) -> str:
    """One line: the cross-entropy weights of the rarest and of the most common class."""
    names, w = data.label_set.class_names, weight.tolist()
    order = sorted(range(len(w)), key=lambda c: -w[c])
    shown = [*order[:rarest], order[-1]]
    return "train.class_weight: " + ", ".join(f"{names[c]} {w[c]:.2f}" for c in shown)


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


def resume_state(
    run: RunDir, learner: Learner, saved: RunConfig, tc: TrainConfig, steps_per_epoch: int
) -> tuple[RunState, list[dict[str, Any]]]:
    """The counters and metrics records of the checkpoint; a run that had ended and is given more
    epochs or more time goes on (its schedule re-fitted to the new length)."""
    st, records = load_state(run.state, learner)
    if records is None:  # a state from before the records were kept in it
        records = [r for r in run.read_metrics() if r["epoch"] <= _epoch_of(st, steps_per_epoch)]
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


@dataclass
class EpochStats:
    loss_sum: Tensor  # on the device; skipped steps count nothing
    steps: int = 0
    skipped: int = 0
    seconds: float = 0.0
    out_of_time: bool = False


class Clock:
    """Training seconds of the run (this process's and those before it) against its budget."""

    def __init__(self, before: float, max_minutes: float | None) -> None:
        self.before, self.started = before, time.perf_counter()
        self.budget = max_minutes * 60 if max_minutes else None

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.started

    def out_of_time(self, reserve: float) -> bool:
        """Whether the budget is spent, keeping `reserve` seconds (the final evaluation) back."""
        return self.budget is not None and self() + reserve >= self.budget


class Schedule:
    """The learning-rate factor at the current step: by steps, or by the time-equivalent of steps
    when a budget is the binding limit."""

    def __init__(self, tc: TrainConfig, steps_per_epoch: int, clock: Clock) -> None:
        self.tc, self.clock = tc, clock
        self.total = steps_per_epoch * tc.epochs
        self.warmup = round(tc.warmup_epochs * steps_per_epoch)

    def __call__(self, step: int) -> float:
        tc, budget = self.tc, self.clock.budget
        at = step if budget is None else max(step, self.clock() / budget * self.total)
        return lr_factor(
            at, self.total, tc.schedule, self.warmup, tc.warmup_start, tc.min_lr_ratio,
            tc.step_milestones, tc.step_gamma, tc.poly_power,
        )  # fmt: skip


def train_one_epoch(
    learner: Learner,
    batches: Iterator[tuple[Tensor, Tensor]],
    st: RunState,
    tc: TrainConfig,
    steps_per_epoch: int,
    schedule: Schedule,
    clock: Clock,
    progress: bool,
    length: str = "",
) -> EpochStats:
    """Optimizer steps until the epoch ends or the budget is spent; stops a diverged run. `length`
    is the progress bar's count of epochs (default: the configured epochs)."""
    learner.net.train()
    start = time.perf_counter()
    dev = learner.device
    stats = EpochStats(torch.zeros((), dtype=torch.float64, device=dev))
    skipped = torch.zeros((), device=dev)
    streak = torch.zeros((), device=dev)  # consecutive skipped steps ...
    longest = torch.zeros((), device=dev)  # ... and the longest such run since the last look
    # A run has diverged after DIVERGED_STEPS non-finite steps in a row, or half an epoch of them in
    # short epochs (before its end-of-epoch checkpoint would save weights that give NaN losses).
    patience = max(1, min(DIVERGED_STEPS, steps_per_epoch // 2))
    single = distributed.world_size() == 1
    todo = steps_per_epoch - st.step_in_epoch
    bar = tqdm(
        range(todo), desc=f"epoch {st.epoch + 1}/{length or tc.epochs}", leave=False, disable=not progress
    )
    for i in bar:
        set_lr(learner.optimizer, schedule(st.global_step))
        loss, skip = learner.step(batches, tc.grad_accum)
        stats.loss_sum += torch.where(skip > 0, 0.0, loss.double())
        skipped += skip
        streak = (streak + 1) * skip
        longest = torch.maximum(longest, streak)
        st.global_step += 1
        st.step_in_epoch += 1
        stats.steps += 1
        look = (i + 1) % tc.log_every == 0 or i + 1 == todo
        if single or look:  # (processes must agree on when to stop: they decide together, at looks)
            stats.out_of_time = distributed.any_process(clock.out_of_time(st.eval_cost))
        if look or stats.out_of_time:
            # the one host synchronisation: every log_every steps
            loss_total, n_skipped, worst = torch.stack(
                [stats.loss_sum, skipped.double(), longest.double()]
            ).tolist()
            if worst >= patience:
                raise TrainingDiverged(
                    f"training diverged: the loss was NaN/inf in {worst:.0f} steps in a row "
                    f"(epoch {st.epoch + 1}, step {st.global_step})"
                )
            longest.zero_()
            stats.skipped = int(n_skipped)
            good = stats.steps - stats.skipped
            if good:
                lr = learner.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss_total / good:.4f}", lr=f"{lr:.2e}")
        if stats.out_of_time:
            break
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def epoch_record(
    stats: EpochStats, st: RunState, steps_per_epoch: int, learner: Learner, batch: int
) -> dict[str, Any]:
    """The epoch's metrics line; loss and images/s over all processes."""
    world = distributed.world_size()
    totals = torch.stack(
        [
            stats.loss_sum,
            torch.tensor(
                float(stats.steps - stats.skipped), dtype=torch.float64, device=stats.loss_sum.device
            ),
        ]
    )
    distributed.all_reduce_sum([totals])
    loss_sum, good = totals.tolist()
    return {
        "epoch": _epoch_of(st, steps_per_epoch),
        "step": st.global_step,
        "train_loss": loss_sum / good if good else math.nan,
        "lr": learner.optimizer.param_groups[0]["lr"],
        "images_per_s": stats.steps * batch * world / max(stats.seconds, 1e-9),
        "epoch_seconds": stats.seconds,
        "skipped_steps": stats.skipped,
    }


def budgeted_epochs(st: RunState, clock: Clock, epoch_seconds: float) -> float:
    """The epochs a budgeted run will have done when its time runs out, from the measured cost of an
    epoch and of an evaluation (uncapped by the configured epochs)."""
    assert clock.budget is not None
    left = max(0.0, clock.budget - clock() - st.eval_cost)
    return st.epoch + left / max(epoch_seconds, 1e-9)


def fit_eval_every(every: int, st: RunState, clock: Clock, epoch_seconds: float) -> int:
    """Epochs between evaluations that keep all of them, the final one included, within EVAL_SHARE
    of the time budget, from the measured cost of the last evaluation and of an epoch."""
    assert clock.budget is not None
    allowed = EVAL_SHARE * clock.budget - st.eval_seconds - st.eval_cost  # the final one kept back
    if allowed <= 0:
        return 10**9  # none until the end
    epochs_left = max(0.0, clock.budget - clock()) / max(epoch_seconds, 1e-9)
    return max(every, math.ceil(epochs_left * st.eval_cost / allowed))


def evaluate_and_checkpoint(
    learner: Learner,
    loader: DataLoader,
    data: TrainData,
    cfg: RunConfig,
    run: RunDir,
    st: RunState,
    record: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Score the model (its EMA when one is kept) on the validation set; save last/, and best/ with
    best_scores.json when the monitored score improved. Returns all scores. With
    ``train.logit_adjust``, the model is scored and saved with its logits adjusted for the class
    weights (`adjust_logits`); the weights it trains on stay as they are."""
    tc = cfg.train
    model = learner.ema.module if learner.ema is not None else learner.model
    weight = _class_weight(learner)
    with logit_adjusted(model, weight, tc.logit_adjust):
        start = time.perf_counter()
        scores = evaluate(
            model, loader, data.label_set.num_classes,
            ignore_index=data.label_set.ignore_index, background=data.background,
            class_names=list(data.label_set.class_names), tta=tc.eval_tta,
            flip_perm=flip_permutation(data.label_set.flip_pairs, data.label_set.num_classes),
            device=learner.device, amp_dtype=learner.dtype, progress=progress,
            desc=f"eval {format_epoch(record['epoch'])}",
        )  # fmt: skip
        st.eval_cost = time.perf_counter() - start
        st.eval_seconds += st.eval_cost
        st.last_eval_epoch = st.epoch
        record["val"] = json_safe({k: v for k, v in scores.items() if k != "per_class"})
        record["eval_seconds"] = st.eval_cost
        score = scores[tc.monitor]
        improved = math.isfinite(score) and score > st.best_score  # NaN never improves
        if improved:
            st.best_score, st.best_epoch, st.bad_evals = score, st.epoch, 0
        else:
            st.bad_evals += 1
        if distributed.is_main():
            settings = InferenceSettings(
                image_size=cfg.data.img_size, label_set=data.label_set, tta=tc.tta, **data.preprocess
            )
            meta = {
                **settings.to_dict(),
                "data": {
                    "kind": cfg.data.kind,
                    "val_fraction": cfg.data.val_fraction,
                    "split_seed": cfg.data.split_seed,
                },
                **({"logit_adjust": tc.logit_adjust} if tc.logit_adjust and weight is not None else {}),
            }
            save_model(model, run.last, meta={**meta, "epoch": record["epoch"], "scores": record["val"]})
            if improved:
                save_model(model, run.best, meta={**meta, "epoch": st.epoch, "scores": record["val"]})
                write_json(run.best_scores, json_safe({"epoch": st.epoch, **scores}))
    return scores


@contextmanager
def logit_adjusted(model: nn.Module, weight: Tensor | None, strength: float) -> Iterator[None]:
    """`model` with its logits adjusted for the class weights `weight` (`adjust_logits`) inside the
    block; its classifier's bias is restored exactly afterwards."""
    if not strength or weight is None:
        yield
        return
    bias = final_classifier(model).bias
    saved = bias.detach().clone()
    adjust_logits(model, weight, strength)
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def log_epoch(
    run: RunDir,
    learner: Learner,
    st: RunState,
    records: list[dict[str, Any]],
    clock: Clock,
    monitor: str,
    writer: Any,
    progress: bool,
) -> None:
    """Checkpoint (state.pt holds the metrics records), then metrics.jsonl, curves and a line."""
    record = records[-1]
    save_state(run.state, learner, {**st.__dict__, "elapsed": clock()}, records)
    run.write_metrics(records)
    plot_curves(records, run.curves, monitor)
    if writer is not None:
        for k, v in [("train/loss", record["train_loss"]), ("train/lr", record["lr"])] + [
            (f"val/{k}", v) for k, v in record.get("val", {}).items()
        ]:
            if isinstance(v, float):
                writer.add_scalar(k, v, st.global_step)
    if "val" in record and progress:
        v = record["val"]
        tqdm.write(
            f"epoch {format_epoch(record['epoch'])}: loss {_fmt(record['train_loss'])}  "
            f"{monitor} {_fmt(v[monitor])}  mIoU {_fmt(v['miou'])}  {record['images_per_s']:.1f} img/s  "
            f"(best {_fmt(st.best_score)} @ {st.best_epoch})"
        )


def summarize(
    run: RunDir,
    cfg: RunConfig,
    st: RunState,
    clock: Clock,
    records: list[dict[str, Any]],
    last_scores: dict[str, Any] | None,
) -> dict[str, Any]:
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


def open_tensorboard(run: RunDir) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SegformerError(
            "train.tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(str(run.tensorboard))


def _epoch_of(st: RunState, steps_per_epoch: int) -> float:
    """Epochs done, as a fraction inside an unfinished epoch (an int at epoch ends)."""
    return st.epoch + st.step_in_epoch / steps_per_epoch if st.step_in_epoch else st.epoch


def format_epoch(epoch: float) -> str:
    """An epoch count as people read it: "14", "1.29" (a time budget stops runs mid-epoch)."""
    return str(round(epoch)) if abs(epoch - round(epoch)) < 5e-3 else f"{epoch:.2f}"


def format_epochs(epochs: float) -> str:
    """ "14 epochs", "1 epoch", "1.29 epochs"."""
    return f"{format_epoch(epochs)} epoch{'' if format_epoch(epochs) == '1' else 's'}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
