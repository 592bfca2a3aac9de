"""Training-speed target: SegFormer-B0 (150 classes), 512 x 512, batch 2, one step = forward + CE +
backward + AdamW: >= 1.3x the images/s of HF transformers with the same weights and optimizer.

    python benchmarks/bench_train.py                # needs the [hf] extra
"""

from __future__ import annotations

import sys

from _targets import main, parser
from segformer.bench import bench_train

if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    run = lambda: bench_train("segformer-b0", 512, 2, "hf", num_classes=150, threads=args.threads)  # noqa: E731
    sys.exit(main([(run, "speedup", 1.3, True)], args.json))
