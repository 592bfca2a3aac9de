"""Training-speed targets.

- default: SegFormer-B0 (150 classes), 512 x 512, batch 2, one step = forward + CE + backward + AdamW:
  >= 1.3x the images/s of HF transformers with the same weights and optimizer (needs the [hf] extra).
- ``--end-to-end ROOT``: MicroSegFormer trained as `segformer train` trains it (the face recipe, its
  loader, workers and augmentation ``both``) on the faces at ROOT, at 256 x 256 and 512 x 512, batch 32:
  end-to-end images/s >= 0.85x the bare training step, both measured in one run. Each end-to-end block
  starts its workers on an empty pipeline: one epoch per block at 256, 6 steps at 512 (a minute each).

    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --end-to-end /path/to/celebamask-mini
"""

from __future__ import annotations

import sys
from pathlib import Path

from _targets import main, parser
from segformer.bench import bench_train, bench_train_end_to_end

if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--end-to-end", type=Path, metavar="ROOT", help="faces dataset for the end-to-end targets")
    args = p.parse_args()
    if args.end_to_end is None:
        run = lambda: bench_train("segformer-b0", 512, 2, "hf", num_classes=150, threads=args.threads)  # noqa: E731
        sys.exit(main([(run, "speedup", 1.3, True)], args.json))

    def end_to_end(size: int, steps: int | None):
        return lambda: bench_train_end_to_end(
            "microsegformer", args.end_to_end, size, 32, augment="both", threads=args.threads, steps=steps
        )

    targets = [(end_to_end(size, steps), "speedup", 0.85, True) for size, steps in ((256, None), (512, 6))]
    sys.exit(main(targets, args.json))
