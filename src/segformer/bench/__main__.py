"""``python -m segformer.bench ARGS_JSON``: one step in a fresh process, printing its peak-memory growth
(the child of `segformer.bench.memory.peak_memory_mb`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from torch import Tensor

from ..engine.losses import SegmentationLoss
from ..errors import SegformerError
from .inference import ours_inference
from .memory import peak_rss_kb, reset_peak_rss_kb
from .references import comparable_model, load_reference
from .report import process_settings
from .training import train_step


def memory_child(args: dict[str, Any]) -> dict[str, float]:
    process_settings(args["threads"], args["tune"])
    spec = args["spec"]
    name, num_classes, compare = spec["name"], int(spec["num_classes"]), spec["compare"]
    model = comparable_model(name, num_classes, compare, spec["overrides"])
    h, w = args["size"]
    x = torch.randn(args["batch"], model.config.in_channels, h, w)
    train = args["mode"] == "train"
    if args["side"] == "reference":
        factory = load_reference(compare)
        if factory is None:
            raise SegformerError("no reference to measure (compare is 'none')")
        ref = factory(model)
        del model
        module, forward, loss = ref.module, ref.forward, ref.loss
    else:
        module = model
        forward = model if train else ours_inference(model, spec.get("backend", "torch"))
        criterion = SegmentationLoss("ce")

        def loss(x: Tensor, y: Tensor) -> Tensor:
            return criterion(model(x), y)

    if train:
        y = torch.randint(0, num_classes, (x.shape[0], h, w))
        step = train_step(module, lambda: loss(x, y))
    else:
        module.eval()

        def step() -> None:
            with torch.inference_mode():
                forward(x)

    before = reset_peak_rss_kb()
    step()
    return {"peak_mb": (peak_rss_kb() - before) / 1024}


if __name__ == "__main__":
    print(json.dumps(memory_child(json.loads(sys.argv[1]))))
