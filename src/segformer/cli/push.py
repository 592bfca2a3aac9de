"""`segformer push MODEL org/name`: upload a model directory and its card to the Hugging Face Hub."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a model with its card to a Hugging Face Hub repository",
        description="Upload MODEL (a model directory, pretrained tag, HF directory, .pth or Hub id) to "
        "the model repository REPO (org/name, created if missing) as a segformer model directory "
        "(config.json + model.safetensors) or, with --format hf, a transformers SegFormer directory, with "
        "its model card README.md: the Hub's metadata (library, task, licence, datasets, scores and the "
        "command that measured them) over the model's own card, or one written from its record. Then "
        '`segformer.load("org/name")` and every command load it by name. Log in first (`hf auth login` '
        "or HF_TOKEN).",
    )
    p.add_argument("model", metavar="MODEL", help="model directory (e.g. RUN/best), pretrained tag, ...")
    p.add_argument("repo", metavar="REPO", help="Hub model repository, org/name")
    p.add_argument(
        "--format",
        choices=("native", "hf"),
        default="native",
        help="native (default): what segformer.save writes; hf: a transformers SegFormer directory",
    )
    p.add_argument(
        "--revision", metavar="BRANCH", help="branch to commit to (created if missing; default main)"
    )
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--message", metavar="TEXT", help="commit message")
    p.add_argument(
        "--license",
        metavar="ID",
        help="the card's licence, a Hub licence id such as apache-2.0 (default: the training data's terms "
        "where known: CelebAMask-HQ models are non-commercial)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.push import push_model

    result = push_model(
        args.model,
        args.repo,
        format=args.format,
        private=args.private or None,
        revision=args.revision,
        message=args.message,
        licence=args.license,
    )
    print(f"pushed {', '.join(result['files'])} to {result['repo_id']}: {result['url']}")
    return 0
