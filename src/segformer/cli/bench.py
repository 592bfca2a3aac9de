"""`segformer bench MODEL`: inference or training speed, side by side with a reference implementation."""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Callable
from typing import Any

import torch

from ..bench import BACKENDS, REFERENCES, bench_inference, bench_train, bench_train_end_to_end
from ..errors import SegformerError
from ..models import list_models
from . import add_threads_option
from .types import nonneg_int, positive_int, workers_count

RUNS = {"infer": bench_inference, "train": bench_train, "end to end": bench_train_end_to_end}
TIMING = (  # options whose default depends on the run: (flag, type, parameter, help)
    ("--batch-size", positive_int, "batch", "images per call"),
    ("--rounds", positive_int, "rounds", "timed calls per side, blocks of --steps steps end to end"),
    ("--warmup", nonneg_int, "warmup", "untimed calls per side first"),
)


def _default(fn: Callable[..., Any], param: str) -> Any:
    """The default of the library function's parameter `param` (written once, there)."""
    return inspect.signature(fn).parameters[param].default


def _defaults(param: str) -> str:
    """The default of `param` in each kind of run, e.g. ``1 infer, 2 train, 16 end to end``."""
    return ", ".join(f"{_default(fn, param)} {kind}" for kind, fn in RUNS.items())


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
    p.add_argument("--compare", default="none", metavar="REF",
                   help=f"reference: {', '.join(REFERENCES)} or module:function (default none)")  # fmt: skip
    p.add_argument("--num-classes", type=positive_int, default=None, help="classes (default: the model's)")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="our inference path (default torch)")
    # The library's defaults, which differ by run, are left in force unless given.
    for flag, kind, param, what in TIMING:
        p.add_argument(flag, type=kind, default=None, help=f"{what} (default {_defaults(param)})")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="keep glibc's malloc defaults (see segformer.runtime)")  # fmt: skip
    e2e = p.add_argument_group(
        "end to end",
        "--mode train --end-to-end --data ROOT: the training step fed by the real data pipeline of ROOT (the "
        "loader, workers and augmentation `segformer train` uses) against the bare step, and their ratio",
    )
    e2e.add_argument("--end-to-end", action="store_true", help="time the training step end to end (above)")
    e2e.add_argument("--data", metavar="ROOT", help="dataset root")
    recipe = _default(bench_train_end_to_end, "recipe")
    e2e.add_argument("--config", metavar="NAME|PATH", help=f"recipe (default {recipe})")
    e2e.add_argument("--augment", help="augmentation preset (default: the recipe's)")
    e2e.add_argument(
        "--workers",
        type=workers_count,
        help="DataLoader workers: a number or auto (default: the recipe's, auto)",
    )
    e2e.add_argument(
        "--steps", type=positive_int, help="steps per timed block (default: one epoch of the data)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_threads_option(p)
    p.set_defaults(func=run)


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """``{param: value}`` of the options in `names` (option dest -> parameter) that were given."""
    return {param: getattr(args, dest) for dest, param in names.items() if getattr(args, dest) is not None}


def run(args: argparse.Namespace) -> int:
    if len(args.size) > 2 or min(args.size) < 1:
        raise SegformerError(f"--size takes S or H W (positive), got {' '.join(map(str, args.size))}")
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    given = _given(args, {"batch_size": "batch", "rounds": "rounds", "warmup": "warmup"})
    threads = torch.get_num_threads()
    if args.end_to_end:
        if args.mode != "train" or not args.data:
            raise SegformerError("--end-to-end needs --mode train and --data ROOT")
        if len(args.size) != 1:
            raise SegformerError("--end-to-end takes one square --size S")
        given |= _given(
            args, {"config": "recipe", "augment": "augment", "workers": "workers", "steps": "steps"}
        )
        report = bench_train_end_to_end(args.model, args.data, size, threads=threads, tune=args.tune, **given)
    else:
        given |= {"compare": args.compare, "num_classes": args.num_classes, "threads": threads,
                  "memory": args.memory, "tune": args.tune}  # fmt: skip
        if args.mode == "infer":
            report = bench_inference(args.model, size, backend=args.backend, **given)
        else:
            report = bench_train(args.model, size, **given)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0
