"""`segformer export MODEL --format onnx|ce7454|pretrained --out PATH`: ONNX graphs, the CE7454
submission, and the pretrained file (+ model card) the package ships."""

from __future__ import annotations

import argparse

from ..apps.export import CE7454_BUDGET, FORMATS, export_model
from ..errors import SegformerError
from ..inference.onnx import EXPORTERS
from ..inference.quantize import CALIBRATION_IMAGES, MAX_CALIBRATION_IMAGES, MIN_AGREEMENT, QUANTIZE_FORMATS
from . import add_threads_option
from .options import add_inference_options, inference_overrides
from .types import int_between, positive_float, unit_interval

ONNX_OPSET = int_between(7, 23)  # the opsets torch.onnx can write


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX or as a CE7454 submission (solution/{ckpt.pth,requirements.txt,run.py})",
        description="--format onnx writes an ONNX graph (dynamic batch/height/width; logits at the input "
        "size) after checking it with the ONNX checker and against ONNX Runtime at two input sizes; the "
        "inference settings travel in its metadata, so `segformer predict model.onnx ...` works. "
        "--format ce7454 writes OUT/solution/{ckpt.pth, requirements.txt, run.py}: run.py needs only "
        "torch, numpy and Pillow and reproduces `segformer predict`; models with "
        f"{CE7454_BUDGET:,} parameters or more are refused unless --no-budget-check. "
        "--format pretrained writes ONE safetensors file holding the weights, the model config and the "
        "inference settings (what the package ships under a pretrained tag), and its model card "
        "(OUT with .md) filled in from the model directory's record and the run's config.yaml; "
        "the shipped face parser is made with `segformer export RUN/best --format pretrained "
        "--out src/segformer/pretrained/microsegformer-celebamask.safetensors --tta flip+scales --fp16`.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="model directory (e.g. RUN/best), pretrained tag, HF directory or .pth"
    )
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default), ce7454 or pretrained")
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="model.onnx, the folder to hold solution/, or NAME.safetensors (pretrained)",
    )
    add_inference_options(p, what="the model's own")  # baked into the export's settings
    p.add_argument("--exporter", choices=EXPORTERS, default="torchscript", help="ONNX exporter (torch's)")
    p.add_argument("--opset", type=ONNX_OPSET, default=18, help="ONNX opset (default 18)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_FORMATS,
        help="onnx: write a static int8 graph (ONNX Runtime's QDQ quantization), its class ids checked "
        "against the float graph's on the calibration images (the agreement is printed)",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help=f"--quantize: images to calibrate on (the first {MAX_CALIBRATION_IMAGES} by name; crops like "
        f"the model's training images; default {CALIBRATION_IMAGES} synthetic faces)",
    )
    p.add_argument(
        "--min-agreement",
        type=positive_float,
        default=MIN_AGREEMENT,
        metavar="F",
        help=f"--quantize: refuse an int8 graph whose class ids agree with the float graph's on less than "
        f"this share of the calibration pixels (default {MIN_AGREEMENT})",
    )
    p.add_argument(
        "--no-budget-check",
        action="store_true",
        help=f"export a CE7454 package with {CE7454_BUDGET:,} parameters or more (not a valid submission)",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="pretrained: store float16 weights (refused if a check image's masks change by over 0.5%%)",
    )
    p.add_argument(
        "--logit-adjust",
        type=unit_interval,
        metavar="S",
        help="lower each class's logit by S x log(its class weight) (0: no change), the weights the run "
        "trained with (RUN/state.pt), as train.logit_adjust does for runs trained with it (MODEL: RUN/best)",
    )
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = inference_overrides(args)
    if (args.calibration or args.min_agreement != MIN_AGREEMENT) and not args.quantize:
        raise SegformerError("--calibration and --min-agreement go with --quantize int8")
    if args.quantize and args.format != "onnx":
        raise SegformerError(f"--quantize is for --format onnx, not {args.format}")
    if args.format == "onnx":
        options = {"exporter": args.exporter, "opset": args.opset, "check": not args.no_check}
        if args.quantize:
            options.update(
                quantize=args.quantize, calibration=args.calibration, min_agreement=args.min_agreement
            )
    elif args.format == "pretrained":
        options = {"fp16": args.fp16}
    else:
        options = {"budget": None if args.no_budget_check else CE7454_BUDGET}
    if args.logit_adjust:
        options["logit_adjust"] = args.logit_adjust
    result = export_model(args.model, args.out, args.format, **settings, **options)
    if args.format == "onnx":
        checks = ", ".join(f"{k}: {v:.2g}" for k, v in result["max_abs_diff"].items()) or "not checked"
        print(
            f"wrote {result['path']} ({result['bytes'] / 2**20:.1f} MiB, {result['exporter']} exporter, "
            f"opset {result['opset']}); max |logit difference| vs ONNX Runtime: {checks}"
        )
        if "agreement" in result:
            print(
                f"int8: {result['float_bytes'] / 2**20:.1f} MiB in float; class ids agree with the float "
                f"model's on {result['agreement']:.2%} of the pixels of {result['calibration']} "
                f"(--min-agreement {result['min_agreement']:.2%})"
            )
    elif args.format == "pretrained":
        changed = result["fp16_changed"]
        fp16 = "" if changed is None else f"; float16 changes {changed:.3%} of a check image's pixels"
        print(f"wrote {result['file']} ({result['bytes'] / 2**20:.1f} MiB) and {result['card']}{fp16}")
    else:
        print(
            f"wrote {result['dir']}/{{ckpt.pth, requirements.txt, run.py}}: {result['params']:,} parameters"
            + (f" (budget < {result['budget']:,})" if result["budget"] else " (budget not checked)")
        )
    return 0
