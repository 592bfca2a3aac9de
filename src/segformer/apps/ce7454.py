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
import contextlib
import pickle
import signal
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
from ..fileio import OutputFolder
from ..inference.ops import class_ids, flip_permutation, predict_batch
from ..inference.settings import InferenceSettings
from ..models.registry import build_model


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, InferenceSettings]:
    """The model of a submission checkpoint, in eval mode, and its inference settings. Anything wrong
    with the file (missing, not a checkpoint, objects that are not plain data) is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise SegformerError(
            f"{path}: {'is a folder, not' if path.is_dir() else 'not found; expected'} ckpt.pth"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower():  # a class or function to import: refused by weights_only
            raise SegformerError(
                f"{path}: refused: it holds objects other than tensors and plain data "
                "(torch.load weights_only)"
            ) from None
        raise SegformerError(f"{path}: not a checkpoint (not a file torch.save wrote)") from None
    except (RuntimeError, ValueError, EOFError, OSError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SegformerError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "config", "meta"} <= set(ckpt):
        raise SegformerError(f"{path}: not a submission checkpoint (expected state_dict, config and meta)")
    try:
        # The models only read attributes of their config: the plain dict stands in for a ModelConfig.
        model = build_model(SimpleNamespace(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, KeyError, AttributeError, ValueError, RuntimeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SegformerError(f"{path}: its weights do not fit its model config ({reason})") from None
    settings = InferenceSettings.from_dict(ckpt["meta"], str(path))
    if settings.label_set is None:
        raise SegformerError(f"{path}: the inference settings name no label set")
    return model.to(device).eval(), settings


def check_device(name: str) -> str:
    """`name` if it is a device this machine has (``cpu``, ``cuda``, ``cuda:N``, ``mps``), else a
    one-line error saying what there is."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SegformerError(f"--device {name}: unknown device; use cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SegformerError(f"--device {name}: CUDA is not available on this machine; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SegformerError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise SegformerError(f"--device {name}: MPS is not available on this machine; use cpu")
    elif device.type != "cpu":
        raise SegformerError(f"--device {name}: unsupported device; use cpu or cuda")
    return name


def predict(
    model: nn.Module, settings: InferenceSettings, image: np.ndarray, device: str = "cpu"
) -> np.ndarray:
    """(H, W) uint8 class ids of an (H, W, 3) uint8 RGB image (what `Predictor.predict` computes)."""
    classes: LabelSet = settings.label_set  # type: ignore[assignment]  (checked by load_checkpoint)
    flip_perm = flip_permutation(classes.flip_pairs, classes.num_classes)
    with torch.inference_mode():
        probs = predict_batch(model, [image], settings, flip_perm, device)
    return class_ids(probs)[0].to(torch.uint8).cpu().numpy()


def save_label_png(path: str | Path, mask: np.ndarray, label_set: LabelSet, out: OutputFolder) -> None:
    """A mode-P PNG: pixel value = class id (what a scorer reads), palette = the label set's colours;
    written atomically through the output policy `out`."""
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "P")
    img.putpalette(label_set.palette_bytes())
    with out.atomic_file(path) as f:
        img.save(f, format="PNG")


def _say(text: str) -> None:
    """A line on stderr, whatever state stderr is in (closed, a broken pipe): the exit code still tells."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 written, 1 an error (one line on stderr), 2 a usage error, 130 interrupted.

    The output follows segformer's output policy (`segformer.fileio.OutputFolder`): the input and the
    weights are never written, an existing file is replaced only if an earlier run.py wrote it (the
    folder's ``.segformer-manifest.json`` says so), a folder never."""
    parser = argparse.ArgumentParser(description="Face parsing: write the label map of one image.")
    parser.add_argument("--input", required=True, help="input image (jpg/png/...)")
    parser.add_argument(
        "--output",
        required=True,
        help="output PNG: pixel value = class id (never the input; an existing file only if run.py wrote it)",
    )
    parser.add_argument("--weights", default=str(Path(__file__).with_name("ckpt.pth")), help="ckpt.pth")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = parser.parse_args(argv)
    if argv is None:
        with contextlib.suppress(ValueError):  # from here on Ctrl-C raises KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        output = OutputFolder.for_file(
            args.output, "run.py", [args.input, args.weights], overwrite=True, option="--output"
        )
        with output as out:
            device = check_device(args.device)
            model, settings = load_checkpoint(args.weights, device)
            mask = predict(model, settings, load_image(args.input), device)
            save_label_png(args.output, mask, settings.label_set, out)
    except (SegformerError, OSError) as err:
        text = str(err) if isinstance(err, SegformerError) else f"{err.filename or ''}: {err.strerror or err}"
        _say(f"error: {(text.strip().splitlines() or [type(err).__name__])[0]}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as err:  # a failure nobody anticipated: still one line
        _say(f"error: unexpected {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
