"""Evaluation: predictions at each mask's resolution, scored from confusion matrices."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import distributed
from ..data.datasets import SegmentationDataset
from ..data.labels import get_label_set
from ..devices import resolve_device
from ..errors import SegformerError
from ..inference.ops import (
    Preprocess,
    check_inference_memory,
    class_ids,
    flip_permutation,
    predict_probs,
    remove_small_regions,
)
from ..inference.settings import InferenceSettings, split_overrides
from ..metrics import SegmentationMetrics
from .data import background_of, collate_eval, mark_mirrored


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    *,
    ignore_index: int = 255,
    background: int | None = 0,
    class_names: list[str] | None = None,
    settings: InferenceSettings | None = None,
    tta: str | None = None,
    flip_perm: Tensor | None = None,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Score `model` on batches of ``(images, masks)``; scores are summed over processes when
    distributed (each process evaluates its own shard). The `settings` (default: resize mode, no TTA;
    `tta` overrides theirs) decide the TTA views, sliding windows (``slide`` mode: images at full
    size) and the ``small-regions`` post-processing of the class ids before they are scored."""
    s = (settings or InferenceSettings()).replace(tta=tta)
    min_area = s.min_area if s.postprocess == "small-regions" else None
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes, ignore_index, background, class_names, device=device)
    bar = tqdm(loader, desc=desc, leave=False, disable=not (progress and distributed.is_main()), unit="batch")
    for images, masks in bar:
        images = images.to(device, non_blocking=True)
        groups = (
            [(images, masks)]
            if isinstance(masks, Tensor)
            else [(im[None], m[None]) for im, m in zip(images, masks, strict=True)]
        )
        for x, y in groups:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                probs = predict_probs(
                    model, x, y.shape[-2:], tta=s.tta, flip_perm=flip_perm, scales=s.scales, window=s.window
                )
            ids = class_ids(probs)
            if min_area is not None:
                cleaned = [remove_small_regions(m, min_area) for m in ids.cpu().numpy()]
                ids = torch.from_numpy(np.stack(cleaned)).to(ids.device)
            metrics.update(ids, y.to(device))
    distributed.all_reduce_sum(metrics.state_tensors())
    model.train(was_training)
    return metrics.compute()


def eval_dataset(
    root: str | Path,
    split: str = "val",
    settings: InferenceSettings | None = None,
    *,
    kind: str = "auto",
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> SegmentationDataset:
    """The labelled split `split` of a dataset (in the `settings`' label set, if they name one),
    preprocessed as the `settings` say (default: `InferenceSettings()`).

    ``val`` of a folder dataset without ``ROOT/val`` is the seeded hold-out of train that training
    used (same `val_fraction` and `split_seed` give the same images).
    """
    from ..data.layouts import load_split

    # The Predictor's preprocessing, so that scores describe what `segformer predict` writes.
    settings = settings or InferenceSettings()
    tf = Preprocess.of(settings)
    return load_split(
        root,
        split,
        kind=kind,
        label_set=settings.label_set,
        val_fraction=val_fraction,
        split_seed=split_seed,
        transform=tf,
    )


def evaluate_model(
    model: nn.Module,
    root: str | Path,
    split: str = "val",
    settings: InferenceSettings | None = None,
    *,
    batch_size: int = 4,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
    fix_mirrored: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Score a trained model on a dataset split with `settings` (default: the model's own
    `InferenceSettings`) and `overrides` of their fields (``tta``, ``image_size``, ``eval_mode``,
    ``postprocess``, ...; None: keep; ``img_size`` / ``mode`` are old spellings); the hold-out split
    from what training recorded in ``model.meta["data"]``. With `fix_mirrored`, masks whose every
    left/right pair lies on the wrong side are scored swapped back (as a run with
    ``data.fix_mirrored`` validates); ``scores["mirrored_fixed"]`` counts them."""
    meta = getattr(model, "meta", None) or {}
    changes, _ = split_overrides(overrides, runtime=(), what="evaluate_model")
    settings = (settings or InferenceSettings.from_meta(meta)).replace(**changes)
    check_inference_memory(model.config, settings, batch_size, resolve_device(device))
    data_meta = meta.get("data", {})
    ds = eval_dataset(
        root,
        split,
        settings,
        kind=data_meta.get("kind", "auto"),
        val_fraction=data_meta.get("val_fraction", 0.1),
        split_seed=data_meta.get("split_seed", 0),
    )
    fixed = mark_mirrored(ds) if fix_mirrored else 0
    ls = get_label_set(ds.label_set)
    if model.config.num_classes != ls.num_classes:
        raise SegformerError(
            f"the model predicts {model.config.num_classes} classes but {root} uses "
            f"{ls.name} ({ls.num_classes})"
        )
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_eval)
    device = resolve_device(device)
    model = model.to(device)
    scores = evaluate(
        model,
        loader,
        ls.num_classes,
        ignore_index=ls.ignore_index,
        background=background_of(ls),
        class_names=list(ls.class_names),
        settings=settings,
        flip_perm=flip_permutation(ls.flip_pairs, ls.num_classes),
        device=device,
        progress=progress,
    )
    h, w = settings.image_size
    scores.update(
        {
            "split": split,
            "tta": settings.tta,
            "img_size": h if h == w else [h, w],
            "eval_mode": settings.eval_mode,
            "postprocess": settings.postprocess,
            "mirrored_fixed": fixed,
        }
    )
    return scores
