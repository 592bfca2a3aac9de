"""Inference speed: our model as the `Predictor` runs it against a reference with the same weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SegformerError
from ..models.fuse import maybe_fuse
from ..models.summary import count_flops
from .memory import rows_with_memory
from .references import comparable_model, load_reference
from .report import Report, alternate, gemm_flops_per_s, hw, process_settings, timed, title

BACKENDS = ("torch", "compile", "onnxruntime")


def ours_inference(model: nn.Module, backend: str = "torch") -> Callable[[Tensor], Tensor]:
    """What the `Predictor` runs: the fused model, eager, compiled or exported to ONNX Runtime."""
    if backend not in BACKENDS:
        raise SegformerError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        from ..inference.onnx import OnnxRuntimeModel

        return OnnxRuntimeModel.from_model(model.eval())
    net = maybe_fuse(model.eval())
    return torch.compile(net, dynamic=False) if backend == "compile" else net


TIE_GAP = 2e-4  # twice the logit tolerance of an exact rewrite


def compare_logits(ours: Tensor, ref: Tensor) -> dict[str, Any]:
    """Max abs logit difference and argmax agreement. A pixel whose argmax differs is a tie when its
    top-2 logit gap (in `ref`) is at most `TIE_GAP`: two functions equal within a 1e-4 logit
    tolerance may order such a pixel either way."""
    ours, ref = ours.float(), ref.float()
    diff = float((ours - ref).abs().max())
    differ = ours.argmax(1) != ref.argmax(1)
    out: dict[str, Any] = {"max_abs_logit_diff": f"{diff:.2e}"}
    if not differ.any():
        out["argmax"] = f"identical ({differ.numel()} pixels)"
        return out
    top2 = ref.permute(0, 2, 3, 1)[differ].topk(2, dim=-1).values
    gaps = top2[:, 0] - top2[:, 1]
    real = int((gaps > TIE_GAP).sum())
    kind = "all ties" if real == 0 else f"{real} beyond float rounding"
    gap = float(gaps.max())
    out["argmax"] = f"{int(differ.sum())} of {differ.numel()} pixels differ, {kind} (top-2 gap <= {gap:.1e})"
    return out


def bench_inference(
    name: str,
    size: int | Sequence[int] = 512,
    batch: int = 1,
    compare: str = "none",
    *,
    num_classes: int | None = None,
    backend: str = "torch",
    threads: int = 2,
    warmup: int = 3,
    rounds: int = 10,
    memory: bool = True,
    tune: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Report:
    """Images/s of model `name` at `size` and `batch` against the `compare` reference (same weights);
    with `memory`, each side's peak memory is measured in a subprocess."""
    process_settings(threads, tune)
    h, w = hw(size)
    model = comparable_model(name, num_classes, compare, overrides).eval()
    reference = load_reference(compare)
    x = torch.randn(batch, model.config.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    peak = gemm_flops_per_s()  # before the models: a quiet moment
    fns: dict[str, Callable[[], Any]] = {}
    ours = ours_inference(model, backend)
    flops = {f"ours ({backend})": count_flops(maybe_fuse(model), (h, w))[""] * batch}
    compile_s = None
    if backend == "compile":
        with torch.inference_mode():
            compile_s = timed(lambda: ours(x))
    fns[f"ours ({backend})"] = lambda: ours(x)
    ref = reference(model) if reference is not None else None
    if ref is not None:
        ref.module.eval()
        fns[ref.name] = lambda: ref.forward(x)
        flops[ref.name] = count_flops(model, (h, w))[""] * batch  # the literal formulation
    with torch.inference_mode():
        times = alternate(fns, warmup, rounds)
        checks = compare_logits(ours(x), ref.forward(x)) if ref is not None else {}
    spec = {"name": name, "num_classes": model.config.num_classes, "compare": compare,
            "overrides": overrides or {}, "backend": backend}  # fmt: skip
    rows = rows_with_memory(times, batch, flops, spec if memory else None, (h, w), "infer", threads, tune)
    report = Report(title("inference", name, model, h, w, batch, threads), rows, peak, checks)
    if compile_s is not None:
        report.notes.append(f"torch.compile: first call {compile_s:.1f} s")
    if ref is not None:
        report.notes += ref.notes
    return report
