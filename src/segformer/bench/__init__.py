"""Speed benchmarks: our models and a reference implementation with the same weights, side by side.

`bench_inference` / `bench_train` time both sides in one process, interleaved (one call of each per
round, after warm-up), and report medians: latency, images/s, FLOP utilisation and peak memory,
and the ratios. Alternating the sides spreads any drift of a shared machine over both. The scripts in
``benchmarks/`` and ``segformer bench`` run this code. `bench_train_end_to_end` times our training
step fed by the real data pipeline against the same step on a batch already in memory.

- **References** are factories ``model -> Reference`` named ``"module:function"``; ``hf`` is
  `hf_reference`: transformers' SegformerForSemanticSegmentation holding our model's weights (through
  the converter), its stride-4 logits upsampled to the input size as ours are. Our side runs the fused
  model (`segformer.models.fuse`) under `torch.inference_mode`, as the `Predictor` does.
- **FLOP utilisation** = the FLOPs each side computes (`summary.count_flops`: the literal
  formulation for the references, the exact cheaper rewrite for ours; forward + backward counted as
  3x forward) per second, divided by the FLOP/s this process reaches in a 2048^3 float32 matrix
  product: the share of the machine's practical peak that each implementation turns into arithmetic.
  Images/s, not utilisation, is what the ratios compare: doing less arithmetic is part of being fast.
- **Peak memory** is measured in a fresh subprocess per side (``python -m segformer.bench``): the
  resident-set high-water mark during one inference / training step minus the resident set before
  it, after imports, model, optimizer and input exist (Linux: the mark is reset through
  ``/proc/self/clear_refs`` and read from ``VmHWM``). It counts every byte the step touches
  (activations, workspaces, allocator slack), not only torch tensors.
- Threads: ``torch.set_num_threads(threads)`` (2 by default) and, on both sides, the malloc settings
  of `segformer.runtime.tune_cpu_allocator` that training and the Predictor use (``tune=False`` to
  measure with glibc's defaults).

Modules: `report` (interleaved timing, `Report`, FLOP utilisation), `references` (the other
implementations), `inference` and `training` (the benchmarks), `memory` (peak memory per side).
"""

from .inference import BACKENDS, bench_inference, compare_logits, ours_inference
from .memory import peak_memory_mb
from .references import REFERENCES, Reference, comparable_model, hf_reference, load_reference
from .report import Report, Row, alternate, gemm_flops_per_s
from .training import bench_train, bench_train_end_to_end

__all__ = [
    "BACKENDS",
    "REFERENCES",
    "Reference",
    "Report",
    "Row",
    "alternate",
    "bench_inference",
    "bench_train",
    "bench_train_end_to_end",
    "comparable_model",
    "compare_logits",
    "gemm_flops_per_s",
    "hf_reference",
    "load_reference",
    "ours_inference",
    "peak_memory_mb",
]
