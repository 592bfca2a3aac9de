"""The training loop: one function, `train`, readable top to bottom.

A run folder holds everything a run produces::

    RUN/config.yaml      the resolved recipe (model, data, train)
    RUN/state.pt         resumable training state (plain types: loads with weights_only=True)
    RUN/last/ RUN/best/  model directories (config.json + model.safetensors) of the last / best epoch
    RUN/metrics.jsonl    one JSON line per epoch: losses, lr, scores, images/s
    RUN/curves.png       loss, validation scores and learning rate per epoch
    RUN/summary.json     best epoch, scores, stop reason, where things are

Every file is written atomically, so a run killed at any moment resumes from its last checkpoint.
In deterministic mode on CPU, a resumed run ends with exactly the weights of an uninterrupted one:
augmentation randomness is derived from (seed, epoch, sample index), the sampler from (seed, epoch),
and the torch RNG state (dropout, stochastic depth) is checkpointed.

With a wall-clock budget (`max_minutes`) the learning-rate schedule runs on whichever is further
along, steps or time, so a budget-limited run still warms up and anneals completely.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .. import distributed
from ..checkpoint import save_model, unwrap
from ..config import RunConfig
from ..errors import SegformerError
from ..fileio import atomic_path, write_json, write_text
from ..inference import flip_permutation
from ..models import create_model
from ..runtime import tune_cpu_allocator
from .data import TrainData, build_train_data
from .evaluate import collate_eval, evaluate
from .losses import SegmentationLoss
from .optim import lr_factor, param_groups, set_lr

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
# Settings that may differ when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = {
    "train.max_minutes",
    "train.device",
    "train.tensorboard",
    "train.log_every",
    "data.workers",
}


@dataclass
class RunState:
    """Counters that go into the checkpoint besides model and optimizer."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done in the current (unfinished) epoch
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    elapsed: float = 0.0  # training seconds spent before this process started


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SegformerError("device cuda requested but torch sees no CUDA GPU")
    if name not in ("cpu", "cuda"):
        raise SegformerError(f"unknown device {name!r} (expected auto, cpu or cuda)")
    return name


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise SegformerError("amp fp16 needs a CUDA device; use bf16 on CPU")
        return torch.float16
    raise SegformerError(f"unknown amp mode {amp!r} (expected none, bf16 or fp16)")


class SkipSampler(Sampler[int]):
    """Yields `base`'s indices after skipping the first `skip` (to resume inside an epoch)."""

    def __init__(self, base: DistributedSampler, skip: int = 0) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def build_model(cfg: RunConfig, data: TrainData) -> nn.Module:
    overrides = {k: v for k, v in cfg.model.items() if k != "name"}
    num_classes = overrides.pop("num_classes", data.label_set.num_classes)
    if num_classes != data.label_set.num_classes:
        raise SegformerError(
            f"model.num_classes={num_classes} but label set {data.label_set.name} has "
            f"{data.label_set.num_classes} classes"
        )
    overrides.setdefault("class_names", data.label_set.class_names)
    return create_model(cfg.model["name"], num_classes=num_classes, **overrides)


def check_resume(saved: RunConfig, given: RunConfig) -> RunConfig:
    """The saved config, with the harmless settings of `given`; anything else must not change."""
    a, b = _flatten(saved.to_dict()), _flatten(given.to_dict())
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise SegformerError(
            "--resume: the run was started with different settings for "
            + ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in changed)
        )
    return saved.override({k: b[k] for k in RESUMABLE_CHANGES if k in b})


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in doc.items() for k, v in sec.items()}


def save_state(path: Path, model, optimizer, scaler, ema, state: RunState) -> None:
    payload = {
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "counters": dict(state.__dict__),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path, model, optimizer, scaler, ema) -> RunState:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SegformerError(f"{path}: cannot read training state ({err})") from None
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scaler is not None and payload["scaler"] is not None:
        scaler.load_state_dict(payload["scaler"])
    if ema is not None and payload["ema"] is not None:
        ema.load_state_dict(payload["ema"])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    random.setstate(payload["rng"]["python"])
    return RunState(**payload["counters"])


def plot_curves(records: list[dict[str, Any]], path: Path, monitor: str) -> None:
    """Loss, validation scores and learning rate per epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in records], label="train loss")
    axes[0].set_title("training loss")
    evals = [r for r in records if r.get("val")]
    for key in dict.fromkeys([monitor, "ce7454_f", "miou", "mean_f1_fg"]):
        axes[1].plot([r["epoch"] for r in evals], [r["val"][key] for r in evals], marker=".", label=key)
    axes[1].set_title("validation")
    axes[1].legend(loc="lower right")
    axes[2].plot(epochs, [r["lr"] for r in records])
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def train(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a model as `cfg` says, writing the run folder `out`; returns the summary."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    tune_cpu_allocator()
    try:
        return _train(cfg, out, resume, progress)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        distributed.cleanup()


def _train(cfg: RunConfig, out: str | Path, resume: bool, progress: bool) -> dict[str, Any]:
    out = Path(out)
    device = distributed.init(resolve_device(cfg.train.device))
    main = distributed.is_main()
    rank, world = distributed.rank(), distributed.world_size()

    # -- configuration (a resumed run keeps its own) ---------------------------------------------------
    state_path = out / STATE_FILE
    if resume and not state_path.is_file():
        raise SegformerError(f"--resume: no training state at {state_path}")
    if resume:
        saved = RunConfig.from_dict(yaml.safe_load((out / CONFIG_FILE).read_text()))
        cfg = check_resume(saved, cfg)
    elif state_path.exists():
        raise SegformerError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    tc = cfg.train
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    # -- data -------------------------------------------------------------------------------------------
    data = build_train_data(cfg.data, seed=tc.seed, out=out, progress=progress and main)
    if tc.batch_size % tc.grad_accum:
        raise SegformerError(f"batch_size {tc.batch_size} is not divisible by grad_accum {tc.grad_accum}")
    micro = tc.batch_size // tc.grad_accum
    if len(data.train) < micro * world:
        raise SegformerError(
            f"{len(data.train)} training images are fewer than one batch ({micro} x {world} processes)"
        )
    base_sampler = DistributedSampler(
        data.train, num_replicas=world, rank=rank, shuffle=True, seed=tc.seed, drop_last=True
    )
    loader_gen = torch.Generator().manual_seed(tc.seed)  # keeps DataLoader from drawing on the global RNG
    workers = cfg.data.workers

    def train_loader(epoch: int, skip_steps: int) -> DataLoader:
        base_sampler.set_epoch(epoch)
        data.train.set_epoch(epoch)
        return DataLoader(
            data.train,
            batch_size=micro,
            sampler=SkipSampler(base_sampler, skip_steps * tc.grad_accum * micro),
            num_workers=workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
            generator=loader_gen,
            persistent_workers=False,
        )

    val_loader = DataLoader(
        torch.utils.data.Subset(data.val, list(range(rank, len(data.val), world))),
        batch_size=max(1, micro),
        num_workers=workers,
        collate_fn=collate_eval,
        generator=loader_gen,
    )
    steps_per_epoch = len(base_sampler) // (micro * tc.grad_accum)
    total_steps = steps_per_epoch * tc.epochs
    warmup_steps = round(tc.warmup_epochs * steps_per_epoch)

    # -- model, optimizer, loss --------------------------------------------------------------------------
    model = build_model(cfg, data).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = param_groups(model, tc.lr, tc.weight_decay, tc.head_lr_mult)
    if tc.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas))
    elif tc.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum)
    else:
        raise SegformerError(f"unknown optimizer {tc.optimizer!r} (expected adamw or sgd)")
    dtype = amp_dtype(tc.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
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
    )
    flip_perm = flip_permutation(data.label_set.flip_pairs, data.label_set.num_classes)

    st = RunState()
    if resume:
        st = load_state(state_path, model, optimizer, scaler, ema)
    net: nn.Module = model
    if world > 1:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)

    writer = None
    if tc.tensorboard and main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SegformerError(
                "train.tensorboard needs the tensorboard package: pip install tensorboard"
            ) from None
        writer = SummaryWriter(str(out / "tensorboard"))

    records: list[dict[str, Any]] = []
    metrics_path = out / "metrics.jsonl"
    if resume and metrics_path.exists():
        records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        records = [r for r in records if r["epoch"] <= st.epoch]

    budget = tc.max_minutes * 60 if tc.max_minutes else None
    started = time.perf_counter()
    eval_seconds = 0.0  # duration of the last evaluation: reserved at the end of a time budget

    def elapsed() -> float:
        return st.elapsed + time.perf_counter() - started

    def schedule_step() -> float:
        """Steps, or the time-equivalent of steps when the budget is the binding limit."""
        if budget is None:
            return st.global_step
        return max(st.global_step, elapsed() / budget * total_steps)

    def out_of_time() -> bool:
        return budget is not None and elapsed() + eval_seconds >= budget

    eval_model = ema.module if ema is not None else model
    summary: dict[str, Any] = {}
    stop_reason = "epochs done"
    if main and progress:
        print(
            f"training {cfg.model['name']} ({sum(p.numel() for p in model.parameters()):,} params) on "
            f"{len(data.train)} images ({len(data.val)} val) at {cfg.data.img_size}px, "
            f"{steps_per_epoch} steps/epoch x {tc.epochs} epochs, batch {tc.batch_size * world}, "
            f"device {device}{f', {world} processes' if world > 1 else ''} -> {out}"
        )

    last_scores: dict[str, Any] | None = None
    epoch = st.epoch
    while epoch < tc.epochs:
        net.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64)
        loss_count = torch.zeros((), dtype=torch.float64)
        skipped = 0
        images_seen = 0
        loader = iter(train_loader(epoch, st.step_in_epoch))
        todo = steps_per_epoch - st.step_in_epoch
        bar = tqdm(
            range(todo), desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, disable=not (progress and main)
        )
        stopped_early = False
        for _ in bar:
            set_lr(optimizer, lr_factor(
                schedule_step(), total_steps, tc.schedule, warmup_steps, tc.warmup_start, tc.min_lr_ratio,
                tc.step_milestones, tc.step_gamma, tc.poly_power,
            ))  # fmt: skip
            step_loss = 0.0
            for micro_i in range(tc.grad_accum):
                images, masks = next(loader)
                images = images.to(device, non_blocking=True)
                masks = masks.to(device, non_blocking=True)
                if tc.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                sync = micro_i == tc.grad_accum - 1 or world == 1
                ctx = (
                    net.no_sync()
                    if (not sync and isinstance(net, DistributedDataParallel))
                    else nullcontext()
                )
                with (
                    ctx,
                    torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
                ):
                    logits = net(images)
                    loss = criterion(logits, masks) / tc.grad_accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
                step_loss += float(loss.detach())
                images_seen += images.shape[0]
            if not math.isfinite(step_loss):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                if skipped >= 10:
                    raise SegformerError(
                        f"the loss was NaN/inf in 10 steps of epoch {epoch + 1}; lower the learning rate "
                        f"or check the data (last good checkpoint: {state_path})"
                    )
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)
            if tc.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            st.global_step += 1
            st.step_in_epoch += 1
            loss_sum += step_loss
            loss_count += 1
            if st.step_in_epoch % tc.log_every == 0 or st.step_in_epoch == steps_per_epoch:
                bar.set_postfix(
                    loss=f"{float(loss_sum / loss_count):.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}"
                )
            if out_of_time():
                stopped_early = True
                break
        bar.close()
        train_seconds = time.perf_counter() - t0
        totals = torch.stack([loss_sum, loss_count, torch.tensor(float(images_seen), dtype=torch.float64)])
        distributed.all_reduce_sum([totals])
        train_loss = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
        images_per_s = float(totals[2]) / max(train_seconds, 1e-9)

        epoch_done = not stopped_early
        if epoch_done:
            epoch += 1
            st.epoch, st.step_in_epoch = epoch, 0
        finished = epoch >= tc.epochs or stopped_early
        record: dict[str, Any] = {
            "epoch": epoch if epoch_done else epoch + st.step_in_epoch / steps_per_epoch,
            "step": st.global_step,
            "train_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": images_per_s,
            "epoch_seconds": train_seconds,
        }
        if finished or epoch % tc.eval_every == 0:
            t_eval = time.perf_counter()
            last_scores = evaluate(
                eval_model, val_loader, data.label_set.num_classes,
                ignore_index=data.label_set.ignore_index, background=data.background,
                class_names=list(data.label_set.class_names), tta=tc.eval_tta, flip_perm=flip_perm,
                device=device, amp_dtype=dtype, progress=progress, desc=f"eval {epoch}",
            )  # fmt: skip
            eval_seconds = time.perf_counter() - t_eval
            score = last_scores[tc.monitor]
            record["val"] = {k: v for k, v in last_scores.items() if k not in ("per_class",)}
            improved = score > st.best_score
            if improved:
                st.best_score, st.best_epoch, st.bad_evals = score, epoch, 0
            else:
                st.bad_evals += 1
            if main:
                meta = {
                    "label_set": data.label_set.name,
                    "image_size": cfg.data.img_size,
                    **data.preprocess,
                    "data": {
                        "kind": cfg.data.kind,
                        "val_fraction": cfg.data.val_fraction,
                        "split_seed": cfg.data.split_seed,
                    },
                }
                save_model(
                    eval_model, out / "last", meta={**meta, "epoch": record["epoch"], "scores": record["val"]}
                )
                if improved:
                    save_model(
                        eval_model, out / "best", meta={**meta, "epoch": epoch, "scores": record["val"]}
                    )
                    write_json(out / "best_scores.json", {"epoch": epoch, **last_scores})
            if tc.early_stop and st.bad_evals >= tc.early_stop and not finished:
                finished, stop_reason = (
                    True,
                    f"early stopping ({tc.early_stop} evaluations without improvement)",
                )
        if stopped_early:
            stop_reason = f"time budget of {tc.max_minutes:g} minutes"
        record["elapsed_minutes"] = elapsed() / 60
        records.append(record)
        if main:
            save_elapsed = st.elapsed
            st.elapsed = elapsed()
            save_state(state_path, model, optimizer, scaler, ema, st)
            st.elapsed = save_elapsed
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            plot_curves(records, out / "curves.png", tc.monitor)
            if writer is not None:
                writer.add_scalar("train/loss", train_loss, st.global_step)
                writer.add_scalar("train/lr", record["lr"], st.global_step)
                for k, v in record.get("val", {}).items():
                    if isinstance(v, float):
                        writer.add_scalar(f"val/{k}", v, st.global_step)
            if "val" in record and progress:
                v = record["val"]
                tqdm.write(
                    f"epoch {record['epoch']:g}: loss {train_loss:.4f}  {tc.monitor} {v[tc.monitor]:.4f}  "
                    f"mIoU {v['miou']:.4f}  {images_per_s:.1f} img/s  "
                    f"(best {st.best_score:.4f} @ {st.best_epoch})"
                )
        distributed.barrier()
        if finished:
            break

    if writer is not None:
        writer.close()
    summary = {
        "run": str(out),
        "model": cfg.model["name"],
        "stop_reason": stop_reason,
        "epochs_completed": st.epoch,
        "steps": st.global_step,
        "minutes": elapsed() / 60,
        "best_epoch": st.best_epoch,
        "best_score": st.best_score,
        "monitor": tc.monitor,
        "last_scores": last_scores,
        "train_images_per_s": records[-1]["images_per_s"] if records else None,
        "best_dir": str(out / "best"),
        "last_dir": str(out / "last"),
    }
    if main:
        write_json(out / "summary.json", summary)
    return summary
