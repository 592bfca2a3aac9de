"""Faces in photos: the framing calibration, scenes composed from validation faces, aligned crops,
a huge photo's memory and a still video's flicker -- each printed with its target.

    python benchmarks/bench_scenes.py RUN/best --calibrate          # detector on the aligned crops
    python benchmarks/bench_scenes.py RUN/best --landmarks          # landmarks of the training masks
    python benchmarks/bench_scenes.py RUN/best --scenes 30          # CE7454 ratio, false positives
    python benchmarks/bench_scenes.py RUN/best --scenes 30 --behind # ... with a blurred face behind
    python benchmarks/bench_scenes.py RUN/best --aligned --huge --video

The validation faces are the run's held-out split (`segformer.data.datasets.holdout_stems` with the
run's ``val_fraction`` / ``split_seed``, 0.1 / 0 by default) of ``ROOT/train``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from segformer.data.datasets import holdout_stems
from segformer.data.io import load_image, load_mask


def val_samples(
    root: Path, limit: int | None, val_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    images = {p.stem: p for p in (root / "train" / "images").iterdir()}
    _, val = holdout_stems(sorted(images), val_fraction, seed)
    val = val[:limit] if limit else val
    return [
        (load_image(images[s]), load_mask(root / "train" / "masks" / f"{s}.png", "celebamask")) for s in val
    ]


def calibrate(root: Path) -> None:
    """Detector on every aligned crop: detection rate, and the crop in units of the detector's box."""
    from segformer.faces.checks import is_whole_image
    from segformer.faces.detect import detect_faces

    files = sorted((root / "train" / "images").iterdir()) + sorted((root / "test" / "images").iterdir())
    rows, several, whole, start = [], 0, 0, time.perf_counter()
    for path in files:
        image = load_image(path)
        faces = detect_faces(image, angles=(0.0,))
        if not faces:
            continue
        several += len(faces) > 1
        whole += is_whole_image(faces, image.shape[:2])
        f, (h, w) = faces[0], image.shape[:2]
        rows.append((w / f.size, ((w - 1) / 2 - f.cx) / f.size, ((h - 1) / 2 - f.cy) / f.size))
    seconds = (time.perf_counter() - start) / len(files)
    a = np.array(rows)
    med, q1, q3 = np.median(a, 0), np.percentile(a, 25, 0), np.percentile(a, 75, 0)
    print(
        f"detected {len(rows)}/{len(files)} aligned crops ({len(rows) / len(files):.1%}), "
        f"{several} with more than one box, {seconds * 1000:.0f} ms per 512x512 image (upright pass only)"
    )
    print(f"parsed whole (one upright face, its crop about the image): {whole}/{len(files)}")
    for name, m, lo, hi in zip(("scale", "dx", "dy"), med, q1, q3, strict=True):
        print(f"  framing {name}: median {m:.3f} (quartiles {lo:.3f} .. {hi:.3f})")


def landmarks(root: Path, val_fraction: float, split_seed: int) -> None:
    """Median position of each landmark (`segformer.faces.landmarks.CANONICAL`) over the training
    masks, and the spread about it; the validation split is left out."""
    from segformer.data.io import load_mask
    from segformer.faces.landmarks import CANONICAL, find_landmarks

    stems = sorted(p.stem for p in (root / "train" / "images").iterdir())
    train, _ = holdout_stems(stems, val_fraction, split_seed)
    points: dict[str, list[tuple[float, float]]] = {k: [] for k in CANONICAL}
    for stem in train:
        for name, p in find_landmarks(
            load_mask(root / "train" / "masks" / f"{stem}.png", "celebamask")
        ).items():
            points[name].append(p)
    print(f"landmarks of {len(train)} training masks (x, y in crop sides):")
    for name, v in points.items():
        a = np.array(v)
        (mx, my), (sx, sy) = np.median(a, 0), a.std(0)
        print(f"  {name}: ({mx:.4f}, {my:.4f})  found in {len(a)}, std ({sx:.4f}, {sy:.4f})")


def aligned(predictor, samples) -> None:
    """The validation crops as they are: direct parsing vs the face pipeline (target: not lower)."""
    import torch

    from scenes import IGNORE
    from segformer.metrics import ce7454_image_scores, per_image_confusion

    k = predictor.config.num_classes
    scores = {"direct": [], "faces": []}
    whole = 0
    for image, mask in samples:
        for name, use in (("direct", False), ("faces", True)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if use:
                    result = predictor.parse_faces(image)
                    pred, whole = result.ids, whole + result.whole_image
                else:
                    pred = predictor.predict_arrays([image], faces=False)[0]
            cm = per_image_confusion(torch.from_numpy(pred)[None], torch.from_numpy(mask)[None], k, IGNORE)
            scores[name].append(float(ce7454_image_scores(cm)[0]))
    d, f = np.mean(scores["direct"]), np.mean(scores["faces"])
    print(
        f"aligned crops ({len(samples)}): CE7454 direct {d:.4f}, with face localisation {f:.4f} "
        f"({whole} parsed whole) -> {'met' if f >= d - 1e-9 else 'NOT MET'} (target: not lower)"
    )


HUGE = """
import resource, time, warnings, numpy as np, cv2
from segformer.inference.predictor import Predictor
from segformer.data.io import load_image
from segformer.faces import detect_faces
from segformer.runtime import set_threads
set_threads({threads!r})  # PyTorch's and OpenCV's threads, as `segformer predict --threads` sets them
rng = np.random.default_rng(0)
paths = {paths!r}
p = Predictor({model!r})
photo = np.empty((3000, 4000, 3), np.uint8)
photo[:] = rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)
photo += rng.integers(0, 40, (3000, 1, 1), dtype=np.uint8)
placements = [(900, 1500, 1600, 15), (2300, 1200, 900, -20), (3400, 2000, 500, 0)]
for path, (cx, cy, side, angle) in zip(paths, placements):
    face = cv2.resize(load_image(path), (side, side), interpolation=cv2.INTER_LINEAR)
    m = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), angle, 1.0)
    m[:, 2] += np.array([cx, cy]) - (side - 1) / 2
    inside = cv2.warpAffine(np.ones((side, side), np.uint8), m, (4000, 3000)) > 0
    photo[inside] = cv2.warpAffine(face, m, (4000, 3000))[inside]
    del face, inside
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
result = p.parse_faces(photo, instances=True, verify={verify!r})
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(result.faces), seconds, peak / 2**20, base / 2**20, result.ids.shape)
"""


def huge(model: str, samples_root: Path, verify: bool = True, threads: int = 2) -> None:
    """A 4000x3000 photo with three faces, in a fresh process: peak RSS (target 2 GB), time per face."""
    paths = [str(p) for p in sorted((samples_root / "train" / "images").iterdir())[:3]]
    code = HUGE.format(paths=paths, model=model, verify=verify, threads=threads)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    faces, seconds, peak, base = int(out[0]), float(out[1]), float(out[2]), float(out[3])
    print(
        f"4000x3000 photo, 3 faces pasted: {faces} found, {seconds:.2f} s "
        f"({seconds / max(faces, 1):.2f} s per face), peak RSS {peak:.2f} GB "
        f"(photo built: {base:.2f} GB) -> {'met' if peak <= 2 else 'NOT MET'} (target: 2 GB)"
    )


def video(predictor, samples, frames: int = 16, verify: bool = True) -> None:
    """A still shot with per-frame noise: flicker of frames parsed one by one and of tracked, smoothed
    faces (target <= 0.5x)."""
    from scenes import compose_scene
    from segformer.faces import flicker
    from segformer.faces.video import FaceVideo

    rng = np.random.default_rng(0)
    scene = compose_scene(rng, samples, (480, 640), faces=(2, 2))
    clip = [
        np.clip(scene.image + rng.normal(0, 8, scene.image.shape), 0, 255).astype(np.uint8)
        for _ in range(frames)
    ]
    result = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # without: every frame parsed on its own, as a photo; with: tracked faces, averaged over time
        alone = [predictor.parse_faces(frame, verify=verify).ids for frame in clip]
        v = FaceVideo(predictor.face_model, smoothing=0.7, verify=verify)
        tracked = [v(frame).ids for frame in clip]
    assert len(alone) == len(tracked) == frames
    result[0.0], result[0.7] = flicker(alone), flicker(tracked)
    ratio = result[0.7] / result[0.0] if result[0.0] else math.nan
    print(
        f"still clip ({frames} frames, 2 faces, noise sigma 8, {len(v.tracks)} tracks): "
        f"flicker {result[0.0]:.4%} per frame without smoothing, {result[0.7]:.4%} with (EMA 0.7) "
        f"-> ratio {ratio:.2f} "
        f"{'met' if ratio <= 0.5 else 'NOT MET'} (target <= 0.5)"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="face model directory (e.g. RUN/best)")
    p.add_argument("--root", type=Path, default=Path("../shared/data/celebamask-mini"))
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--faces", type=int, default=None, help="use only the first N validation faces")
    p.add_argument("--calibrate", action="store_true")
    p.add_argument("--landmarks", action="store_true")
    p.add_argument("--scenes", type=int, default=0, help="compose and score this many scenes")
    p.add_argument("--aligned", action="store_true")
    p.add_argument("--huge", action="store_true")
    p.add_argument("--video", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-verify", action="store_true", help="keep every detector box (no check that it parses as a face)"
    )
    p.add_argument(
        "--behind", action="store_true", help="scenes with a large blurred face behind a small sharp one"
    )
    p.add_argument(
        "--front", default=None, help="rule for overlapping faces (segformer.faces.paste.FRONT_RULES)"
    )
    p.add_argument("--tta", default=None, help="override the model's test-time augmentation")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from segformer.inference.predictor import Predictor
    from segformer.runtime import set_threads

    set_threads(args.threads)  # PyTorch's and OpenCV's threads, as `segformer predict --threads` sets them
    if args.calibrate:
        calibrate(args.root)
    if args.landmarks:
        landmarks(args.root, args.val_fraction, args.split_seed)
    predictor = Predictor(args.model, tta=args.tta)
    samples = (
        val_samples(args.root, args.faces, args.val_fraction, args.split_seed)
        if (args.scenes or args.aligned or args.video)
        else []
    )
    if args.aligned:
        aligned(predictor, samples)
    if args.scenes:
        from scenes import score_scenes

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            options = {"verify": not args.no_verify, **({"front": args.front} if args.front else {})}
            r = score_scenes(
                predictor, samples, scenes=args.scenes, seed=args.seed, options=options, behind=args.behind
            )
        print(json.dumps(r, indent=1))
        print(
            f"scenes: CE7454 on faces {r['scene_ce7454']:.4f} vs aligned crops {r['crop_ce7454']:.4f} "
            f"-> ratio {r['ratio']:.3f} ({'met' if r['ratio'] >= 0.9 else 'NOT MET'}, target >= 0.9); "
            f"non-face pixels labelled as a face: {r['false_positive']:.3%} "
            f"({'met' if r['false_positive'] < 0.01 else 'NOT MET'}, target < 1%); "
            f"{r['detections']} detections for {r['faces']} faces"
        )
    if args.huge:
        huge(args.model, args.root, verify=not args.no_verify, threads=args.threads)
    if args.video:
        video(predictor, samples, verify=not args.no_verify)
    return 0


if __name__ == "__main__":
    sys.exit(main())
