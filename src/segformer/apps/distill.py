"""`segformer distill`: teach a model's single forward pass what its test-time ensemble predicts.

A face parser run with flip + multi-scale TTA (8 forward passes) scores better than one pass of the same
weights. Self-distillation closes most of that gap at no cost at inference: the student starts from the
teacher's weights and is fine-tuned on the training images with the teacher's ensemble probabilities as
soft targets (cross entropy against them), plus the Dice loss against the labels (the recipe's second
term), under mirror and similarity warps of images, targets and labels together. Only the training split
is used: the seeded hold-out the teacher was validated on stays unseen, so `segformer eval` on it stays
honest.

The run folder holds ``last/`` (a model directory whose settings say ``tta: none``: one pass is the
point), ``targets/`` (the teacher's probabilities, computed once), ``state.pt`` (resumable with
``--resume``), ``metrics.jsonl`` (one line per epoch) and ``distill.json`` (what was asked). Epochs
follow a fixed cosine schedule, so the model of the last epoch is the result: no selection on the hold-
out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..checkpoint import load, save
from ..config import load_recipe
from ..engine.data import build_train_data, to_device_batch
from ..engine.losses import dice_loss
from ..errors import SegformerError
from ..fileio import LOCK_NAME, atomic_path, write_json, writer_lock
from ..inference.ops import flip_permutation, predict_probs

STATE = "state.pt"
CHUNK = 16
"""Images per teacher batch (and per file of kept targets)."""


@dataclasses.dataclass
class DistillConfig:
    teacher: str
    data: str
    out: str
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    dice_weight: float = 0.5
    teacher_tta: str = "flip+scales"
    seed: int = 0
    recipe: str = "microsegformer-celebamask"


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _student_meta(teacher: nn.Module, cfg: DistillConfig, epoch: int) -> dict[str, Any]:
    meta = dict(teacher.meta)
    meta.update(
        tta="none", epoch=epoch, distilled={"teacher": cfg.teacher, "tta": cfg.teacher_tta, "epochs": epoch}
    )
    return meta


def _affine(n: int, gen: torch.Generator, scale: float, degrees: float, shift: float) -> Tensor:
    """(n, 2, 3) random similarity transforms for `F.affine_grid` (zoom, roll, shift)."""
    u = torch.rand(n, 4, generator=gen) * 2 - 1
    s = torch.exp(u[:, 0] * math.log(1 + scale))
    a = u[:, 1] * math.radians(degrees)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    return torch.stack(
        [torch.stack([cos, -sin, u[:, 2] * shift], 1), torch.stack([sin, cos, u[:, 3] * shift], 1)], 1
    )


def augment_pair(
    images: Tensor, probs: Tensor, masks: Tensor, perm: Tensor, gen: torch.Generator, ignore: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The same random mirror and similarity warp applied to normalised `images` (bilinear), the
    teacher's `probs` (bilinear) and the label `masks` (nearest; ignore outside the image). Returns
    the warped three and the (B, H, W) mask of pixels that came from inside the image."""
    flip = torch.rand(len(images), generator=gen) < 0.5
    if flip.any():
        images[flip] = images[flip].flip(-1)
        probs[flip] = probs[flip].flip(-1)[:, perm]
        masks[flip] = torch.where(masks[flip] == ignore, ignore, perm[masks[flip].clamp(max=len(perm) - 1)])
        masks[flip] = masks[flip].flip(-1)
    theta = _affine(len(images), gen, scale=0.25, degrees=15.0, shift=0.1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    probs = F.grid_sample(probs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = (
        F.grid_sample(
            torch.ones_like(masks, dtype=torch.float32)[:, None], grid, mode="nearest", align_corners=False
        )[:, 0]
        > 0.5
    )
    masks = F.grid_sample(masks[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
    masks = torch.where(valid, masks, ignore)
    return images, probs, masks, valid


@torch.inference_mode()
def teacher_targets(
    teacher: nn.Module, dataset: Any, cfg: DistillConfig, perm: Tensor, scales: Any, folder: Path
) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's `cfg.teacher_tta` probabilities (N, K, S, S) float16 of every training image at the
    working size, with the images (N, 3, S, S) normalised float16 and the masks (N, S, S) uint8. Each
    chunk of CHUNK images is kept in `folder` as it is done, so a killed run loses at most one chunk."""
    images, masks = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    x = torch.stack([torch.as_tensor(im) for im in images])
    m = torch.stack([torch.as_tensor(mk) for mk in masks]).to(torch.uint8)
    x, _ = to_device_batch((x, m), "cpu")
    folder.mkdir(exist_ok=True)
    probs = []
    for start in tqdm(range(0, len(x), CHUNK), desc="teacher targets", leave=False):
        path = folder / f"{start:06d}.pt"
        if path.is_file():
            probs.append(torch.load(path, weights_only=True))
            continue
        chunk = x[start : start + CHUNK]
        size = chunk.shape[-2:]
        p = predict_probs(teacher, chunk, size, tta=cfg.teacher_tta, flip_perm=perm, scales=scales).half()
        with atomic_path(path) as tmp:
            torch.save(p, tmp)
        probs.append(p)
    return torch.cat(probs), x.half(), m


def _open_run(cfg: DistillConfig, resume: bool) -> DistillConfig:
    """The run's configuration: written into a new (empty) folder, or read back to resume."""
    out = Path(cfg.out)
    if resume:
        if not (out / "distill.json").is_file():
            raise SegformerError(f"{out}: not a distill run to resume (no distill.json)")
        saved = json.loads((out / "distill.json").read_text())
        return DistillConfig(**{**saved, "epochs": max(cfg.epochs, saved["epochs"])})
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_NAME for p in out.iterdir())):
        raise SegformerError(f"{out}: exists and is not empty; choose a new --out (or --resume a run)")
    write_json(out / "distill.json", dataclasses.asdict(cfg))
    return cfg


def _training_set(cfg: DistillConfig, teacher: nn.Module) -> tuple[Tensor, Tensor, Tensor, Any]:
    """Teacher targets, images and masks of the training split, and the label set."""
    meta = teacher.meta
    size = int(meta["image_size"] if isinstance(meta["image_size"], int) else meta["image_size"][0])
    run = load_recipe(cfg.recipe)
    dc = dataclasses.replace(
        run.data,
        root=cfg.data,
        image_size=size,
        augment="none",
        cache=False,
        val_fraction=meta["data"]["val_fraction"],
        split_seed=meta["data"]["split_seed"],
    )
    data = build_train_data(dc, cfg.seed, Path(cfg.out), progress=True)
    ls = data.label_set
    perm = flip_permutation(ls.flip_pairs, ls.num_classes)
    scales = meta.get("scales") or (0.75, 1.0, 1.25, 1.5)
    targets, images, masks = teacher_targets(
        teacher, data.train, cfg, perm, scales, Path(cfg.out) / "targets"
    )
    return targets, images, masks, ls


def _step(student: nn.Module, optimizer: Any, batch: tuple[Tensor, ...], ls: Any, cfg: DistillConfig):
    """One optimizer step on a warped batch; returns the soft cross entropy and the Dice loss."""
    x, target, y, valid = batch
    logits = student(x)
    logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    soft = -(target * F.log_softmax(logits, dim=1)).sum(1)[valid].mean()
    dice = dice_loss(logits, y, ignore_index=ls.ignore_index, classes="present")
    optimizer.zero_grad(set_to_none=True)
    (soft + cfg.dice_weight * dice).backward()
    nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    return soft.item(), dice.item()


def _save(out: Path, student: nn.Module, optimizer: Any, meta: dict, epoch: int, gen: torch.Generator):
    save(student, out / "last", meta=meta, overwrite=True)
    state = {
        "model": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "generator": gen.get_state(),
    }
    with atomic_path(out / STATE) as tmp:
        torch.save(state, tmp)


def distill(cfg: DistillConfig, resume: bool = False, max_minutes: float | None = None) -> dict[str, Any]:
    """Fine-tune a copy of `cfg.teacher` against its own `teacher_tta` predictions; returns a summary."""
    load(cfg.teacher)  # a teacher that does not load is refused before the run folder exists
    if not Path(cfg.data).is_dir():
        raise SegformerError(f"{cfg.data}: no such data folder")
    with writer_lock(cfg.out):
        return _distill(_open_run(cfg, resume), max_minutes)


def _distill(cfg: DistillConfig, max_minutes: float | None) -> dict[str, Any]:
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    teacher = load(cfg.teacher).eval()
    student = load(cfg.teacher).train()
    targets, images, masks, ls = _training_set(cfg, teacher)
    perm = flip_permutation(ls.flip_pairs, ls.num_classes)
    steps = len(images) // cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    first = 0
    if (out / STATE).is_file():
        state = torch.load(out / STATE, weights_only=True)
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first = state["epoch"]
        gen.set_state(state["generator"])
    total, warmup = cfg.epochs * steps, max(1, round(cfg.warmup_epochs * steps))
    start, epoch = time.monotonic(), first
    for epoch in range(first, cfg.epochs):
        order = torch.randperm(len(images), generator=gen)
        sums = [0.0, 0.0]
        for i in tqdm(range(steps), desc=f"distill epoch {epoch + 1}/{cfg.epochs}", leave=False):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps + i, total, warmup, cfg.lr)
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            batch = augment_pair(
                images[idx].float(), targets[idx].float(), masks[idx].long(), perm, gen, ls.ignore_index
            )
            sums = [a + b for a, b in zip(sums, _step(student, optimizer, batch, ls, cfg), strict=True)]
        record = {"epoch": epoch + 1, "soft_ce": sums[0] / steps, "dice": sums[1] / steps}
        record["minutes"] = (time.monotonic() - start) / 60
        _save(out, student, optimizer, _student_meta(teacher, cfg, epoch + 1), epoch + 1, gen)
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: soft CE {record['soft_ce']:.4f}  dice {record['dice']:.4f}"
            f"  ({record['minutes']:.1f} min)",
            flush=True,
        )
        if max_minutes is not None and record["minutes"] >= max_minutes and epoch + 1 < cfg.epochs:
            print(f"stopped after {max_minutes:g} minutes; continue with --resume", flush=True)
            break
    return {"out": str(out), "epochs_done": epoch + 1, "last": str(out / "last")}
