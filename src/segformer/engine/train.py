"""The training loop, top to bottom as in torchvision's ``references/segmentation/train.py``:
`train_one_epoch`, `evaluate_and_checkpoint`, `log_epoch`, then `train`, which sets a run up (`setup`)
and repeats them (`fit`) until the epochs, the time budget or the patience run out.

The rest of a run lives beside this file, by job: its data, loaders and samplers in `engine.data`; one
optimizer step (the `Learner`: loss, mixed precision, EMA) in `engine.learner`; the resumable state and
the rules of resuming in `engine.state`; the time budget in `engine.budget`; the run folder's files in
`engine.rundir`; its figures in `engine.figures`.

The run folder is written atomically, so a run killed at any moment resumes from its last checkpoint,
and its metrics log always agrees with that checkpoint. A finished run is extended by resuming it with
more epochs or a larger budget (the schedule is re-fitted to the new length); until the extension's
first checkpoint, the run's record (config.yaml, state.pt) still describes the run as it was, so an
extension that fails changes nothing.

Nothing in a training step waits for the device: the host looks at the numbers only every `log_every`
steps, where it also stops a run that has diverged.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import distributed
from ..config import ModelConfig, RunConfig, TrainConfig
from ..data.balance import repeat_factors
from ..devices import resolve_device
from ..errors import SegformerError
from ..inference.ops import flip_permutation
from ..inference.settings import InferenceSettings
from ..models import build_model
from ..runtime import ThreadTuner, auto_workers, tune_cpu_allocator
from .budget import Clock, Schedule, budgeted_epochs, fit_eval_every
from .data import (
    EpochSampler,
    TrainData,
    build_train_data,
    eval_loader,
    train_loader,
)
from .evaluate import evaluate
from .figures import plot_training_curves
from .learner import (
    Learner,
    build_learner,
    check_step_memory,
    class_weight_of,
    logit_adjusted,
)
from .log import announce, epoch_line, format_epoch, open_tensorboard, summarize
from .optim import set_lr
from .rundir import RunDir, json_safe
from .state import RunState, check_resume, epoch_of, open_run, resume_state, save_state

DIVERGED_STEPS = 10  # consecutive non-finite steps that stop a run


class TrainingDiverged(SegformerError):
    pass


@dataclass
class EpochStats:
    loss_sum: Tensor  # on the device; skipped steps count nothing
    steps: int = 0
    skipped: int = 0
    seconds: float = 0.0
    out_of_time: bool = False


def train_one_epoch(
    learner: Learner,
    batches: Iterator[tuple[Tensor, Tensor]],
    st: RunState,
    steps_per_epoch: int,
    schedule: Schedule,
    clock: Clock,
    progress: bool,
    length: str,
) -> EpochStats:
    """Optimizer steps until the epoch ends or the budget is spent; stops a diverged run. `length`
    is the progress bar's count of epochs."""
    tc = schedule.tc
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
    bar = tqdm(range(todo), desc=f"epoch {st.epoch + 1}/{length}", leave=False, disable=not progress)
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
    good = torch.tensor(float(stats.steps - stats.skipped), dtype=torch.float64, device=stats.loss_sum.device)
    totals = torch.stack([stats.loss_sum, good])
    distributed.all_reduce_sum([totals])
    loss_sum, good_steps = totals.tolist()
    return {
        "epoch": epoch_of(st, steps_per_epoch),
        "step": st.global_step,
        "train_loss": loss_sum / good_steps if good_steps else math.nan,
        "lr": learner.optimizer.param_groups[0]["lr"],
        "images_per_s": stats.steps * batch * world / max(stats.seconds, 1e-9),
        "epoch_seconds": stats.seconds,
        "skipped_steps": stats.skipped,
    }


def evaluate_and_checkpoint(run: Run, record: dict[str, Any]) -> dict[str, Any]:
    """Score the model (its EMA when one is kept) on the validation set; save last/, and best/ with
    best_scores.json when the monitored score improved. Returns all scores. With
    ``train.logit_adjust``, the model is scored and saved with its logits adjusted for the class
    weights (`adjust_logits`); the weights it trains on stay as they are."""
    cfg, learner, data, st = run.cfg, run.learner, run.data, run.st
    tc, ls = cfg.train, data.label_set
    model = learner.ema.module if learner.ema is not None else learner.model
    weight = class_weight_of(learner)
    with logit_adjusted(model, weight, tc.logit_adjust):
        start = time.perf_counter()
        scores = evaluate(
            model, run.val_loader, ls.num_classes, ignore_index=ls.ignore_index, background=data.background,
            class_names=list(ls.class_names), tta=tc.eval_tta,
            flip_perm=flip_permutation(ls.flip_pairs, ls.num_classes), device=learner.device,
            amp_dtype=learner.dtype, progress=run.progress, desc=f"eval {format_epoch(record['epoch'])}",
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
            meta = model_meta(cfg, data, adjusted=bool(tc.logit_adjust and weight is not None))
            run.dir.save_model(
                model, run.dir.last, meta={**meta, "epoch": record["epoch"], "scores": record["val"]}
            )
            if improved:
                run.dir.save_model(
                    model, run.dir.best, meta={**meta, "epoch": st.epoch, "scores": record["val"]}
                )
                run.dir.write_json(run.dir.best_scores, json_safe({"epoch": st.epoch, **scores}))
    return scores


def log_epoch(run: Run) -> None:
    """Checkpoint (state.pt holds the metrics records), then metrics.jsonl, curves and a line."""
    st, records, monitor = run.st, run.records, run.cfg.train.monitor
    record = records[-1]
    if run.pending_config is not None:  # an extension is recorded with its first checkpoint
        run.dir.write_text(run.dir.config, run.pending_config)
        run.pending_config = None
    with run.dir.writing(run.dir.state) as path:
        save_state(path, run.learner, {**st.__dict__, "elapsed": run.clock()}, records)
    run.dir.write_metrics(records)
    with run.dir.writing(run.dir.curves) as path:
        plot_training_curves(records, path, monitor)
    if run.writer is not None:
        for k, v in [("train/loss", record["train_loss"]), ("train/lr", record["lr"])] + [
            (f"val/{k}", v) for k, v in record.get("val", {}).items()
        ]:
            if isinstance(v, float):
                run.writer.add_scalar(k, v, st.global_step)
    if "val" in record and run.progress:
        tqdm.write(epoch_line(record, monitor, st))


# -- a run ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A run as `setup` prepared it: what `fit` reads and updates."""

    cfg: RunConfig
    dir: RunDir
    data: TrainData
    learner: Learner
    loader: DataLoader
    sampler: EpochSampler
    val_loader: DataLoader
    steps_per_epoch: int
    st: RunState
    records: list[dict[str, Any]]
    clock: Clock
    progress: bool  # progress bars and lines (the main process only)
    resumed: bool = False
    pending_config: str | None = None  # config.yaml of an extension: written with its first checkpoint
    checkpoint: str | None = None  # the last good checkpoint, named when a run diverges
    last_scores: dict[str, Any] | None = None
    noted: bool = False  # whether the user was told that the epochs end before the budget
    writer: Any = None  # TensorBoard
    threads: ThreadTuner | None = None  # re-decides the compute threads while the run goes on


def train(
    cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Train a model as `cfg` says, writing the run folder `out`; returns the summary.

    `out` is written under the output policy (`RunDir.lock`): a file or folder of the user's at one of
    the run's names is refused even with `overwrite`; a new run's folder holding other files of the
    user's is refused unless `overwrite` (they are then kept); the data folder is never written."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    tune_cpu_allocator()
    try:
        device = distributed.init(str(resolve_device(cfg.train.device)))
        folder = RunDir(out)
        with folder.lock_on_every_process([cfg.data.root], overwrite, resume):
            run = setup(cfg, folder, resume, progress, device)
            fit(run)
            return finish(run)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        distributed.cleanup()


def setup(cfg: RunConfig, folder: RunDir, resume: bool, progress: bool, device: torch.device) -> Run:
    """Configuration, data, model and learner of a run; the checkpoint of a resumed one."""
    main, world = distributed.is_main(), distributed.world_size()
    show = progress and main

    # -- configuration: a resumed run keeps its own, and may only be lengthened
    saved = open_run(folder, cfg, resume)
    cfg = check_resume(saved, cfg, extensible=["train.epochs"]) if saved else cfg
    tc, micro = cfg.train, cfg.train.batch_size // cfg.train.grad_accum
    check_step_memory(cfg.model, tc, micro, cfg.data.image_size, device)  # before any allocation
    if main:
        folder.remove_leftovers()
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    # -- data
    data = build_train_data(cfg.data, seed=tc.seed, out=folder.path, progress=show, device=device)
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
    steps_per_epoch = len(sampler.base) // (micro * tc.grad_accum)

    # -- model, optimizer, loss; the checkpoint of a resumed run
    model = build_model(model_config(cfg, data)).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    learner = build_learner(model, tc, data, device)
    st, records = RunState(), []
    if saved:
        st, records = resume_state(folder, learner, saved, tc, steps_per_epoch)
    run = Run(
        cfg, folder, data, learner, loader, sampler, eval_loader(data.val, micro, workers, generator),
        steps_per_epoch, st, records, Clock(st.elapsed, tc.max_minutes), show, resumed=saved is not None,
        checkpoint=f"{folder.state} (epoch {format_epoch(epoch_of(st, steps_per_epoch))})" if saved else None,
        writer=open_tensorboard(folder) if tc.tensorboard and main else None,
        threads=ThreadTuner.for_run() if adaptive_threads(tc, device) else None,
    )  # fmt: skip
    if main and saved:
        run.dir.write_metrics(records)  # repairs a log cut short by a kill
        if cfg != saved:
            run.pending_config = _yaml(cfg)
    elif main:
        folder.write_text(folder.config, _yaml(cfg))
    if show:
        announce(cfg, data, learner, steps_per_epoch, workers, folder, factors)
    return run


def fit(run: Run) -> None:
    """Train, evaluate and checkpoint epoch after epoch until the run stops."""
    cfg, st, clock, learner = run.cfg, run.st, run.clock, run.learner
    tc = cfg.train
    schedule = Schedule(tc, run.steps_per_epoch, clock)
    eval_every = tc.eval_every
    length = f"{tc.epochs}"  # the progress bar's "epoch N/length"; under a budget, its estimate
    if not st.stopped and st.epoch >= tc.epochs:
        st.stopped = "epochs done"
    if not st.stopped and run.resumed and distributed.any_process(clock.out_of_time(0.0)):
        st.stopped = f"time budget of {tc.max_minutes:g} minutes"
    # one stream of batches for the whole run, from where it stands (`EpochSampler`)
    run.sampler.set_epoch(st.epoch, skip=st.step_in_epoch * tc.batch_size)
    batches = iter(run.loader)
    while not st.stopped:
        # -- train one epoch (or what is left of it)
        try:
            stats = train_one_epoch(
                learner, batches, st, run.steps_per_epoch, schedule, clock, run.progress, length
            )
        except TrainingDiverged as err:
            raise SegformerError(
                f"{err}; lower train.lr (now {tc.lr:g}) or check the data. "
                f"Last good checkpoint: {run.checkpoint or 'none saved yet'}"
            ) from None
        if st.step_in_epoch == run.steps_per_epoch:
            st.epoch, st.step_in_epoch = st.epoch + 1, 0
        record = epoch_record(stats, st, run.steps_per_epoch, learner, tc.batch_size)
        if clock.budget is not None and stats.steps:
            length = budget_length(run, stats)
        if st.epoch >= tc.epochs:
            st.stopped = "epochs done"
        elif stats.out_of_time:
            st.stopped = f"time budget of {tc.max_minutes:g} minutes"

        # -- evaluate every eval_every epochs (with a budget: as often as EVAL_SHARE of it allows), at the end
        since = st.epoch - st.last_eval_epoch
        due = st.step_in_epoch == 0 and (since >= eval_every if clock.budget else st.epoch % eval_every == 0)
        if st.stopped or due:
            run.last_scores = evaluate_and_checkpoint(run, record)
            if tc.early_stop and st.bad_evals >= tc.early_stop and not st.stopped:
                st.stopped = f"early stopping ({tc.early_stop} evaluations without improvement)"
            if clock.budget is not None:  # (from the main process's clock: all must evaluate together)
                epoch_seconds = stats.seconds / stats.steps * run.steps_per_epoch
                eval_every = distributed.broadcast_object(
                    fit_eval_every(tc.eval_every, st, clock, epoch_seconds)
                )

        # -- log: state.pt (with the metrics records), metrics.jsonl, curves, one line
        run.records.append(json_safe({**record, "elapsed_minutes": clock() / 60}))
        if distributed.is_main():
            log_epoch(run)
        run.checkpoint = f"{run.dir.state} (epoch {format_epoch(record['epoch'])})"

        # -- threads: the count that measures faster under the machine's load now
        if run.threads is not None and stats.steps and not stats.out_of_time:
            note = run.threads.measured(record["images_per_s"])
            if note and run.progress:
                tqdm.write(note)
        distributed.barrier()


def finish(run: Run) -> dict[str, Any]:
    """The summary of the run, written to summary.json; returned."""
    if run.writer is not None:
        run.writer.close()
    summary = summarize(run.dir, run.cfg, run.st, run.clock, run.records, run.last_scores)
    if distributed.is_main():
        run.dir.write_json(run.dir.summary, summary)
    return summary


# -- helpers of the loop ---------------------------------------------------------------------------------


def adaptive_threads(tc: TrainConfig, device: torch.device) -> bool:
    """Whether the run may move its compute threads to the count that measures faster (`ThreadTuner`):
    a single CPU process, not in deterministic mode (another thread count sums in another order)."""
    return distributed.world_size() == 1 and device.type == "cpu" and not tc.deterministic


def model_config(cfg: RunConfig, data: TrainData) -> ModelConfig:
    """The run's model config, with the class count and names of the data's label set."""
    ls = data.label_set
    if "num_classes" in cfg.model_overrides() and cfg.model.num_classes != ls.num_classes:
        raise SegformerError(
            f"model.num_classes={cfg.model.num_classes} but label set {ls.name} has {ls.num_classes} classes"
        )
    return cfg.model.replace(num_classes=ls.num_classes, class_names=cfg.model.class_names or ls.class_names)


def model_meta(cfg: RunConfig, data: TrainData, adjusted: bool) -> dict[str, Any]:
    """What a saved model of the run carries besides its weights: its inference settings, the split it
    was validated on and the logit adjustment it has."""
    settings = InferenceSettings(
        image_size=cfg.data.image_size, label_set=data.label_set, tta=cfg.train.tta, **data.preprocess
    )
    split = {"kind": cfg.data.kind, "val_fraction": cfg.data.val_fraction, "split_seed": cfg.data.split_seed}
    return {
        **settings.to_dict(),
        "data": split,
        **({"logit_adjust": cfg.train.logit_adjust} if adjusted else {}),
    }


def budget_length(run: Run, stats: EpochStats) -> str:
    """The progress bar's count of epochs under a time budget: the configured epochs, or the estimate
    of those the budget allows when it is fewer. Says once when the epochs end well before the budget."""
    tc = run.cfg.train
    estimate = budgeted_epochs(run.st, run.clock, stats.seconds / stats.steps * run.steps_per_epoch)
    if run.progress and estimate > 1.1 * tc.epochs and not run.noted:
        run.noted = True
        tqdm.write(
            f"note: the run's {tc.epochs} epochs end after about "
            f"{tc.epochs / estimate * tc.max_minutes:.0f} of the {tc.max_minutes:g} minutes; "
            f"pass --epochs {math.ceil(estimate * 1.2)} (or more) to train for the whole budget"
        )
    return f"{tc.epochs}" if estimate >= tc.epochs else f"~{estimate:.0f}"


def _yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
