"""Training-data throughput: images/s from cached 512 x 512 sources to normalised model input on the
device, augmentation ``both``, batch 16, at 256 and 512 px, three paths measured side by side:

- ``seed``: the seed's pipeline -- warp, then mirror, then float colour jitter (three float passes),
  normalised to float32 per sample, float batches copied to the device;
- ``cpu``: `SegTransform(output="uint8")` -- one warp with the flip inside, colour jitter as one
  colour matrix on the small image, uint8 batches normalised on the device (`to_device_batch`);
- ``device``: `SegTransform(output="source")` + `BatchAugment` -- uint8 sources batched, augmented
  on the device (CUDA when present, else the CPU).

Paths run in interleaved rounds, so a busy machine slows all of them alike; the ratios are the result.
One process, no DataLoader workers: what is measured is the CPU time each path costs per image.

    PYTHONPATH=src python benchmarks/bench_data.py [--data ROOT] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from segformer.data.batch_augment import BatchAugment
from segformer.data.datasets import FolderDataset
from segformer.data.labels import CELEBAMASK, LabelSet
from segformer.data.synthetic import generate_face
from segformer.data.transforms import (
    GREY,
    build_transform,
    hflip,
    normalize,
    random_affine,
    resize_image,
    resize_mask,
)
from segformer.engine.data import collate_batch, to_device_batch

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "celebamask-mini"
BATCH = 16


def seed_photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The seed's colour jitter (float32 passes over the image, numpy noise), kept as the baseline."""
    img = image.astype(np.float32)
    img *= rng.uniform(0.75, 1.25)
    grey = img @ GREY.astype(np.float32)
    c = rng.uniform(0.75, 1.25)
    img = (img - grey.mean()) * c + grey.mean()
    grey = grey * c + grey.mean() * (1 - c)
    img = (img - grey[:, :, None]) * rng.uniform(0.75, 1.25) + grey[:, :, None]
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    shift = rng.uniform(-0.05, 0.05)
    if abs(shift) * 180 >= 0.5:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int16) + round(shift * 180)) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.3, 1.5))
    if rng.random() < 0.25:
        noise = rng.standard_normal(out.shape, dtype=np.float32) * rng.uniform(2.0, 10.0)
        out = np.clip(out + noise + 0.5, 0, 255).astype(np.uint8)
    return out


def seed_sample(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, size: int, ls: LabelSet):
    image, mask = random_affine(image, mask, rng, size, ignore_index=ls.ignore_index)
    if rng.random() < 0.5:
        image, mask = hflip(image, mask, ls)
    image = seed_photometric(image, rng)
    return normalize(image), torch.from_numpy(np.ascontiguousarray(mask)).long()


def load_sources(root: Path | None, num: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if root is not None and (root / "train" / "images").is_dir():
        ds = FolderDataset(root, "train")
        out = [ds.load(i) for i in range(min(num, len(ds)))]
        return [(resize_image(im, 512), resize_mask(m, 512)) for im, m in out]
    return [generate_face(np.random.default_rng((1, i)), 512) for i in range(num)]


def paths(
    sources: list, size: int, device: torch.device
) -> dict[str, Callable[[int], tuple[torch.Tensor, torch.Tensor]]]:
    """Each path: batch number k -> (normalised images, int64 masks) on `device`."""
    ls = CELEBAMASK
    uint8_tf = build_transform("both", size, ls, output="uint8")
    source_tf = build_transform("both", size, ls, output="source")
    augment = BatchAugment(size, ls)

    def samples(k: int):
        for j in range(BATCH):
            n = k * BATCH + j
            image, mask = sources[n % len(sources)]
            yield image, mask, np.random.default_rng((0, n))

    def seed(k: int):
        batch = [seed_sample(im, m, rng, size, ls) for im, m, rng in samples(k)]
        images, masks = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        return images.to(device), masks.to(device)

    def cpu(k: int):
        return to_device_batch(collate_batch([uint8_tf(*s) for s in samples(k)]), device)

    def on_device(k: int):
        return to_device_batch(collate_batch([source_tf(*s) for s in samples(k)]), device, augment=augment)

    return {"seed": seed, "cpu": cpu, "device": on_device}


def measure(fns: dict[str, Callable], seconds: float, rounds: int, device: torch.device) -> dict[str, float]:
    images = dict.fromkeys(fns, 0)
    spent = dict.fromkeys(fns, 0.0)
    for fn in fns.values():  # warm up
        fn(0)
    for _ in range(rounds):
        for name, fn in fns.items():
            t0, k = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds / rounds:
                fn(k)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                k += 1
            spent[name] += time.perf_counter() - t0
            images[name] += k * BATCH
    return {name: images[name] / spent[name] for name in fns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED, help="CE7454-layout faces (default: the shared ones)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per path and size")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one loader core)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sources = load_sources(args.data, 64)
    real = args.data is not None and (args.data / "train" / "images").is_dir()
    print(f"{len(sources)} cached 512x512 sources ({'real faces' if real else 'synthetic faces'}), "
          f"augment both, batch {BATCH}, device {device}, {args.threads} torch thread(s)")  # fmt: skip
    for size in (256, 512):
        rates = measure(paths(sources, size, device), args.seconds, 3, device)
        line = "  ".join(f"{k} {v:7.1f} img/s" for k, v in rates.items())
        seed = rates["seed"]
        ratios = f"cpu/seed {rates['cpu'] / seed:.2f}x  device/seed {rates['device'] / seed:.2f}x"
        print(f"{size:4d}px  {line}  |  {ratios}", flush=True)


if __name__ == "__main__":
    main()
