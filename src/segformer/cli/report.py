"""`segformer report RUN_OR_SUITE... --out DIR`: an offline HTML (and Markdown) page of runs and suites."""

from __future__ import annotations

import argparse

from . import add_threads_option
from .types import nonneg_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="gather runs and experiment suites into an offline HTML + Markdown report",
        description="Write OUT/index.html and OUT/report.md with the tables, curves, per-class scores and "
        "sample predictions of each RUN (a `segformer train` folder) or SUITE (a folder of `segformer "
        "experiment`; an experiment folder holding several suites includes them all). Images are copied "
        "into OUT/assets/, so the folder opens offline and can be moved as a whole.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="RUN_OR_SUITE", help="run folders, suite folders or experiment folders"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out that is not a report folder (its files are kept)",
    )
    p.add_argument("--title", default="segformer report", help="page title (default: segformer report)")
    p.add_argument(
        "--samples",
        type=nonneg_int,
        default=4,
        help="validation images in each run's prediction figure (0: none)",
    )
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.report import build_report

    path = build_report(args.inputs, args.out, args.title, args.samples, overwrite=args.overwrite)
    print(f"report: {path}  (and {path.with_name('report.md')})")
    return 0
