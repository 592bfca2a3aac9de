"""`segformer predict [MODEL] INPUT... --out DIR`: label maps, overlays, probabilities, masks, cut-outs."""

from __future__ import annotations

import argparse
import difflib
import sys
from datetime import timedelta
from pathlib import Path

from .. import distributed
from ..checkpoint import CONFIG_FILE, is_hub_id
from ..data.io import IMAGE_EXTENSIONS
from ..devices import resolve_device
from ..errors import SegformerError
from ..faces import VIDEO_TTA
from ..inference.files import predict_files
from ..inference.predictor import Predictor
from ..pretrained import DEFAULT_TAG, is_tag, list_pretrained
from . import add_threads_option
from .options import RUNTIME, SETTINGS, add_inference_options, inference_overrides
from .types import int_between, nonneg_int, unit_interval


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        usage="segformer predict [MODEL] INPUT [INPUT ...] --out DIR [options]",
        help="segment images, folders, globs and videos: label PNGs, overlays, probabilities, part masks",
        description="Segment every INPUT (image files, folders of images, glob patterns such as "
        "'photos/**/*.jpg', video files) with one MODEL (a model directory, an HF directory, an NVlabs "
        f".pth, an .onnx file from `segformer export`, a Hub id org/name, or a pretrained tag such as "
        f"{DEFAULT_TAG}) and write DIR/<stem>.png: a palette PNG whose pixel values are class ids. A video "
        "writes DIR/<stem>/<frame:06d>.png. Unreadable inputs are reported and skipped; the exit code is 1 "
        "if any input or output failed. A face parser (a face label set) finds every face in a photo, "
        "parses each at the framing it was trained on and pastes the labels back (the rest is "
        "background); in a video it tracks the faces and smooths their labels. MODEL may be left out: "
        "when the first argument is not a pretrained tag, a Hub id, a model file (.pth/.pt/.bin/.ckpt/"
        ".safetensors/.onnx) or a folder holding config.json or weights, every argument is an INPUT and "
        f"the shipped {DEFAULT_TAG} is used; --model names it explicitly. A model that fails to load is an "
        "error (never replaced by another), and so is a second model among the inputs. Files in DIR are "
        "replaced only when an earlier predict wrote them (DIR/.segformer-manifest.json says so); an "
        "input is never written over; --skip-existing resumes an interrupted run.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="INPUT",
        help="[MODEL] then the inputs: image/video files, folders or glob patterns (MODEL: a model "
        "directory such as RUN/best, pretrained tag, .pth, .safetensors, .onnx or Hub id org/name; "
        f"default {DEFAULT_TAG})",
    )
    p.add_argument(
        "--model",
        help="the model, named explicitly: every positional argument is then an INPUT",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write colour overlays to DIR/overlays/")
    p.add_argument("--probs", action="store_true", help="also write (K, H, W) float16 DIR/probs/<stem>.npy")
    add_inference_options(p, SETTINGS, RUNTIME)
    p.add_argument(
        "--faces-json", action="store_true", help="faces: write the boxes found to DIR/faces/<stem>.json"
    )
    p.add_argument(
        "--instances",
        action="store_true",
        help="faces: write DIR/instances/<stem>.png (0 outside faces, i + 1 on face i)",
    )
    p.add_argument(
        "--smoothing",
        type=unit_interval,
        default=0.7,
        help="faces in videos: weight of the past frames in the moving average of the labels, in [0, 1) "
        "(0: none; default 0.7). The average stands in for test-time augmentation: each frame's faces are "
        "parsed with one pass unless --tta is given",
    )
    p.add_argument(
        "--mp4", action="store_true", help="videos: also write the overlays as DIR/overlays/<stem>.mp4"
    )
    _add_part_options(p)
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="resume an interrupted run: skip the inputs whose every output an earlier predict into DIR "
        "wrote (its manifest says so; the options are assumed unchanged)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="read, predict and write one after another (default: images are decoded and outputs "
        "written in background threads while the model runs; the files are the same)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_option(p)
    p.set_defaults(func=run)


def _add_part_options(p: argparse.ArgumentParser) -> None:
    """--parts / --cutout and the edits of their masks (`segformer.inference.parts`)."""
    p.add_argument(
        "--parts",
        metavar="CLASSES",
        help="also write a mask per named class, e.g. hair,skin: DIR/parts/<stem>/<class>.png, 255 inside "
        "the class and 0 outside (class names: the model's label set, see `segformer info MODEL`)",
    )
    p.add_argument(
        "--cutout",
        action="store_true",
        help="also write DIR/cutout/<stem>.png: the image as RGBA, opaque on every class but the background",
    )
    p.add_argument(
        "--soft",
        action="store_true",
        help="--parts / --cutout: the class probabilities as 0-255 instead of hard 0/255 edges",
    )
    p.add_argument(
        "--grow",
        type=int_between(-1000, 1000),
        default=0,
        metavar="N",
        help="--parts / --cutout: dilate the masks by N pixels with a disk (negative: erode; default 0)",
    )
    p.add_argument(
        "--feather",
        type=nonneg_int,
        default=0,
        metavar="N",
        help="--parts / --cutout: soften the edges into ramps about N pixels wide (default 0: hard)",
    )


MODEL_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".onnx")
RUN_FOLDERS = ("best", "last")


def model_kind(arg: str) -> str | None:
    """What `arg` is when it names a model -- a pretrained tag, a Hub id (``org/name``, not a local
    path), a model file, a folder holding a model (``config.json`` or weights) or a training run --
    else None (an input)."""
    path = Path(arg)
    if is_tag(arg):
        return "a pretrained tag"
    if is_hub_id(arg):
        return "a Hugging Face Hub id"
    if path.suffix.lower() in MODEL_SUFFIXES and not path.is_dir():
        return "a model file"
    if path.is_dir():
        if any((path / name).is_dir() for name in RUN_FOLDERS):
            return "a training run"
        if (path / CONFIG_FILE).is_file() or any(p.suffix.lower() in MODEL_SUFFIXES for p in path.iterdir()):
            return "a model folder"
    return None


def is_model_arg(arg: str) -> bool:
    """Whether a positional argument names a model rather than an input (`model_kind`)."""
    return model_kind(arg) is not None


def _misspelt_model(arg: str) -> SegformerError | None:
    """The error for a first argument that can only be a model name that names nothing: not a path,
    not a glob, not a media file name."""
    from ..inference.stream import VIDEO_EXTENSIONS

    path = Path(arg)
    media = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    if path.exists() or path.is_symlink() or any(c in arg for c in "*?[") or path.suffix.lower() in media:
        return None
    close = difflib.get_close_matches(arg, list_pretrained(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f" (pretrained: {', '.join(list_pretrained())})"
    return SegformerError(
        f"{arg}: no such file or folder, and not a pretrained tag or Hub id (org/name){hint}"
    )


def split_model_and_inputs(paths: list[str], model: str | None = None) -> tuple[str, list[str]]:
    """(MODEL, INPUTs) of the positional arguments. With `model` (``--model``) every argument is an
    input; else the first names the model when it looks like one (`model_kind`), and the shipped
    default is used when it is an input. Strict: a first argument that can only be a model's name but
    names none, or a second model among the inputs, is an error -- never another model."""
    if model is None and is_model_arg(paths[0]):
        model, paths = paths[0], paths[1:]
        if not paths:
            raise SegformerError(f"predict: no INPUT given after the model {model}")
    elif model is None:
        error = _misspelt_model(paths[0])
        if error is not None:
            raise error
    for arg in paths:
        kind = model_kind(arg) if not is_hub_id(arg) else None  # a missing org/name input: reported missing
        if kind is not None:
            raise SegformerError(
                f"{arg}: is {kind}, but predict runs one model ({model or DEFAULT_TAG}) over its inputs; "
                "predict with each model into its own --out"
            )
    return model or DEFAULT_TAG, list(paths)


def run(args: argparse.Namespace) -> int:
    args.model, args.inputs = split_model_and_inputs(args.paths, args.model)
    overrides = inference_overrides(args)
    if distributed.env_world_size() > 1:  # torchrun: each process predicts its share of the inputs
        device = resolve_device(overrides.get("device") or "cpu")
        overrides["device"] = distributed.init(device.type, timeout=timedelta(days=7))
    try:
        return _predict(args, overrides)
    finally:
        distributed.cleanup()


def _predict(args: argparse.Namespace, overrides: dict) -> int:
    predictor = Predictor(args.model, **overrides)
    report = predict_files(
        predictor,
        args.inputs,
        args.out,
        overlay_images=args.overlay,
        probs=args.probs,
        progress=not args.quiet,
        faces_json=args.faces_json,
        instances=args.instances,
        smoothing=args.smoothing,
        video_tta=args.tta or VIDEO_TTA,  # a video's faces: one pass per frame unless --tta says otherwise
        mp4=args.mp4,
        parts=args.parts or (),
        cutout=args.cutout,
        soft=args.soft,
        grow=args.grow,
        feather=args.feather,
        skip_existing=args.skip_existing,
        overlap=not args.sequential,
    )
    if distributed.is_main():  # one summary, of every process's share
        print(report.summary(), file=sys.stderr if report.failed else sys.stdout)
    return 1 if report.failed else 0
