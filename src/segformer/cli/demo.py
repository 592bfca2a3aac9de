"""`segformer demo`: generate synthetic faces, train MicroSegFormer on CPU, evaluate, report."""

from __future__ import annotations

import argparse

from . import add_threads_option
from .types import nonneg_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..apps.demo import DEFAULTS, PROMISED_CE7454

    p = sub.add_parser(
        "demo",
        help="the main job: synthetic faces -> train MicroSegFormer (CPU, minutes) -> evaluate -> report",
        description="Generate a synthetic face-parsing dataset, train MicroSegFormer for a fixed number "
        "of epochs with the seed recipe adapted to minutes of CPU (the expected time is measured and "
        "printed first), evaluate the best checkpoint on the held-out synthetic faces (also with flip "
        f"TTA), and write predictions and a Markdown report. The defaults reach CE7454 ~{PROMISED_CE7454}; "
        "a score far below that ends with a warning and the command to train further. Run it again "
        "with the same --out to resume a killed demo, to rebuild the report, or with a larger --epochs "
        "to train the same run further. Data options left out take the folder's values.",
    )
    p.add_argument(
        "--out", default="segformer-demo", help="output folder (default segformer-demo, ignored by git)"
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        help=f"training epochs (default {DEFAULTS['epochs']}, or the folder's run); more than the folder's "
        "run trains it further",
    )
    p.add_argument("--num", type=positive_int, help=f"synthetic training faces (default {DEFAULTS['num']})")
    p.add_argument("--val", type=positive_int, help=f"held-out synthetic faces (default {DEFAULTS['val']})")
    p.add_argument("--size", type=positive_int, help=f"image size in pixels (default {DEFAULTS['size']})")
    p.add_argument(
        "--seed", type=nonneg_int, help=f"seed of the faces and of training (default {DEFAULTS['seed']})"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out that is not a demo folder (its files are kept)",
    )
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where to train and evaluate (default cpu)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or time estimate")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.demo import run_demo
    from ..engine.log import format_epochs

    result = run_demo(
        args.out,
        args.epochs,
        args.num,
        args.val,
        args.size,
        args.seed,
        args.device,
        not args.quiet,
        overwrite=args.overwrite,
    )
    s = result["scores"]
    print(
        f"\nCE7454 F-score {s['ce7454_f']:.4f}   mIoU {s['miou']:.4f}   mean F1 (fg) {s['mean_f1_fg']:.4f}"
        f"   on {s['num_images']} held-out synthetic faces after {format_epochs(result['epochs'])}"
    )
    print(f"  with flip test-time augmentation: CE7454 F-score {result['flip_scores']['ce7454_f']:.4f}")
    print(f"  report:      {result['report']}")
    print(f"  predictions: {result['predictions']}")
    print(f"  model:       {result['summary']['best_dir']}")
    print(f"  curves:      {result['summary']['run']}/curves.png")
    if result["warning"]:
        print(f"\n{result['warning']}")
    return 0
