"""`segformer train`: train a model with a recipe (YAML) and command-line overrides."""

from __future__ import annotations

import argparse
import textwrap
import time

from ..config import list_recipes, load_recipe, parse_overrides
from ..data.layouts import LAYOUTS, default_recipe
from ..engine.rundir import RunDir
from ..errors import SegformerError
from . import add_set_option, add_threads_option
from .options import add_image_size_option
from .types import positive_float, positive_int, workers_count


def add_parser(sub: argparse._SubParsersAction) -> None:
    by_layout = {name: layout.recipe for name, layout in LAYOUTS.items()}
    p = sub.add_parser(
        "train",
        help=f"train a model ({default_recipe(None)} recipe by default; DDP with torchrun)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a segmentation model and write a run folder (best/ and last/ model directories,\n"
            "resumable state.pt, metrics.jsonl, curves.png, summary.json).\n\n"
            + textwrap.fill(
                f"Recipes shipped: {', '.join(list_recipes())}. Without --config the recipe follows the "
                f"data: {by_layout.pop('folder')} for folder (CE7454) data and without --data, "
                + ", ".join(f"{recipe} for {name}" for name, recipe in by_layout.items())
                + ".",
                90,
                break_on_hyphens=False,
            )
            + "\n\n"
            "Multi-GPU / multi-process: torchrun --nproc_per_node N -m segformer train ...\n\n"
            "examples:\n"
            "  segformer train --data ce7454/ --out runs/micro\n"
            "  segformer train --data ce7454/ --image-size 256 --max-minutes 30 --set train.amp=bf16\n"
            "  segformer train --data ce7454/ --model segformer-b0 --set model.drop_path_rate=0.0\n"
            "  segformer train --out runs/micro --resume               # continue a killed run\n"
            "  segformer train --out runs/micro --resume --epochs 300   # extend a finished run"
        ),
    )
    p.add_argument("--config", metavar="NAME|PATH", help="recipe name or YAML file")
    p.add_argument("--model", metavar="NAME", help="model name (overrides the recipe's model.name)")
    p.add_argument("--data", metavar="ROOT", help="dataset root (folder/CE7454, ADE20K or Cityscapes layout)")
    p.add_argument(
        "--synthetic", type=positive_int, metavar="N", help="no --data: train on N generated synthetic faces"
    )
    p.add_argument("--out", metavar="RUN", help="run folder (default runs/MODEL-DATE-TIME)")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: the recipe's)")
    p.add_argument(
        "--batch-size", type=positive_int, help="images per optimizer step (default: the recipe's)"
    )
    add_image_size_option(p, help="training resolution, square (default: the recipe's)")
    p.add_argument(
        "--max-minutes", type=positive_float, help="wall-clock budget; the lr schedule is fitted to it"
    )
    p.add_argument(
        "--workers",
        type=workers_count,
        help="DataLoader worker processes, or auto (the recipe's default): none on a CPU whose cores "
        "the compute threads fill (2 cores, 2 threads), otherwise the spare cores, up to 4",
    )
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="training device (default: the recipe's, auto)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its state.pt; with a larger --epochs or --max-minutes, "
        "extend a finished run (the schedule is re-fitted)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write a new run into a --out that holds other files (they are kept: a file at one of the "
        "run's names, config.yaml, best/ ..., that segformer train did not write is never replaced)",
    )
    add_set_option(
        p,
        "SECTION.KEY=VALUE",
        "override any recipe field, e.g. train.lr=1e-3, model.depths=[1,1,1,1], data.augment=none",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars or per-epoch lines, only the summary"
    )
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.train import train

    if args.resume and not args.out:
        raise SegformerError("--resume needs --out RUN (the run folder to continue)")
    if args.resume and args.config is None and RunDir(args.out).config.is_file():
        cfg = load_recipe(RunDir(args.out).config)
    else:
        cfg = load_recipe(args.config or default_recipe(args.data))  # the data's layout picks the recipe
    changes = {
        "model.name": args.model,
        "data.root": args.data,
        "data.synthetic": args.synthetic,
        "data.image_size": args.image_size,
        "data.workers": args.workers,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.max_minutes": args.max_minutes,
        "train.device": args.device,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    changes.update(parse_overrides(args.overrides))
    cfg = cfg.override(changes)
    out = args.out or f"runs/{cfg.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = train(cfg, out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    from .. import distributed

    if distributed.is_main():
        print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    scores = summary.get("last_scores") or {}
    run = RunDir(summary["run"])
    print(
        f"\nrun finished ({summary['stop_reason']}) after {summary['epochs_completed']} epochs, "
        f"{summary['minutes']:.1f} min, {summary.get('threads', '?')} threads"
    )
    for note in summary.get("extended") or []:
        print(f"  extended: {note}")
    if summary["best_score"] is None:
        print("  no evaluation was made: no best/ model")
    else:
        print(
            f"  best {summary['monitor']} {summary['best_score']:.4f} at epoch {summary['best_epoch']}"
            f"  -> {summary['best_dir']}"
        )
    if scores:
        print(
            f"  last: CE7454 F {scores['ce7454_f']:.4f}  mIoU {scores['miou']:.4f}  "
            f"mean F1 (fg) {scores['mean_f1_fg']:.4f}  pixel acc {scores['pixel_acc']:.4f}"
            f"  -> {summary['last_dir']}"
        )
    print(f"  metrics: {run.metrics}   curves: {run.curves}   summary: {run.summary}")
