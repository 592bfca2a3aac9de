"""`segformer distill`: fine-tune a model's single forward pass on its own TTA ensemble's predictions."""

from __future__ import annotations

import argparse

from . import add_threads_option
from .options import config_from_args
from .types import nonneg_int, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="teach a model's one forward pass what its flip + multi-scale ensemble predicts",
        description="Self-distillation: a copy of TEACHER is fine-tuned on the training split of --data "
        "(the hold-out the teacher was validated on stays unseen) with the teacher's test-time ensemble "
        "(--teacher-tta, default flip+scales: 8 passes) as soft targets, plus Dice against the labels, "
        "under mirror and similarity warps. The result, RUN/last, parses with one pass (its settings say "
        "tta none) about as well as the teacher with eight. The teacher's probabilities are computed once "
        "and kept in RUN/targets/; a killed run continues with --resume.",
        epilog="example:\n  segformer distill microsegformer-celebamask --data ce7454/ --out runs/distilled "
        "--epochs 12\n  segformer eval runs/distilled/last --data ce7454/ --tta none",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("teacher", metavar="TEACHER", help="model directory or pretrained tag to distil")
    p.add_argument("--data", required=True, help="dataset root (the teacher's training data)")
    p.add_argument("--out", required=True, help="run folder (new, or an existing one with --resume)")
    p.add_argument("--epochs", type=positive_int, default=12, help="fine-tuning epochs (default 12)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per step (default 32)")
    p.add_argument(
        "--lr", type=positive_float, default=3e-4, help="peak learning rate, cosine to 0 (default 3e-4)"
    )
    p.add_argument(
        "--teacher-tta", default="flip+scales", choices=["flip", "scales", "flip+scales"],
        help="the ensemble the student learns from (default flip+scales)",
    )  # fmt: skip
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the order and the warps (default 0)")
    p.add_argument("--max-minutes", type=positive_float, help="stop after the epoch that passes this budget")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.distill import DistillConfig, distill

    cfg = config_from_args(DistillConfig, args)
    result = distill(cfg, resume=args.resume, max_minutes=args.max_minutes)
    print(f"distilled model: {result['last']} ({result['epochs_done']} epochs)")
    return 0
