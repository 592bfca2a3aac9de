"""Memory target: SegFormer-B0 (19 classes) inference at 1024 x 2048, batch 1, peak memory <= 0.7x HF
transformers' (each side's peak-RSS growth over one forward pass, measured in a fresh process).

    python benchmarks/bench_memory.py               # needs the [hf] extra; ~1 GB RAM per side
"""

from __future__ import annotations

import sys

from _targets import main, parser
from segformer.bench import bench_inference

if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    run = lambda: bench_inference(  # noqa: E731
        "segformer-b0", (1024, 2048), 1, "hf", num_classes=19, threads=args.threads, warmup=1, rounds=3
    )
    sys.exit(main([(run, "memory_ratio", 0.7, False)], args.json))
