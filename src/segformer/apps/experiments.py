"""The experiments of the CE7454 face-parsing project (ablations and an efficiency comparison), as data,
run through the training engine.

A suite is a list of variants, each a run name and the recipe overrides that make it. Every variant is
trained by `segformer.engine.train.train` from the same recipe, seed, data split, image size, epochs
and time budget, into ``OUT/<suite>/<run>/``, then measured (parameters, GFLOPs, CPU images/s) and
tabulated (`segformer.apps.report`). Suites:

- ``depth``: MicroSegFormer encoder depths [1,1,1,1] / [1,2,2,2] (the model) / [2,3,3,3];
- ``width``: channels [16,32,64,96] / [32,64,128,192] (the model) / [48,96,192,288] (half, 1x and
  1.5x the MicroSegFormer widths; one head per stage, so every width is valid);
- ``loss``: CE, Dice, CE + lambda * Dice for lambda = 0.25, 0.5 (the recipe), 1.0;
- ``augment``: none / geometric / photometric / both (the recipe);
- ``schedule``: constant / step (x0.1 at 60% and 85%) / cosine (the recipe), all after the warmup;
- ``efficiency``: MicroSegFormer, SegFormer-B0, U-Net (width 64) and a U-Net whose width is chosen
  so its parameter count is the closest to MicroSegFormer's (width 15: 1,707,844 vs 1,721,939).

Honesty rules built in: the validation set is the dataset's val split or the seeded hold-out of train
(never the images trained on); every variant has the same epochs and budget (early stopping is off);
the tables report the scores of the **final** epoch (no checkpoint picked on the validation set; the
best epoch is in results.csv for reference). With a per-run time budget the learning-rate schedule is
fitted to the budget (see `segformer.engine.train`), so a slower model trains fewer epochs within the
same wall-clock time; results.csv records the epochs each run completed.

A suite is resumable: a run folder with ``summary.json`` is finished and reused (its settings must
match), one with ``state.pt`` but no summary is resumed, others are trained. ``suite.json`` is written
when a suite starts (``"complete": false``) and again when its tables are written, so a report of an
interrupted suite shows the runs that finished.
"""

from __future__ import annotations

import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load
from ..config import RunConfig, load_recipe
from ..engine.rundir import RunDir
from ..engine.state import check_resume
from ..engine.train import train
from ..errors import SegformerError
from ..fileio import STAGING_PREFIX, OutputFolder, refuse_foreign, write_json
from ..models import create_model
from ..models.summary import count_flops

MICROSEGFORMER_PARAMS = 1_721_939


@dataclass(frozen=True)
class Variant:
    """One run of a suite: a folder-safe name and the dotted recipe overrides that make it."""

    name: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    variants: tuple[Variant, ...]


@functools.lru_cache
def unet_params(width: int, num_classes: int = 19) -> int:
    """Parameters of the U-Net of base width `width` (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = create_model("unet", num_classes=num_classes, unet_width=width)
    return sum(p.numel() for p in model.parameters())


def matched_unet_width(
    target: int = MICROSEGFORMER_PARAMS, num_classes: int = 19, max_width: int = 64
) -> int:
    """The U-Net base width whose parameter count is the closest to `target` (the count grows with the
    width, so the search stops at the first width above the target)."""
    width = 1
    while width < max_width and unet_params(width, num_classes) < target:
        width += 1
    return min((max(1, width - 1), width), key=lambda w: abs(unet_params(w, num_classes) - target))


def _suites() -> dict[str, Suite | Callable[[], Suite]]:
    def v(name: str, **overrides: Any) -> Variant:
        return Variant(name, {k.replace("__", "."): val for k, val in overrides.items()})

    def efficiency() -> Suite:  # a function: finding the matched U-Net width builds 15 models
        matched = matched_unet_width()
        return Suite(
            "efficiency",
            "parameter efficiency: MicroSegFormer vs SegFormer-B0 vs U-Net (standard and parameter-matched)",
            (
                v("microsegformer", model__name="microsegformer"),
                v("segformer-b0", model__name="segformer-b0"),
                v("unet", model__name="unet"),
                v(f"unet-w{matched}", model__name="unet", model__unet_width=matched),
            ),
        )

    return {
        "depth": Suite(
            "depth",
            "MicroSegFormer encoder depth (blocks per stage)",
            (
                v("depths-1111", model__depths=[1, 1, 1, 1]),
                v("depths-1222", model__depths=[1, 2, 2, 2]),
                v("depths-2333", model__depths=[2, 3, 3, 3]),
            ),
        ),
        "width": Suite(
            "width",
            "MicroSegFormer encoder channels per stage (0.5x, 1x, 1.5x)",
            (
                v("dims-16-32-64-96", model__embed_dims=[16, 32, 64, 96]),
                v("dims-32-64-128-192", model__embed_dims=[32, 64, 128, 192]),
                v("dims-48-96-192-288", model__embed_dims=[48, 96, 192, 288]),
            ),
        ),
        "loss": Suite(
            "loss",
            "training loss: cross entropy, soft Dice, CE + lambda * Dice",
            (
                v("ce", train__loss="ce"),
                v("dice", train__loss="dice"),
                v("ce+0.25dice", train__loss="ce+dice", train__dice_weight=0.25),
                v("ce+0.5dice", train__loss="ce+dice", train__dice_weight=0.5),
                v("ce+1.0dice", train__loss="ce+dice", train__dice_weight=1.0),
            ),
        ),
        "augment": Suite(
            "augment",
            "data augmentation preset",
            tuple(v(a, data__augment=a) for a in ("none", "geometric", "photometric", "both")),
        ),
        "schedule": Suite(
            "schedule",
            "learning-rate schedule after the linear warmup",
            tuple(v(s, train__schedule=s) for s in ("constant", "step", "cosine")),
        ),
        "efficiency": efficiency,
    }


SUITE_NAMES = ("depth", "width", "loss", "augment", "schedule", "efficiency")


def get_suite(name: str) -> Suite:
    """The suite called `name` (one of `SUITE_NAMES`)."""
    if name not in SUITE_NAMES:
        raise SegformerError(f"unknown experiment suite {name!r}; choose from {', '.join(SUITE_NAMES)}")
    suite = _suites()[name]
    return suite() if callable(suite) else suite


@dataclass(frozen=True)
class ExperimentSettings:
    """What every run of a suite shares. The defaults are CPU-affordable; `QUICK` is for tests."""

    epochs: int = 30
    img_size: int = 128
    max_minutes: float | None = None
    """Wall-clock budget per run (the lr schedule is fitted to it); None: epochs only."""
    batch_size: int | None = None
    """None: the recipe's (32)."""
    seed: int = 0
    device: str = "auto"
    """Training device; images/s are always measured on CPU."""
    workers: int | None = None
    """DataLoader workers; None: the recipe's."""
    recipe: str = "microsegformer-seed"  # the literal seed recipe: suites are ablations of it
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted overrides applied to every run (before the variant's own)."""
    fps_warmup: int = 3
    fps_seconds: float = 3.0
    """Minimum timed window of the images/s measurement."""
    sample_images: int = 4
    """Validation images in the predictions figure."""


QUICK = ExperimentSettings(
    epochs=2,
    img_size=32,
    batch_size=8,
    workers=0,
    device="cpu",
    fps_warmup=1,
    fps_seconds=0.2,
    sample_images=2,
)


def run_config(settings: ExperimentSettings, data: str | Path, variant: Variant) -> RunConfig:
    """The recipe of one variant: recipe <- shared settings <- settings.overrides <- variant.overrides."""
    recipe = load_recipe(settings.recipe)
    changes: dict[str, Any] = {
        "data.root": str(Path(data).resolve()),
        "data.img_size": settings.img_size,
        "train.epochs": settings.epochs,
        "train.max_minutes": settings.max_minutes,
        "train.seed": settings.seed,
        "train.device": settings.device,
        # Same epochs for every variant: no early stopping; the warmup keeps the recipe's share of training.
        "train.early_stop": 0,
        "train.warmup_epochs": recipe.train.warmup_epochs * settings.epochs / recipe.train.epochs,
    }
    if settings.batch_size is not None:
        changes["train.batch_size"] = settings.batch_size
    if settings.workers is not None:
        changes["data.workers"] = settings.workers
    return recipe.override({**changes, **settings.overrides, **variant.overrides})


def run_variant(cfg: RunConfig, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train one variant, or reuse / resume what `run_dir` already holds; returns its summary."""
    run = RunDir(run_dir)
    if run.config.is_file() and (run.is_finished() or run.has_state()):
        saved = run.read_config()
        try:
            check_resume(saved, cfg)
        except SegformerError as err:
            raise SegformerError(
                f"{run_dir} holds a run made with other settings; use another --out or remove it ({err})"
            ) from None
    if run.is_finished():
        return run.read_summary()
    return train(cfg, run_dir, resume=run.has_state(), progress=progress)


def measure_fps(
    model: nn.Module, size: int, warmup: int = 3, min_seconds: float = 3.0, min_iters: int = 5
) -> float:
    """Inference images/s on CPU at `size` x `size`, batch 1, after `warmup` untimed passes: the inverse
    of the median time of at least `min_iters` passes over at least `min_seconds` (the median shrugs off
    passes slowed down by other processes on a shared machine)."""
    model = model.eval().to("cpu")
    x = torch.randn(1, model.config.in_channels, size, size)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        start = time.perf_counter()
        while len(times) < min_iters or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def final_scores(run_dir: Path, summary: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Validation scores of the final epoch (with per-class scores); re-evaluated from ``last/`` when the
    summary has none (a run killed after its last checkpoint but before its summary)."""
    scores = summary.get("last_scores")
    if scores and "per_class" in scores:
        return scores
    from ..engine.evaluate import evaluate_model

    run = RunDir(run_dir)
    return evaluate_model(load(run.last), run.read_config().data.root, "val", device=device, progress=False)


def measure_run(run_dir: Path, settings: ExperimentSettings, remeasure: bool = False) -> dict[str, Any]:
    """Parameters, GFLOPs and CPU images/s of ``run_dir/last`` at the suite's size (cached in
    ``measurements.json``; measured again when the size or the thread count differs, or on request)."""
    path = run_dir / "measurements.json"
    key = {"img_size": settings.img_size, "threads": torch.get_num_threads(), "batch": 1, "device": "cpu"}
    if path.is_file() and not remeasure:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    model = load(RunDir(run_dir).last)
    result = {
        "key": key,
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": count_flops(model, settings.img_size)[""] / 1e9,
        "fps": measure_fps(model, settings.img_size, settings.fps_warmup, settings.fps_seconds),
    }
    write_json(path, result)
    return result


def validation_source(cfg: RunConfig) -> str:
    """Where the validation images come from: a val split, or the seeded hold-out of train."""
    from ..data.layouts import split_description

    return split_description(cfg.data.root, cfg.data.kind, cfg.data.val_fraction, cfg.data.split_seed)


def result_row(
    suite: Suite, variant: Variant, cfg: RunConfig, summary: dict[str, Any], scores: dict, measured: dict
) -> dict[str, Any]:
    """One line of results.csv."""
    return {
        "suite": suite.name,
        "run": variant.name,
        "model": cfg.model_name,
        "params": measured["params"],
        "gflops": measured["gflops"],
        "fps": measured["fps"],
        "ce7454_f": scores["ce7454_f"],
        "miou": scores["miou"],
        "mean_f1_fg": scores["mean_f1_fg"],
        "pixel_acc": scores["pixel_acc"],
        "val_images": scores["num_images"],
        "val_source": validation_source(cfg),
        "best_ce7454_f": summary["best_score"],
        "best_epoch": summary["best_epoch"],
        "epochs_completed": summary["epochs_completed"],
        "minutes": summary["minutes"],
        "train_images_per_s": summary["train_images_per_s"],
        "stop_reason": summary["stop_reason"],
        "seed": cfg.train.seed,
        "split_seed": cfg.data.split_seed,
        "val_fraction": cfg.data.val_fraction,
        "img_size": cfg.data.img_size,
        "epochs": cfg.train.epochs,
        "max_minutes": cfg.train.max_minutes,
        "batch_size": cfg.train.batch_size,
        "fps_threads": measured["key"]["threads"],
        "overrides": json.dumps(variant.overrides, sort_keys=True),
    }


def run_suite(
    name: str,
    data: str | Path,
    out: str | Path,
    settings: ExperimentSettings = ExperimentSettings(),
    progress: bool = True,
    remeasure: bool = False,
    folder: OutputFolder | None = None,
) -> dict[str, Any]:
    """Train (or reuse) every variant of suite `name` into ``OUT/<name>/<run>/`` and write the suite's
    results.csv / .md / .tex and figures; returns ``{"suite", "dir", "rows", "files"}``. The suite's
    files go through the output policy of `folder` (OUT's; opened here when not given)."""
    if folder is None:
        with OutputFolder(out, "experiment", [data], overwrite=True, what="experiment file") as folder:
            return run_suite(name, data, out, settings, progress, remeasure, folder)
    from .report import write_suite_outputs

    suite = get_suite(name)
    suite_dir = Path(out) / suite.name
    meta = {
        "suite": suite.name,
        "description": suite.description,
        "settings": {**settings.__dict__, "data": str(Path(data).resolve())},
        "runs": [v.name for v in suite.variants],
    }
    # Written first, marked incomplete, so that `segformer report` can show the runs an interrupted
    # suite has finished.
    folder.write_json(suite_dir / "suite.json", {**meta, "complete": False})
    rows, runs, trained = [], {}, []
    for i, variant in enumerate(suite.variants):
        cfg = run_config(settings, data, variant)
        run_dir = suite_dir / variant.name
        if progress:
            where = f"[{suite.name} {i + 1}/{len(suite.variants)}] {variant.name}"
            print(f"{where}: {variant.overrides} -> {run_dir}")
        trained.append((variant, cfg, run_dir, run_variant(cfg, run_dir, progress)))
    # Speed is measured once every run has trained, none of them competing with a training process.
    for variant, cfg, run_dir, summary in trained:
        scores = final_scores(run_dir, summary)
        measured = measure_run(run_dir, settings, remeasure)
        rows.append(result_row(suite, variant, cfg, summary, scores, measured))
        runs[variant.name] = {"dir": run_dir, "scores": scores}
    # Written in a staging folder, then moved into place under the policy (one refusal: none moved).
    with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX, suffix=".tmp", dir=folder.path) as staging:
        files = write_suite_outputs(Path(staging), rows, runs, meta, settings.sample_images)
        folder.install(Path(staging), suite_dir, "experiment results")
    folder.write_json(suite_dir / "suite.json", {**meta, "complete": True, "files": sorted(files)})
    return {"suite": suite.name, "dir": str(suite_dir), "rows": rows, "files": files}


def run_experiments(
    names: list[str],
    data: str | Path | None,
    out: str | Path,
    settings: ExperimentSettings = ExperimentSettings(),
    synthetic: int | None = None,
    progress: bool = True,
    remeasure: bool = False,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run the suites `names` in turn. Without `data`, `synthetic` faces are generated once into
    ``OUT/data`` (at the suites' image size, 10% for validation) and shared by every run. Finished
    runs are reused; `remeasure` times their inference speed again (e.g. on a quieter machine). A
    non-empty `out` holding anything else is refused unless `overwrite` (its files are then kept)."""
    for name in names:
        get_suite(name)  # fail on a typo before hours of training
    # One experiment at a time writes OUT; its own files are written again as it resumes; the data read
    # is never written; other files in OUT stay only with `overwrite` (and are never replaced).
    inputs = [data] if data is not None else []
    with OutputFolder(out, "experiment", inputs, overwrite=True, what="experiment file") as folder:
        refuse_foreign(folder, overwrite, "experiments")
        return _run_experiments(names, data, out, settings, synthetic, progress, remeasure, folder)


def _run_experiments(
    names: list[str],
    data: str | Path | None,
    out: str | Path,
    settings: ExperimentSettings,
    synthetic: int | None,
    progress: bool,
    remeasure: bool,
    folder: OutputFolder,
) -> list[dict[str, Any]]:
    if data is None:
        if not synthetic:
            raise SegformerError("no data: pass --data ROOT or --synthetic N")
        from ..data.synthetic import write_synthetic_dataset

        data = Path(out) / "data"
        if not (data / "train" / "images").is_dir():
            write_synthetic_dataset(data, num=synthetic, size=settings.img_size, seed=settings.seed,
                                    val_fraction=0.1, progress=progress)  # fmt: skip
    elif not Path(data).is_dir():
        raise SegformerError(f"{data}: dataset folder not found")
    if progress:
        from ..runtime import thread_choice

        runs = sum(len(get_suite(name).variants) for name in names)
        print(
            f"experiment: {', '.join(names)}: {runs} runs x {settings.epochs} epochs at "
            f"{settings.img_size} px on {data}, {thread_choice().describe()} -> {out}"
        )
    return [run_suite(name, data, out, settings, progress, remeasure, folder) for name in names]


def make_settings(quick: bool = False, **changes: Any) -> ExperimentSettings:
    """The default settings (or `QUICK`) with `changes` applied; None values keep the default."""
    return replace(
        QUICK if quick else ExperimentSettings(), **{k: v for k, v in changes.items() if v is not None}
    )
