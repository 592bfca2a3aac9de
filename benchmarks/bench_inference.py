"""Inference speed targets (CPU, 2 threads, batch 1, 512 x 512, same weights on both sides):

- MicroSegFormer: >= 2.5x the images/s of the literal seed formulation, argmax identical;
- SegFormer-B0 (150 classes): >= 2x the images/s of HF transformers, logits within 1e-4.

    python benchmarks/bench_inference.py            # needs the [hf] extra for the B0 line
"""

from __future__ import annotations

import sys

from _targets import main, parser
from segformer.bench import bench_inference

if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    t = args.threads
    micro = lambda: bench_inference("microsegformer", 512, 1, "seed", threads=t)  # noqa: E731
    b0 = lambda: bench_inference("segformer-b0", 512, 1, "hf", num_classes=150, threads=t)  # noqa: E731
    cases = [(micro, "speedup", 2.5, True), (b0, "speedup", 2.0, True)]
    sys.exit(main(cases, args.json))
