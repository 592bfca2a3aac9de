"""`segformer predict [MODEL] INPUT... --out DIR`: label maps, overlays and probabilities of images/videos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import CONFIG_FILE, is_hub_id
from ..config import EVAL_MODES, TTA_MODES
from ..errors import SegformerError
from ..inference.files import predict_files
from ..inference.predictor import BACKENDS, Predictor
from ..pretrained import DEFAULT_TAG, is_tag
from . import add_postprocess_options, add_threads_option
from .types import int_between, nonneg_int, positive_floats, positive_int, unit_interval


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images, folders, globs and videos: label PNGs, overlays, probabilities",
        description="Segment every INPUT (image files, folders of images, glob patterns such as "
        "'photos/**/*.jpg', video files) with MODEL (a model directory, an HF directory, an NVlabs .pth, "
        f"an .onnx file from `segformer export`, or a pretrained tag such as {DEFAULT_TAG}) and write "
        "DIR/<stem>.png: a palette PNG whose pixel values are class ids. A video writes "
        "DIR/<stem>/<frame:06d>.png. Unreadable inputs are reported and skipped; the exit code is 1 if "
        "any input failed. A face parser (a face label set) finds every face in a photo, parses each at "
        "the framing it was trained on and pastes the labels back (the rest is background); in a video "
        "it tracks the faces and smooths their labels. MODEL may be left out: when the first argument is "
        "not a pretrained tag, a folder holding config.json or a .pth/.pt/.bin/.safetensors/.onnx file, "
        f"every argument is an INPUT and the shipped {DEFAULT_TAG} is used.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[MODEL] INPUT",
        help="the model (model directory such as RUN/best, pretrained tag, .pth, .safetensors, .onnx or "
        f"Hub id org/name; default {DEFAULT_TAG}), then image/video files, folders or glob patterns",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write colour overlays to DIR/overlays/")
    p.add_argument("--probs", action="store_true", help="also write (K, H, W) float16 DIR/probs/<stem>.npy")
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: none, or the export's)")
    p.add_argument(
        "--scales", type=positive_floats, help="TTA scales, e.g. 0.75,1,1.25 (default 0.75,1,1.25,1.5)"
    )
    p.add_argument(
        "--img-size", type=positive_int, help="working resolution (default: the training size, else 512)"
    )
    p.add_argument(
        "--mode", choices=EVAL_MODES, help="resize to the working size (default) or sliding windows"
    )
    p.add_argument("--label-set", help="palette / class names (default: the model's, else by class count)")
    add_postprocess_options(p)
    p.add_argument(
        "--batch-size", type=positive_int, help="images per forward pass (default 1 on CPU, 8 on CUDA)"
    )
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to run (default cpu)"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="run the model with PyTorch (default) or ONNX Runtime (exported in memory; .onnx models "
        "always use ONNX Runtime; needs `pip install segformer[onnx]`)",
    )
    p.add_argument(
        "--whole-image",
        action="store_true",
        help="face label sets: parse each image as one aligned face crop (no face localisation)",
    )
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
        "(0: none; default 0.7)",
    )
    p.add_argument(
        "--mp4", action="store_true", help="videos: also write the overlays as DIR/overlays/<stem>.mp4"
    )
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_option(p)
    p.set_defaults(func=run)


MODEL_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".onnx")


def is_model_arg(arg: str) -> bool:
    """Whether a first positional argument names a model rather than an input: a pretrained tag, a
    Hub id (``org/name``, not a local path), a model file, or a folder that holds a model
    (``config.json``) or is a run (``best/``, ``last/``)."""
    path = Path(arg)
    if is_tag(arg) or is_hub_id(arg) or (path.suffix.lower() in MODEL_SUFFIXES and not path.is_dir()):
        return True
    return path.is_dir() and any((path / name).exists() for name in (CONFIG_FILE, "best", "last"))


def split_model_and_inputs(paths: list[str]) -> tuple[str, list[str]]:
    """(MODEL, INPUTs) of the positional arguments: the first names the model when `is_model_arg`,
    else the default tag is used and all are inputs."""
    if is_model_arg(paths[0]):
        if len(paths) == 1:
            raise SegformerError(f"predict: no INPUT given after the model {paths[0]}")
        return paths[0], paths[1:]
    return DEFAULT_TAG, list(paths)


def run(args: argparse.Namespace) -> int:
    args.model, args.inputs = split_model_and_inputs(args.paths)
    predictor = Predictor(
        args.model,
        device=args.device,
        image_size=args.img_size,
        mode=args.mode,
        tta=args.tta,
        scales=args.scales,
        label_set=args.label_set,
        postprocess=args.postprocess,
        min_area=args.min_area,
        batch_size=args.batch_size,
        backend=args.backend,
        faces=False if args.whole_image else None,
    )
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
        mp4=args.mp4,
        parts=args.parts or (),
        cutout=args.cutout,
        soft=args.soft,
        grow=args.grow,
        feather=args.feather,
    )
    rate = f" in {report.seconds:.1f} s ({report.written / max(report.seconds, 1e-9):.2f} images/s)"
    failed = f"; {len(report.failed)} input(s) failed (listed above)" if report.failed else ""
    print(
        f"wrote {report.written} label map(s) to {report.out}{rate}{failed}",
        file=sys.stderr if failed else sys.stdout,
    )
    return 1 if report.failed else 0
