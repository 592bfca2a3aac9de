"""`segformer bench MODEL`: inference or training speed, side by side with a reference implementation."""

from __future__ import annotations

import argparse
import json

import torch

from ..bench import BACKENDS, REFERENCES, bench_inference, bench_train, bench_train_end_to_end
from ..errors import SegformerError
from ..models import list_models
from . import add_threads_option
from .types import nonneg_int, positive_int, workers_count


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time a model against HF transformers or the seed formulation (same weights)",
        description="Time MODEL with fresh weights against a reference implementation holding the same "
        "weights, both in this process, interleaved: latency, images/s, peak memory (a fresh process "
        "per side) and FLOP utilisation, then the ratios and a logit/argmax check. References: hf "
        "(transformers' SegformerForSemanticSegmentation, needs the [hf] extra), seed (MicroSegFormer "
        "as the CE7454 seed writes it), int8 (the model as `export --quantize int8` writes it, run by ONNX "
        "Runtime: compare with --backend onnxruntime for int8's speed and file size against float), none, "
        f"or module:function. Models: {', '.join(list_models())}.",
    )
    p.add_argument("model", metavar="MODEL", help="registered model name, e.g. segformer-b0")
    p.add_argument(
        "--mode",
        choices=("infer", "train"),
        default="infer",
        help="inference (eval, no grad) or a training step: forward + CE + backward + AdamW",
    )
    p.add_argument("--size", type=positive_int, nargs="+", default=[512], metavar="S",
                   help="input size: S for S x S or H W (default 512)")  # fmt: skip
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="images per call (default 1 infer, 2 train)"
    )
    p.add_argument("--compare", default="none", metavar="REF",
                   help=f"reference: {', '.join(REFERENCES)} or module:function (default none)")  # fmt: skip
    p.add_argument("--num-classes", type=positive_int, default=None, help="classes (default: the model's)")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="our inference path (default torch)")
    p.add_argument("--rounds", type=positive_int, default=None, help="timed calls per side (default 10 / 6)")
    p.add_argument(
        "--warmup", type=nonneg_int, default=None, help="untimed calls per side first (default 3 / 2)"
    )
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="keep glibc's malloc defaults (see segformer.runtime)")  # fmt: skip
    p.add_argument(
        "--end-to-end",
        action="store_true",
        help="with --mode train: the training step fed by the real data pipeline of --data (the loader, "
        "workers and augmentation `segformer train` uses) against the bare step, and their ratio",
    )
    p.add_argument("--data", metavar="ROOT", help="dataset root for --end-to-end")
    p.add_argument("--config", default="microsegformer-celebamask", metavar="NAME|PATH",
                   help="recipe for --end-to-end (default microsegformer-celebamask)")  # fmt: skip
    p.add_argument("--augment", help="augmentation preset for --end-to-end (default: the recipe's)")
    p.add_argument(
        "--workers",
        type=workers_count,
        help="DataLoader workers for --end-to-end: a number or auto (default: the recipe's, auto)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="steps per timed block, --end-to-end (default: one epoch of the data)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if len(args.size) > 2 or min(args.size) < 1:
        raise SegformerError(f"--size takes S or H W (positive), got {' '.join(map(str, args.size))}")
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    common = {"num_classes": args.num_classes, "threads": torch.get_num_threads(), "memory": args.memory,
              "tune": args.tune}  # fmt: skip
    if args.rounds is not None:
        common["rounds"] = args.rounds
    if args.warmup is not None:
        common["warmup"] = args.warmup
    if args.end_to_end:
        if args.mode != "train" or not args.data:
            raise SegformerError("--end-to-end needs --mode train and --data ROOT")
        if len(args.size) != 1:
            raise SegformerError("--end-to-end takes one square --size S")
        report = bench_train_end_to_end(
            args.model, args.data, args.size[0], args.batch_size or 16, recipe=args.config,
            augment=args.augment, workers=args.workers, threads=torch.get_num_threads(), steps=args.steps,
            rounds=args.rounds or 3, warmup=1 if args.warmup is None else args.warmup, tune=args.tune,
        )  # fmt: skip
    elif args.mode == "infer":
        batch = args.batch_size or 1
        report = bench_inference(args.model, size, batch, args.compare, backend=args.backend, **common)
    else:
        batch = args.batch_size or 2
        report = bench_train(args.model, size, batch, args.compare, **common)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0
