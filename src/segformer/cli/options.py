"""The inference options of the commands that run a model (predict, eval, export, attention, serve, info):
one definition of each flag, and `inference_overrides`, which turns the parsed flags into the keyword
overrides that `Predictor`, `evaluate_model` and `export_model` take (`InferenceSettings` fields plus
the runtime options ``device``, ``batch_size``, ``backend`` and ``faces``).

Unset flags leave the model's own settings in force. Renamed flags keep their old spelling as an alias
until segformer 1.0: ``--img-size`` and ``--size`` (attention, info) are ``--image-size``, ``--mode`` is
``--eval-mode`` (the names of the `InferenceSettings` fields).

`config_from_args` builds a command's config dataclass (serve, distill) from the flags named as its fields.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from ..config import EVAL_MODES, TTA_MODES
from ..inference.settings import BACKENDS, split_overrides
from . import add_postprocess_options
from .types import positive_floats, positive_int

SETTINGS = ("tta", "scales", "image_size", "eval_mode", "label_set", "postprocess")
"""The settings flags a command may take (``postprocess`` comes with ``--min-area``)."""
RUNTIME = ("batch_size", "device", "backend", "faces")
"""The runtime flags a command may take (``faces`` is ``--whole-image``)."""
_Config = TypeVar("_Config")


def add_option(parser: argparse.ArgumentParser, flag: str, old: Sequence[str] = (), **kwargs: Any) -> None:
    """`flag` and, as options of their own (so that an error names the spelling given), each old
    spelling in `old`: same destination and type, no default of their own, a help line that says so."""
    parser.add_argument(flag, **kwargs)
    for spelling in old:
        alias = {k: v for k, v in kwargs.items() if k not in ("default", "help")}
        note = f"old spelling of {flag}, kept as an alias until 1.0"
        parser.add_argument(spelling, default=argparse.SUPPRESS, help=note, **alias)


def add_image_size_option(
    parser: argparse.ArgumentParser,
    help: str = "working resolution (default: the model's training size, else 512)",
    old: Sequence[str] = ("--img-size",),
    default: int | None = None,
) -> None:
    """``--image-size S`` (and its old spellings `old`) into ``args.image_size``."""
    kwargs = {"dest": "image_size", "type": positive_int, "metavar": "S"}
    add_option(parser, "--image-size", old, default=default, help=help, **kwargs)


def add_inference_options(
    parser: argparse.ArgumentParser,
    settings: Sequence[str] = SETTINGS,
    runtime: Sequence[str] = (),
    *,
    batch_size: int | None = None,
    what: str = "the model's",
) -> None:
    """Add the flags of the `settings` fields and `runtime` options (names from `SETTINGS` / `RUNTIME`)
    to `parser`; `batch_size` is ``--batch-size``'s default (None: the Predictor's: 1 on a CPU, 8 on
    a GPU); `what` says in the help where unset settings come from."""
    unknown = sorted(set(settings) - set(SETTINGS)) + sorted(set(runtime) - set(RUNTIME))
    if unknown:
        raise ValueError(f"unknown inference option(s): {', '.join(unknown)}")
    if "tta" in settings:
        parser.add_argument(
            "--tta", choices=TTA_MODES, help=f"test-time augmentation (default: {what}, else none)"
        )
    if "scales" in settings:
        parser.add_argument(
            "--scales", type=positive_floats, help="TTA scales, e.g. 0.75,1,1.25 (default 0.75,1,1.25,1.5)"
        )
    if "image_size" in settings:
        add_image_size_option(parser, f"working resolution (default: {what} training size, else 512)")
    if "eval_mode" in settings:
        add_option(
            parser,
            "--eval-mode",
            ["--mode"],
            dest="eval_mode",
            choices=EVAL_MODES,
            help="resize to the working size (default) or slide working-size windows over full resolution",
        )
    if "label_set" in settings:
        parser.add_argument(
            "--label-set", help="palette / class names (default: the model's, else by class count)"
        )
    if "postprocess" in settings:
        add_postprocess_options(parser)
    _add_runtime_options(parser, runtime, batch_size)


def _add_runtime_options(
    parser: argparse.ArgumentParser, runtime: Sequence[str], batch_size: int | None
) -> None:
    if "batch_size" in runtime:
        default = f"default {batch_size}" if batch_size else "default 1 on a CPU, 8 on CUDA"
        parser.add_argument(
            "--batch-size", type=positive_int, default=batch_size, help=f"images per forward pass ({default})"
        )
    if "device" in runtime:
        parser.add_argument(
            "--device",
            default="cpu",
            choices=["cpu", "cuda", "auto"],
            help="where to run (default cpu; auto: CUDA when present)",
        )
    if "backend" in runtime:
        parser.add_argument(
            "--backend",
            choices=BACKENDS,
            default="auto",
            help="what runs the model: auto (default) uses ONNX Runtime on a CPU where onnxruntime is "
            "installed (`pip install segformer[onnx]`), PyTorch otherwise; torch or onnxruntime force "
            "one (.onnx models always run on ONNX Runtime)",
        )
    if "faces" in runtime:
        parser.add_argument(
            "--whole-image",
            action="store_true",
            help="face label sets: parse each image as one aligned face crop (no face localisation)",
        )


def inference_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The inference flags of `args` that were given, as keyword overrides (`InferenceSettings` field
    names, plus ``device``, ``batch_size``, ``backend`` and ``faces``); flags a command does not have
    are left out."""
    given = {name: getattr(args, name, None) for name in (*SETTINGS, "min_area", *RUNTIME[:3])}
    given["faces"] = False if getattr(args, "whole_image", False) else None
    changes, runtime = split_overrides(given, RUNTIME, "command line")
    return {**changes, **runtime}


def config_from_args(cls: type[_Config], args: argparse.Namespace, **given: Any) -> _Config:
    """The dataclass `cls` from the flags of `args` named as its fields (a field without a flag keeps its
    default), then `given` on top: the fields a command computes or names differently."""
    found = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**found, **given})


__all__ = [
    "RUNTIME",
    "SETTINGS",
    "add_image_size_option",
    "add_inference_options",
    "config_from_args",
    "inference_overrides",
]
