"""Evaluation: predictions at each mask's resolution, scored from confusion matrices."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import distributed
from ..data.datasets import SegmentationDataset
from ..data.labels import LabelSet, get_label_set
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..devices import resolve_device
from ..errors import SegformerError
from ..inference.ops import Preprocess, class_ids, flip_permutation, predict_probs, remove_small_regions
from ..inference.settings import InferenceSettings
from ..metrics import SegmentationMetrics
from .data import background_of, mark_mirrored


def collate_eval(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor | list[Tensor]]:
    """Stack images (all at the working size); stack masks when they share a size, else keep a list."""
    images = torch.stack([b[0] for b in batch])
    masks = [b[1] for b in batch]
    if all(m.shape == masks[0].shape for m in masks):
        return images, torch.stack(masks)
    return images, masks


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    *,
    ignore_index: int = 255,
    background: int | None = 0,
    class_names: list[str] | None = None,
    tta: str = "none",
    flip_perm: Tensor | None = None,
    window: int | None = None,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "eval",
    min_area: float | None = None,
) -> dict[str, Any]:
    """Score `model` on batches of ``(images, masks)``; scores are summed over processes when
    distributed (each process evaluates its own shard). With `min_area`, the class ids are cleaned by
    `remove_small_regions` before they are scored (the ``small-regions`` post-processing)."""
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
                probs = predict_probs(model, x, y.shape[-2:], tta=tta, flip_perm=flip_perm, window=window)
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
    *,
    kind: str = "auto",
    label_set: LabelSet | str | None = None,
    img_size: int | Sequence[int] = 512,
    eval_mode: str = "resize",
    val_fraction: float = 0.1,
    split_seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> SegmentationDataset:
    """The labelled split `split` of a dataset, transformed for evaluation.

    ``val`` of a folder dataset without ``ROOT/val`` is the seeded hold-out of train that training
    used (same `val_fraction` and `split_seed` give the same images).
    """
    from ..data.layouts import load_split

    # The Predictor's preprocessing, so that scores describe what `segformer predict` writes.
    tf = Preprocess(None if eval_mode == "slide" else img_size, mean, std)
    return load_split(
        root,
        split,
        kind=kind,
        label_set=label_set,
        val_fraction=val_fraction,
        split_seed=split_seed,
        transform=tf,
    )


def evaluate_model(
    model: nn.Module,
    root: str | Path,
    split: str = "val",
    *,
    tta: str | None = None,
    img_size: int | None = None,
    eval_mode: str | None = None,
    batch_size: int = 4,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
    postprocess: str | None = None,
    min_area: float | None = None,
    fix_mirrored: bool = False,
) -> dict[str, Any]:
    """Score a trained model on a dataset split. The working size, mode, TTA, normalisation, label set
    and post-processing come from the model's `InferenceSettings` unless given; the hold-out split from
    what training recorded in ``model.meta["data"]``. With `fix_mirrored`, masks whose every left/right
    pair lies on the wrong side are scored swapped back (as a run with ``data.fix_mirrored`` validates);
    ``scores["mirrored_fixed"]`` counts them."""
    meta = getattr(model, "meta", None) or {}
    settings = InferenceSettings.from_meta(meta).replace(
        image_size=img_size, eval_mode=eval_mode, tta=tta, postprocess=postprocess, min_area=min_area
    )
    tta = settings.tta
    (h, w), eval_mode = settings.image_size, settings.eval_mode
    data_meta = meta.get("data", {})
    ds = eval_dataset(
        root,
        split,
        kind=data_meta.get("kind", "auto"),
        label_set=settings.label_set,
        img_size=settings.image_size,
        eval_mode=eval_mode,
        val_fraction=data_meta.get("val_fraction", 0.1),
        split_seed=data_meta.get("split_seed", 0),
        mean=settings.mean,
        std=settings.std,
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
        tta=tta,
        flip_perm=flip_permutation(ls.flip_pairs, ls.num_classes),
        window=h if eval_mode == "slide" else None,
        device=device,
        progress=progress,
        min_area=settings.min_area if settings.postprocess == "small-regions" else None,
    )
    size = h if h == w else [h, w]
    scores.update(
        {
            "split": split,
            "tta": tta,
            "img_size": size,
            "eval_mode": eval_mode,
            "postprocess": settings.postprocess,
            "mirrored_fixed": fixed,
        }
    )
    return scores
