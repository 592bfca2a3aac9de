"""The CE7454 submission's entry point: ``run.py --input x.jpg --output y.png --weights ckpt.pth``.

`segformer export --format ce7454` turns this module into a standalone ``solution/run.py``: it copies
these functions, and every definition of the package they use (the model, `predict_batch`,
`load_image`, ...), into one file that needs only torch, numpy and Pillow (`export.standalone_source`).
The code that runs at submission is therefore the code that `segformer predict` runs, and the masks
are the same. Here, in the package, it runs as ``python -m segformer.ce7454``.

``ckpt.pth`` is ``{"state_dict": ..., "config": ModelConfig as a dict, "meta": Predictor.settings()}``,
plain types only, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data.io import load_image
from .data.labels import LabelSet
from .errors import SegformerError
from .inference import class_ids, flip_permutation, predict_batch
from .models.segformer import SegFormer
from .models.unet import UNet

ARCHS = {"segformer": SegFormer, "unet": UNet}  # ModelConfig.arch -> model class


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a submission checkpoint, in eval mode, and its inference settings."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # The models only read attributes of their config: the plain dict stands in for a ModelConfig.
    config = SimpleNamespace(**ckpt["config"])
    model = ARCHS[config.arch](config)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt["meta"]


def predict(model: nn.Module, meta: dict[str, Any], image: np.ndarray, device: str = "cpu") -> np.ndarray:
    """(H, W) uint8 class ids of an (H, W, 3) uint8 RGB image (what `Predictor.predict` computes)."""
    classes = meta["label_set"]
    flip_perm = flip_permutation(classes["flip_pairs"], len(classes["class_names"]))
    with torch.inference_mode():
        probs = predict_batch(
            model,
            [image],
            meta["image_size"],
            mean=meta["mean"],
            std=meta["std"],
            mode=meta["eval_mode"],
            tta=meta["tta"],
            flip_perm=flip_perm,
            scales=meta["scales"],
            device=device,
        )
    return class_ids(probs)[0].to(torch.uint8).cpu().numpy()


def save_label_png(path: str | Path, mask: np.ndarray, meta: dict[str, Any]) -> None:
    """A mode-P PNG: pixel value = class id (what a scorer reads), palette = the label set's colours."""
    classes = meta["label_set"]
    label_set = LabelSet(
        name=classes["name"],
        class_names=tuple(classes["class_names"]),
        palette=tuple(tuple(c) for c in classes["palette"]),
        flip_pairs=tuple(tuple(p) for p in classes["flip_pairs"]),
    )
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "P")
    img.putpalette(label_set.palette_bytes())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Face parsing: write the label map of one image.")
    parser.add_argument("--input", required=True, help="input image (jpg/png/...)")
    parser.add_argument("--output", required=True, help="output PNG: pixel value = class id")
    parser.add_argument("--weights", default=str(Path(__file__).with_name("ckpt.pth")), help="ckpt.pth")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    try:
        model, meta = load_checkpoint(args.weights, args.device)
        mask = predict(model, meta, load_image(args.input), args.device)
    except (SegformerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    save_label_png(args.output, mask, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
