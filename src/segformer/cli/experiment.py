"""`segformer experiment SUITE...`: the seed's ablations and efficiency comparison, tables and figures."""

from __future__ import annotations

import argparse

from . import add_set_option, add_threads_option
from .types import nonneg_int, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..apps.experiments import SUITE_NAMES

    p = sub.add_parser(
        "experiment",
        help="run the seed's experiment suites (depth, width, loss, augment, schedule, efficiency)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train every variant of each SUITE with the seed recipe (same seed, data split, image size,\n"
            "epochs and time budget; early stopping off) into OUT/<suite>/<run>/, then measure parameters,\n"
            "GFLOPs and CPU images/s and write OUT/<suite>/results.csv|.md|.tex, curves.png,\n"
            "per_class_f1.png, predictions.png and (when sizes differ) params_vs_score.png.\n"
            "Scores are those of the final epoch on the validation split (the dataset's val/, or the\n"
            "seeded 10% hold-out of train). Run it again with the same arguments to resume: finished\n"
            "runs are reused, interrupted ones continue from their last checkpoint.\n\n"
            "suites:\n"
            "  depth       depths [1,1,1,1] / [1,2,2,2] / [2,3,3,3]\n"
            "  width       channels [16,32,64,96] / [32,64,128,192] / [48,96,192,288]\n"
            "  loss        ce / dice / ce + lambda dice, lambda 0.25, 0.5, 1.0\n"
            "  augment     none / geometric / photometric / both\n"
            "  schedule    constant / step / cosine\n"
            "  efficiency  microsegformer / segformer-b0 / unet (width 64) / parameter-matched unet\n\n"
            "examples:\n"
            "  segformer experiment loss --data ce7454/ --img-size 128 --epochs 30\n"
            "  segformer experiment efficiency loss --data ce7454/ --max-minutes 8 --out experiments\n"
            "  segformer experiment depth --quick --synthetic 24       # seconds: a smoke test"
        ),
    )
    p.add_argument("suites", nargs="+", metavar="SUITE", choices=SUITE_NAMES, help=", ".join(SUITE_NAMES))
    p.add_argument("--data", metavar="ROOT", help="dataset root (CE7454 folder layout, ADE20K or Cityscapes)")
    p.add_argument(
        "--synthetic",
        type=positive_int,
        metavar="N",
        help="no --data: generate N synthetic faces into OUT/data",
    )
    p.add_argument("--out", default="experiments", help="output folder (default experiments)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out that is not an experiment folder (its files are kept)",
    )
    p.add_argument("--epochs", type=positive_int, help="epochs per run (default 30; --quick 2)")
    p.add_argument(
        "--img-size", type=positive_int, help="training and measuring size (default 128; --quick 32)"
    )
    p.add_argument(
        "--max-minutes",
        type=positive_float,
        help="wall-clock budget per run; the lr schedule is fitted to it",
    )
    p.add_argument("--batch-size", type=positive_int, help="default: the recipe's 32 (--quick 8)")
    p.add_argument("--seed", type=nonneg_int, help="seed of every run (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="training device (default auto)")
    p.add_argument("--workers", type=nonneg_int, help="DataLoader worker processes (default: the recipe's)")
    add_set_option(
        p, "SECTION.KEY=VALUE", "override a recipe field in every run, e.g. train.amp=bf16 (repeatable)"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 32px, 2 epochs, batch 8, short timings")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="measure parameters, GFLOPs and FPS of finished runs again instead of reusing them",
    )
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.experiments import make_settings, run_experiments
    from ..apps.report import markdown_table
    from ..config import parse_overrides

    settings = make_settings(
        args.quick,
        epochs=args.epochs,
        img_size=args.img_size,
        max_minutes=args.max_minutes,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        overrides=parse_overrides(args.overrides) or None,
    )
    results = run_experiments(
        args.suites,
        args.data,
        args.out,
        settings,
        args.synthetic,
        not args.quiet,
        args.remeasure,
        overwrite=args.overwrite,
    )
    for result in results:
        print(f"\n{result['suite']}  ->  {result['dir']}/ ({', '.join(result['files'])})\n")
        print(markdown_table(result["rows"]))
    return 0
