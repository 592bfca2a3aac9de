"""Self-distillation experiments on a dev split: 90 of the 810 training faces (seed 123) are held out
of the distillation and scored at their masks' 512 px (mirrored masks fixed), with one pass at the
student's working size. The teacher's flip+scales targets are those a `segformer distill` run kept
(RUN/targets, computed once at 256 px; bilinearly resized for other sizes). Mirror flips always;
`--warp` adds `segformer distill`'s similarity warps.

    segformer distill microsegformer-celebamask --data ../shared/data/celebamask-mini --out runs/d --epochs 1
    python benchmarks/distill_dev.py --targets-run runs/d --size 256 --epochs 8 --baseline
    python benchmarks/distill_dev.py --targets-run runs/d --size 320 --epochs 6

Prints the teacher's dev scores (with --baseline) and the student's after every --eval-every epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from segformer.apps.distill import DistillConfig, _training_set, augment_pair, lr_at
from segformer.checkpoint import load, save
from segformer.config import load_recipe
from segformer.engine.data import build_train_data, collate_eval, mark_mirrored, to_device_batch
from segformer.engine.evaluate import eval_dataset, evaluate
from segformer.engine.losses import dice_loss
from segformer.inference.ops import flip_permutation
from segformer.inference.settings import InferenceSettings

TEACHER = "microsegformer-celebamask"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets-run", required=True, help="a segformer distill run folder (its targets/)")
    ap.add_argument("--data", default="../shared/data/celebamask-mini")
    ap.add_argument("--size", type=int, default=256, help="the student's working size")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--warp", action="store_true", help="similarity warps as well as mirror flips")
    ap.add_argument("--dice", type=float, default=0.5, help="weight of the Dice loss against the labels")
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--baseline", action="store_true", help="score the teacher first")
    ap.add_argument("--save", default="", help="write the student here (a model directory)")
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


def main() -> None:
    a = parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = DistillConfig(teacher=TEACHER, data=a.data, out=a.targets_run)
    teacher = load(TEACHER).eval()
    targets, _, _, ls = _training_set(cfg, teacher)
    perm = flip_permutation(ls.flip_pairs, ls.num_classes)
    dc = dataclasses.replace(
        load_recipe(cfg.recipe).data, root=a.data, image_size=a.size, augment="none", cache=False,
        val_fraction=0.1, split_seed=0,
    )  # fmt: skip
    train = build_train_data(dc, 0, Path(a.targets_run), progress=False).train
    images, masks = zip(*(train[i] for i in range(len(train))), strict=True)
    x_all = torch.stack([torch.as_tensor(im) for im in images])
    m_all = torch.stack([torch.as_tensor(mk) for mk in masks]).to(torch.uint8)
    x_all = to_device_batch((x_all, m_all), "cpu")[0].half()
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(123))
    dev, rest = order[:90], order[90:]

    def dev_score(model: nn.Module, tta: str = "none", size: int | None = None) -> float:
        settings = InferenceSettings(image_size=size or a.size, label_set="celebamask")
        ds = eval_dataset(a.data, "train", settings)
        mark_mirrored(ds)
        loader = DataLoader(Subset(ds, dev.tolist()), batch_size=8, collate_fn=collate_eval)
        scales = tuple(teacher.meta["scales"])
        return evaluate(
            model, loader, ls.num_classes, ignore_index=ls.ignore_index, flip_perm=perm, progress=False,
            settings=settings.replace(tta=tta, scales=scales),
        )["ce7454_f"]  # fmt: skip

    print(json.dumps(vars(a)), flush=True)
    if a.baseline:
        scores = {f"256 {t}": dev_score(teacher, t, 256) for t in ("none", "flip", "flip+scales")}
        scores[f"{a.size} none"] = dev_score(teacher)
        print("teacher on dev:", "  ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)
    student = load(TEACHER).train()
    opt = torch.optim.AdamW(student.parameters(), lr=a.lr, weight_decay=5e-4)
    steps = len(rest) // a.batch_size
    total, warm = a.epochs * steps, max(1, steps // 4)
    gen = torch.Generator().manual_seed(0)
    start, size = time.monotonic(), a.size
    for epoch in range(a.epochs):
        shuffled = rest[torch.randperm(len(rest), generator=gen)]
        soft_sum = 0.0
        for i in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps + i, total, warm, a.lr)
            idx = shuffled[i * a.batch_size : (i + 1) * a.batch_size]
            x, y, t = x_all[idx].float(), m_all[idx].long(), targets[idx].float()
            if t.shape[-1] != size:
                t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
            if a.warp:
                x, t, y, valid = augment_pair(x, t, y, perm, gen, ls.ignore_index)
            else:
                flip = torch.rand(len(x), generator=gen) < 0.5
                x[flip], t[flip] = x[flip].flip(-1), t[flip].flip(-1)[:, perm]
                yf = y[flip]
                y[flip] = torch.where(yf == ls.ignore_index, yf, perm[yf.clamp(max=len(perm) - 1)]).flip(-1)
                valid = torch.ones_like(y, dtype=torch.bool)
            logits = F.interpolate(student(x), size=(size, size), mode="bilinear", align_corners=False)
            soft = -(t * F.log_softmax(logits, 1)).sum(1)[valid].mean()
            loss = soft + a.dice * dice_loss(logits, y, ignore_index=ls.ignore_index, classes="present")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            soft_sum += soft.item()
        line = f"epoch {epoch + 1}: soft CE {soft_sum / steps:.4f}, {(time.monotonic() - start) / 60:.1f} min"
        if (epoch + 1) % a.eval_every == 0 or epoch + 1 == a.epochs:
            line += f", dev {dev_score(student):.4f}"
        print(line, flush=True)
    if a.save:
        save(student, a.save, meta={**teacher.meta, "tta": "none", "image_size": size}, overwrite=True)


if __name__ == "__main__":
    main()
