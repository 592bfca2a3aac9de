"""Default thread count against every explicit one, in one run: MicroSegFormer training steps and
predictions, images/s, and the ratio default / best for each.

The default is what the command line uses without --threads (`segformer.runtime.choose_threads`: as
many threads as there are idle cores when the command starts). ``--load N`` starts N processes that
spin on a core for the whole benchmark, the situation the default is made for (a laptop that is also
doing something else); the default is chosen after they have started, as a command started then would.
Each round times every setting in turn (interleaved), so a change in the machine's load affects all of
them alike; the medians of the rounds are reported.

    python benchmarks/bench_threads.py            # idle machine
    python benchmarks/bench_threads.py --load 2   # both cores of a 2-core machine busy
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from segformer import Predictor, create_model
from segformer.runtime import available_cores, choose_threads, tune_cpu_allocator

TARGET = 0.8  # default / best, for training and for prediction


def spin() -> None:
    while True:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", type=int, default=0, help="busy-spinning processes to run meanwhile (default 0)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per setting (default 5)")
    p.add_argument("--size", type=int, default=128, help="training image size (default 128)")
    p.add_argument("--batch-size", type=int, default=8, help="training batch (default 8)")
    p.add_argument("--predict-size", type=int, default=512, help="size of the predicted image (default 512)")
    args = p.parse_args()

    tune_cpu_allocator()
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for s in spinners:
        s.start()
    try:
        time.sleep(1.0 if spinners else 0.0)  # let the scheduler place them before measuring idleness
        choice = choose_threads(None)
        settings = [("default", choice.threads)] + [(str(t), t) for t in range(1, available_cores() + 1)]
        print(f"load: {args.load} spinning processes; default: {choice.describe()}", flush=True)

        torch.manual_seed(0)
        model = create_model("microsegformer", num_classes=19)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        images = torch.randn(args.batch_size, 3, args.size, args.size)
        masks = torch.randint(0, 19, (args.batch_size, args.size, args.size))
        predictor = Predictor(create_model("microsegformer", num_classes=19), image_size=args.predict_size)
        picture = np.random.default_rng(0).integers(
            0, 256, (args.predict_size, args.predict_size, 3), np.uint8
        )

        def train_step() -> None:
            F.cross_entropy(model.train()(images), masks).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def timed(fn, n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - start) / n

        speeds: dict[str, dict[str, list[float]]] = {
            name: {"train": [], "predict": []} for name, _ in settings
        }
        for threads in sorted({t for _, t in settings}):  # warm up every thread count once
            torch.set_num_threads(threads)
            train_step()
            predictor(picture)
        for r in range(args.rounds):
            for name, threads in settings:
                torch.set_num_threads(threads)
                speeds[name]["train"].append(args.batch_size / timed(train_step, 2))
                speeds[name]["predict"].append(1 / timed(lambda: predictor(picture), 2))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for s in spinners:
            s.terminate()
            s.join()

    medians = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in speeds.items()}
    print(f"\n{'threads':<12}{'train img/s':>14}{'predict img/s':>16}")
    for name, threads in settings:
        label = f"default ({threads})" if name == "default" else name
        print(f"{label:<12}{medians[name]['train']:>14.1f}{medians[name]['predict']:>16.1f}")
    ok = True
    for kind in ("train", "predict"):
        best_name = max((n for n, _ in settings if n != "default"), key=lambda n: medians[n][kind])
        ratio = medians["default"][kind] / medians[best_name][kind]
        ok &= ratio >= TARGET
        print(
            f"{kind}: default / best (--threads {best_name}) = {ratio:.2f} "
            f"(target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT MET'})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
