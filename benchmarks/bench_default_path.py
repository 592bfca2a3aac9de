"""The three user paths of `segformer predict` with its defaults, each timed side by side with a plain
single pass (`--whole-image --tta none`) in one run, through the CLI a user types:

1. a folder of aligned portraits (the seeded hold-out of ROOT/train: CE7454 F against its masks, and
   how far the default's mask strays from its own `--whole-image` mask on the worst portrait);
2. 1600x1000 photos with three faces of different sizes (composed from hold-out faces on clutter:
   the score on the faces relative to parsing each face's aligned crop, and non-face pixels painted);
3. a 640x480 video with one moving face (frames per second).

    python benchmarks/bench_default_path.py ../shared/data/celebamask-mini --threads 2
    python benchmarks/bench_default_path.py ROOT --model RUN/last --only portraits

Targets (issue 25): portraits default <= 1.25x the single pass's time, score >= the flip+scales
whole-image score, no portrait over 20% of pixels from its --whole-image mask; photos <= 0.5 s each,
ratio >= 0.95, < 0.5% of non-face pixels painted; video >= 15 frames/s.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from segformer.data.datasets import holdout_stems
from segformer.data.io import load_image, load_mask
from segformer.metrics import ce7454_image_scores, per_image_confusion

IGNORE = 255
PATHS = {"default": (), "single pass (--whole-image --tta none)": ("--whole-image", "--tta", "none")}


OWN_TIME: dict[str, float] = {}
"""The seconds each command's own summary gives (``wrote N label map(s) ... in S s``): its work without
the process start (Python, torch and the model loading), by output folder."""


def run_predict(model: str, inputs: str, out: Path, threads: int, *flags: str) -> float:
    """Wall-clock seconds of one `segformer predict` command (a fresh process, as a user runs it)."""
    cmd = ["segformer", "predict", model, inputs, "--out", str(out), "--threads", str(threads), *flags]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
    found = re.search(r" in ([0-9.]+) s \(", done.stdout)
    OWN_TIME[str(out)] = float(found.group(1)) if found else math.nan
    return seconds


def score(pred: np.ndarray, mask: np.ndarray, k: int = 19) -> float:
    cm = per_image_confusion(torch.from_numpy(pred)[None], torch.from_numpy(mask)[None], k, IGNORE)
    return float(ce7454_image_scores(cm)[0])


def holdout(root: Path, limit: int | None) -> list[Path]:
    images = {p.stem: p for p in (root / "train" / "images").iterdir()}
    _, val = holdout_stems(sorted(images), 0.1, 0)
    return [images[s] for s in (val[:limit] if limit else val)]


def portraits(root: Path, model: str, threads: int, limit: int | None, tmp: Path) -> None:
    files = holdout(root, limit)
    folder = tmp / "portraits"
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    runs = {
        "default": (),
        "single pass (--whole-image --tta none)": ("--whole-image", "--tta", "none"),
        "default, --whole-image": ("--whole-image",),
        "--whole-image --tta flip+scales": ("--whole-image", "--tta", "flip+scales"),
    }
    seconds, scores, masks = {}, {}, {}
    for name, flags in runs.items():
        out = tmp / f"p{len(seconds)}"
        seconds[name] = run_predict(model, str(folder), out, threads, *flags)
        masks[name] = {f.stem: np.asarray(load_mask(out / f"{f.stem}.png", "celebamask")) for f in files}
        scores[name] = float(
            np.mean([score(masks[name][f.stem], load_mask(mask_of(root, f), "celebamask")) for f in files])
        )
    base = seconds["single pass (--whole-image --tta none)"]
    print(f"aligned portraits: {len(files)} hold-out faces, --threads {threads}")
    for name in runs:
        print(
            f"  {name:42s} {len(files) / seconds[name]:6.2f} images/s  ({seconds[name] / base:4.2f}x the"
            f" single pass's time; {len(files) / OWN_TIME[str(tmp / f'p{list(runs).index(name)}')]:.2f}"
            f" images/s without the process start)  CE7454 F {scores[name]:.4f}"
        )
    worst = max(
        float((masks["default"][s] != masks["default, --whole-image"][s]).mean()) for s in masks["default"]
    )
    print(f"  worst portrait: the default differs from its --whole-image mask on {worst:.2%} of pixels")


def mask_of(root: Path, image: Path) -> Path:
    return root / "train" / "masks" / f"{image.stem}.png"


def photos(root: Path, model: str, threads: int, count: int, tmp: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from scenes import compose_scene

    files = holdout(root, None)
    samples = [(load_image(f), load_mask(mask_of(root, f), "celebamask")) for f in files]
    rng = np.random.default_rng(1)
    folder = tmp / "photos"
    folder.mkdir()
    scenes = {}
    for i in range(count):
        scene = compose_scene(rng, samples, (1000, 1600), faces=(3, 3), scale=(0.12, 0.6))
        name = f"photo_{i:02d}"
        cv2.imwrite(str(folder / f"{name}.png"), scene.image[:, :, ::-1])
        scenes[name] = scene
    from segformer import Predictor

    crop = Predictor(model, tta="none", faces=False)
    reference = [score(crop(im), m) for im, m in samples]
    for name, flags in PATHS.items():
        out = tmp / f"ph{name[:3]}"
        sec = run_predict(model, str(folder), out, threads, *flags)
        face_scores, paired, false_px, outside_px = [], [], 0, 0
        for stem, scene in scenes.items():
            pred = np.asarray(load_mask(out / f"{stem}.png", "celebamask"))
            for j, src in enumerate(scene.sources):
                inside = scene.regions == j + 1
                if inside.any():
                    face_scores.append(score(pred, np.where(inside, scene.mask, IGNORE)))
                    paired.append(reference[src])
            outside = scene.regions == 0
            false_px += int((pred[outside] != 0).sum())
            outside_px += int(outside.sum())
        ratio = np.mean(face_scores) / np.mean(paired) if paired else math.nan
        own = OWN_TIME[str(out)] / count
        print(
            f"photos 1600x1000, 3 faces: {name:42s} {sec / count:5.2f} s/photo ({own:.2f} without the"
            f" process start)  ratio to the aligned crops {ratio:.3f}  non-face pixels painted"
            f" {false_px / max(outside_px, 1):.3%}"
        )


def video(root: Path, model: str, threads: int, frames: int, tmp: Path) -> None:
    files = holdout(root, None)
    face = cv2.resize(load_image(files[0]), (220, 220), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    background = (rng.random((480, 640, 3)) * 60 + 90).astype(np.uint8)
    path = tmp / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
    for t in range(frames):  # the face drifts right and bobs
        frame = background.copy()
        x = int(60 + 300 * t / max(1, frames - 1))
        y = int(130 + 40 * math.sin(t / 8))
        frame[y : y + 220, x : x + 220] = face
        writer.write(frame[:, :, ::-1])
    writer.release()
    for name, flags in PATHS.items():
        out = tmp / f"v{name[:3]}"
        sec = run_predict(model, str(path), out, threads, *flags)
        print(
            f"video 640x480, one moving face, {frames} frames: {name:42s} {frames / sec:6.2f} frames/s"
            f" ({frames / OWN_TIME[str(out)]:.2f} without the process start)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="CE7454-layout data root (ROOT/train/images, masks)")
    parser.add_argument("--model", default="microsegformer-celebamask")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="portraits: the first N hold-out faces")
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--only", choices=("portraits", "photos", "video"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # Once, untimed: the first command ever exports the ONNX graph into the cache (~/.cache/segformer).
        warm = run_predict(args.model, str(holdout(args.root, 1)[0]), Path(tmp) / "warm", args.threads)
        print(f"warm-up (one portrait; exports the ONNX graph once into the cache): {warm:.1f} s")
        if args.only in (None, "portraits"):
            portraits(args.root, args.model, args.threads, args.limit, Path(tmp))
        if args.only in (None, "photos"):
            photos(args.root, args.model, args.threads, args.photos, Path(tmp))
        if args.only in (None, "video"):
            video(args.root, args.model, args.threads, args.frames, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
