"""`segformer demo`: generate synthetic faces, train MicroSegFormer on CPU, evaluate, report."""

from __future__ import annotations

import argparse

from .types import nonneg_int, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: synthetic faces -> train MicroSegFormer (CPU, minutes) -> evaluate -> report",
        description="Generate a synthetic face-parsing dataset, train MicroSegFormer with the seed "
        "recipe adapted to a few CPU minutes within a time budget (the lr schedule is fitted to it), "
        "evaluate the best checkpoint on the held-out synthetic faces (also with flip TTA), and write "
        "colour overlays and a Markdown report. Run it again with the same --out to resume a killed "
        "demo or to rebuild the report.",
    )
    p.add_argument("--out", default="segformer-demo", help="output folder (default segformer-demo)")
    p.add_argument(
        "--minutes", type=positive_float, default=8.5, help="training budget in minutes (default 8.5)"
    )
    p.add_argument("--num", type=positive_int, default=5000, help="synthetic training faces (default 5000)")
    p.add_argument("--val", type=positive_int, default=100, help="held-out synthetic faces (default 100)")
    p.add_argument("--size", type=positive_int, default=128, help="image size (default 128)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    result = run_demo(
        args.out, args.minutes, args.num, args.val, args.size, args.seed, args.device, not args.quiet
    )
    s = result["scores"]
    print(
        f"\nCE7454 F-score {s['ce7454_f']:.4f}   mIoU {s['miou']:.4f}   mean F1 (fg) {s['mean_f1_fg']:.4f}"
        f"   on {s['num_images']} held-out synthetic faces"
    )
    print(f"  with flip test-time augmentation: CE7454 F-score {result['flip_scores']['ce7454_f']:.4f}")
    print(f"  report:      {result['report']}")
    print(f"  predictions: {result['predictions']}")
    print(f"  model:       {result['summary']['best_dir']}")
    print(f"  curves:      {result['summary']['run']}/curves.png")
    return 0
