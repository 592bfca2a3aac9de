"""`segformer data synth|check|preview|prepare`: make, verify and look at datasets."""

from __future__ import annotations

import argparse
import json

from ..data.check import check_dataset, fix_dataset
from ..data.labels import list_label_sets
from ..data.prepare import prepare_celebamask
from ..data.preview import preview_dataset
from ..data.synthetic import write_synthetic_dataset
from ..data.transforms import PRESETS
from ..fileio import check_output
from .types import nonneg_int, positive_int, unit_interval

OVERWRITE_HELP = (
    "replace the dataset an earlier run of this command wrote in OUT (its .segformer-manifest.json says "
    "which files); files of anyone else in OUT are never replaced"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="make synthetic faces, check a dataset, preview augmentations, prepare CelebAMask-HQ",
        description="Dataset tools. Datasets use the folder layout ROOT/<split>/images/<stem>.jpg|png + "
        "ROOT/<split>/masks/<stem>.png (single-channel PNGs whose pixel values are class ids).",
    )
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    _add_synth(data_sub)
    _add_check(data_sub)
    _add_preview(data_sub)
    _add_prepare(data_sub)


def _add_synth(data_sub: argparse._SubParsersAction) -> None:
    s = data_sub.add_parser(
        "synth",
        help="write a synthetic face-parsing dataset (CelebAMask-HQ labels)",
        description="Write NUM procedurally generated faces with their 19-class label maps to OUT "
        "(OUT/train and OUT/val in the folder layout, plus OUT/dataset.json).",
    )
    s.add_argument(
        "out",
        metavar="OUT",
        help="output folder (new, or one whose files this command wrote; other files in it are kept)",
    )
    s.add_argument("--num", type=int, default=1000, help="number of images (default 1000)")
    s.add_argument("--size", type=positive_int, default=256, help="image size in pixels (default 256)")
    s.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    s.add_argument(
        "--val-fraction", type=unit_interval, default=0.1, help="fraction written to val/ (default 0.1)"
    )
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.add_argument(
        "--workers", type=positive_int, default=1, help="processes drawing faces (same files for any number)"
    )
    s.set_defaults(func=run_synth)


def _add_check(data_sub: argparse._SubParsersAction) -> None:
    c = data_sub.add_parser(
        "check",
        help="report unreadable files, missing pairs, size mismatches, bad labels, mirrored masks",
        description="Check a folder-layout dataset: unreadable files, images without masks and masks "
        "without images, image/mask size mismatches, label values outside the class set, and masks whose "
        "left/right classes are mirrored. Exits 1 when it finds a problem, 0 when the data is clean.",
    )
    c.add_argument("root", metavar="ROOT", help="dataset folder")
    c.add_argument("--split", default=None, help="check only this split (default: every split)")
    c.add_argument("--label-set", default="celebamask", help=f"one of {', '.join(list_label_sets())}")
    c.add_argument("--json", action="store_true", help="print the full report as JSON")
    c.add_argument(
        "--fix",
        metavar="OUT",
        default=None,
        help="write a corrected copy to OUT: mirrored masks un-mirrored, out-of-range labels set to 255, "
        "unreadable, unpaired and mismatched samples dropped",
    )
    c.add_argument(
        "--overwrite",
        action="store_true",
        help="with --fix: " + OVERWRITE_HELP,
    )
    c.set_defaults(func=run_check)


def _add_preview(data_sub: argparse._SubParsersAction) -> None:
    v = data_sub.add_parser(
        "preview",
        help="write augmented samples (folder layout) and a contact sheet",
        description="Augment NUM samples of ROOT/<split> with PRESET and write them to OUT in the folder "
        "layout (OUT/train/images, OUT/train/masks) with OUT/contact_sheet.png.",
    )
    v.add_argument("root", metavar="ROOT", help="dataset folder")
    v.add_argument("--augment", choices=PRESETS, default="geometric", help="augmentation preset")
    v.add_argument("--num", type=positive_int, default=16, help="number of samples (default 16)")
    v.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    v.add_argument("--split", default="train", help="split to sample (default train)")
    v.add_argument("--size", type=positive_int, default=None, help="output size (default: each image's own)")
    v.add_argument("--label-set", default="celebamask", help=f"one of {', '.join(list_label_sets())}")
    v.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="output folder (new, or one whose files this command wrote; other files in it are kept)",
    )
    v.add_argument(
        "--overwrite",
        action="store_true",
        help=OVERWRITE_HELP,
    )
    v.set_defaults(func=run_preview)


def _add_prepare(data_sub: argparse._SubParsersAction) -> None:
    r = data_sub.add_parser(
        "prepare",
        help="convert raw CelebAMask-HQ (part masks) into the folder layout with the official split",
        description="Merge the CelebAMask-HQ part masks of RAW into label maps (official order), resize "
        "the images to the mask size, and write OUT/{train,val,test} using CelebA's official partition "
        "(CelebA-HQ-to-CelebA-mapping.txt + list_eval_partition.txt in RAW).",
    )
    r.add_argument("raw", metavar="RAW", help="folder holding CelebA-HQ-img and CelebAMask-HQ-mask-anno")
    r.add_argument(
        "out",
        metavar="OUT",
        help="output folder (new, or one whose files this command wrote; other files in it are kept)",
    )
    r.add_argument(
        "--size", type=positive_int, default=512, help="output size (default 512, the masks' size)"
    )
    r.add_argument("--limit", type=positive_int, default=None, help="convert only the first N images")
    r.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    r.set_defaults(func=run_prepare)


def run_synth(args: argparse.Namespace) -> int:
    out = write_synthetic_dataset(
        args.out,
        args.num,
        args.size,
        args.seed,
        args.val_fraction,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    print(f"wrote {args.num} synthetic faces ({args.size}x{args.size}) to {out}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    if args.fix:
        check_output(
            args.fix, "data check", [args.root], args.overwrite, what="a fixed dataset"
        )  # before the scan
    report = check_dataset(args.root, args.split, args.label_set)
    done = None
    if args.fix:
        done = fix_dataset(args.root, args.fix, args.split, args.label_set, report, args.overwrite)
    if args.json:
        out = report.to_dict()
        if done is not None:
            out["fix"] = {"out": args.fix, **done}
        print(json.dumps(out, indent=2))
    else:
        print(report.format())
        if done is not None:
            print(f"wrote fixed copy to {args.fix}: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    return 0 if report.ok else 1


def run_preview(args: argparse.Namespace) -> int:
    out = preview_dataset(
        args.root,
        args.out,
        args.augment,
        args.num,
        args.seed,
        args.split,
        args.size,
        args.label_set,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.num} '{args.augment}' samples to {out} (contact sheet: {out / 'contact_sheet.png'})")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    counts = prepare_celebamask(args.raw, args.out, args.size, args.limit, overwrite=args.overwrite)
    rule = counts.pop("split_rule")
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" ({rule})")
    return 0
