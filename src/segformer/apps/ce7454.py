"""The CE7454 submission's entry point: ``run.py --input x.jpg --output y.png --weights ckpt.pth``.

`segformer export --format ce7454` turns this module into a standalone ``solution/run.py``: it copies
these functions, and every definition of the package they use (the model, the settings,
`predict_batch`, `load_image`, ...), into one file that needs only torch, numpy and Pillow
(`segformer.apps.bundle.standalone_source`).
The code that runs at submission is therefore the code that `segformer predict` runs, and the masks
are the same. Here, in the package, it runs as ``python -m segformer.apps.ce7454``.

``ckpt.pth`` is ``{"state_dict": ..., "config": ModelConfig as a dict, "meta": InferenceSettings as a
dict}``, plain types only, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.io import load_image
from ..data.labels import LabelSet
from ..errors import SegformerError
from ..inference.ops import class_ids, flip_permutation, predict_batch
from ..inference.settings import InferenceSettings
from ..models.registry import build_model


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, InferenceSettings]:
    """The model of a submission checkpoint, in eval mode, and its inference settings."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # The models only read attributes of their config: the plain dict stands in for a ModelConfig.
    config = SimpleNamespace(**ckpt["config"])
    model = build_model(config)
    model.load_state_dict(ckpt["state_dict"])
    settings = InferenceSettings.from_dict(ckpt["meta"], str(path))
    if settings.label_set is None:
        raise SegformerError(f"{path}: the inference settings name no label set")
    return model.to(device).eval(), settings


def predict(
    model: nn.Module, settings: InferenceSettings, image: np.ndarray, device: str = "cpu"
) -> np.ndarray:
    """(H, W) uint8 class ids of an (H, W, 3) uint8 RGB image (what `Predictor.predict` computes)."""
    classes: LabelSet = settings.label_set  # type: ignore[assignment]  (checked by load_checkpoint)
    flip_perm = flip_permutation(classes.flip_pairs, classes.num_classes)
    with torch.inference_mode():
        probs = predict_batch(model, [image], settings, flip_perm, device)
    return class_ids(probs)[0].to(torch.uint8).cpu().numpy()


def save_label_png(path: str | Path, mask: np.ndarray, label_set: LabelSet) -> None:
    """A mode-P PNG: pixel value = class id (what a scorer reads), palette = the label set's colours."""
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
        model, settings = load_checkpoint(args.weights, args.device)
        mask = predict(model, settings, load_image(args.input), args.device)
    except (SegformerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    save_label_png(args.output, mask, settings.label_set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
