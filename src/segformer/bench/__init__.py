"""Speed benchmarks: our models and a reference implementation with the same weights, side by side.

`bench_inference` / `bench_train` time both sides in one process, interleaved (one call of each per
round, after warm-up), and report medians: latency, images/s, FLOP utilisation and peak memory,
and the ratios. Alternating the sides spreads any drift of a shared machine over both. The scripts in
``benchmarks/`` and ``segformer bench`` run this code.

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
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convert.hf import HF_LAYER_NORM_EPS
from ..engine.losses import SegmentationLoss
from ..errors import SegformerError
from ..models import create_model
from ..models.fuse import maybe_fuse
from ..runtime import tune_cpu_allocator
from ..summary import count_flops

REFERENCES = {
    "hf": "segformer.bench:hf_reference",
    "seed": "segformer.bench.seed:seed_reference",
    "none": "",
}
BACKENDS = ("torch", "compile", "onnxruntime")


@dataclass
class Reference:
    """Another implementation of the same network: ``forward`` maps images to logits at the input
    size (eval mode), ``loss`` maps images and labels to a training loss (train mode)."""

    name: str
    module: nn.Module
    forward: Callable[[Tensor], Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]


def hf_reference(model: nn.Module) -> Reference:
    """transformers' SegformerForSemanticSegmentation with `model`'s weights (SegFormer variants only)."""
    try:
        import transformers
    except ImportError:
        raise SegformerError("--compare hf needs transformers: pip install segformer[hf]") from None
    from ..convert import save

    with tempfile.TemporaryDirectory() as tmp:  # through our HF writer and transformers' own loader
        save(model, tmp, format="hf")
        hf, info = transformers.SegformerForSemanticSegmentation.from_pretrained(
            tmp, output_loading_info=True
        )
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise SegformerError(f"transformers did not take every weight: {info}")

    def forward(x: Tensor) -> Tensor:
        logits = hf(pixel_values=x).logits  # stride 4
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def loss(x: Tensor, y: Tensor) -> Tensor:
        return hf(pixel_values=x, labels=y).loss  # CE on logits upsampled to the labels, ignore 255

    return Reference("hf transformers", hf, forward, loss)


def load_reference(compare: str) -> Callable[[nn.Module], Reference] | None:
    """The factory named by `compare`: a key of `REFERENCES` or ``"module:function"``; None for none."""
    spec = REFERENCES.get(compare, compare)
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise SegformerError(
            f"unknown comparison {compare!r}: use {', '.join(REFERENCES)} or module:function"
        ) from None


def build_model(
    name: str, num_classes: int | None, compare: str, overrides: dict[str, Any] | None = None
) -> nn.Module:
    """A registered model with fresh weights and config `overrides`; for ``compare="hf"`` with
    transformers' LayerNorm eps (1e-5 everywhere), so that both sides compute the same function."""
    overrides = dict(overrides or {})
    if compare == "hf":
        overrides.update(norm_eps=HF_LAYER_NORM_EPS, embed_norm_eps=HF_LAYER_NORM_EPS)
    return create_model(name, num_classes=num_classes, **overrides)


def alternate(fns: dict[str, Callable[[], Any]], warmup: int = 3, rounds: int = 10) -> dict[str, list[float]]:
    """Wall-clock seconds of `rounds` calls of each function, interleaved, after `warmup` calls each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


_GEMM_PEAK: dict[int, float] = {}


def gemm_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
    """Float32 FLOP/s of an n x n x n matrix product at the current thread count (the practical peak):
    the best of `repeats`, measured once per process and thread count."""
    threads = torch.get_num_threads()
    if threads not in _GEMM_PEAK:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        _GEMM_PEAK[threads] = 2 * n**3 / min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return _GEMM_PEAK[threads]


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Row:
    side: str
    seconds: float  # median per call
    batch: int
    flops: float | None = None  # per call
    peak_mb: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds


@dataclass
class Report:
    title: str
    rows: list[Row]
    peak_flops: float
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ratio(self) -> dict[str, float]:
        """Ours relative to the reference: images/s ratio and peak-memory ratio (when measured)."""
        if len(self.rows) < 2:
            return {}
        ours, ref = self.rows
        out = {"speedup": ours.images_per_s / ref.images_per_s}
        if ours.peak_mb is not None and ref.peak_mb:
            out["memory_ratio"] = ours.peak_mb / ref.peak_mb
        return out

    def format(self) -> str:
        lines = [self.title, f"{'':<22}{'latency ms':>12}{'images/s':>11}{'peak MB':>10}{'FLOP util':>11}"]
        for r in self.rows:
            peak = f"{r.peak_mb:10.0f}" if r.peak_mb is not None else f"{'-':>10}"
            util = f"{100 * r.flops / r.seconds / self.peak_flops:10.1f}%" if r.flops else f"{'-':>11}"
            lines.append(f"{r.side:<22}{1e3 * r.seconds:12.1f}{r.images_per_s:11.2f}{peak}{util}")
        ratio = self.ratio()
        if ratio:
            text = f"ours / {self.rows[1].side}: {ratio['speedup']:.2f}x images/s"
            if "memory_ratio" in ratio:
                text += f", {ratio['memory_ratio']:.2f}x peak memory"
            lines.append(text)
        lines += [f"{k}: {v}" for k, v in self.checks.items()]
        lines += self.notes
        lines.append(f"(FLOP util: share of the {self.peak_flops / 1e9:.0f} GFLOP/s of a float32 GEMM here)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        rows = [{**r.__dict__, "images_per_s": r.images_per_s} for r in self.rows]
        return {"title": self.title, "rows": rows, "peak_flops": self.peak_flops, "checks": self.checks,
                **self.ratio()}  # fmt: skip


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def ours_inference(model: nn.Module, backend: str = "torch") -> Callable[[Tensor], Tensor]:
    """What the `Predictor` runs: the fused model, eager, compiled or exported to ONNX Runtime."""
    if backend not in BACKENDS:
        raise SegformerError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        from ..export import OnnxRuntimeModel

        return OnnxRuntimeModel.from_model(model.eval())
    net = maybe_fuse(model.eval())
    return torch.compile(net, dynamic=False) if backend == "compile" else net


TIE_GAP = 2e-4  # twice the logit tolerance of an exact rewrite


def compare_logits(ours: Tensor, ref: Tensor) -> dict[str, Any]:
    """Max abs logit difference and argmax agreement. A pixel whose argmax differs is a tie when its
    top-2 logit gap (in `ref`) is at most `TIE_GAP`: two functions equal within the 1e-4 logit
    tolerance of SPEC.md 1.5 may order such a pixel either way."""
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
    torch.set_num_threads(threads)
    if tune:
        tune_cpu_allocator()
    h, w = _hw(size)
    model = build_model(name, num_classes, compare, overrides).eval()
    reference = load_reference(compare)
    x = torch.randn(batch, model.config.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    peak = gemm_flops_per_s()  # before the models: a quiet moment
    fns: dict[str, Callable[[], Any]] = {}
    ours = ours_inference(model, backend)
    flops = {f"ours ({backend})": count_flops(maybe_fuse(model), (h, w))[""] * batch}
    compile_s = None
    if backend == "compile":
        with torch.inference_mode():
            compile_s = _timed(lambda: ours(x))
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
    rows = _rows(times, batch, flops, spec if memory else None, (h, w), "infer", threads, tune)
    report = Report(_title("inference", name, model, h, w, batch, threads), rows, peak, checks)
    if compile_s is not None:
        report.notes.append(f"torch.compile: first call {compile_s:.1f} s")
    return report


def bench_train(
    name: str,
    size: int | Sequence[int] = 512,
    batch: int = 2,
    compare: str = "none",
    *,
    num_classes: int | None = None,
    threads: int = 2,
    warmup: int = 2,
    rounds: int = 6,
    memory: bool = True,
    tune: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Report:
    """Training steps per second (forward + cross-entropy + backward + AdamW) against `reference`.

    Both sides start from the same weights and use the same optimizer (fused AdamW, as our trainer);
    our side runs the model and loss of `segformer train` (logits upsampled to the labels, CE).
    """
    torch.set_num_threads(threads)
    if tune:
        tune_cpu_allocator()
    h, w = _hw(size)
    model = build_model(name, num_classes, compare, overrides)
    reference = load_reference(compare)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.config.in_channels, h, w, generator=gen)
    y = torch.randint(0, model.config.num_classes, (batch, h, w), generator=gen)
    peak = gemm_flops_per_s()
    flops = {"ours": 3 * count_flops(model, (h, w), literal=False)[""] * batch}
    ref = reference(model) if reference is not None else None
    criterion = SegmentationLoss("ce")
    steps = {"ours": _train_step(model, lambda: criterion(model(x), y))}
    if ref is not None:
        steps[ref.name] = _train_step(ref.module, lambda: ref.loss(x, y))
        flops[ref.name] = 3 * count_flops(model, (h, w))[""] * batch
    times = alternate(steps, warmup, rounds)
    spec = {"name": name, "num_classes": model.config.num_classes, "compare": compare,
            "overrides": overrides or {}}  # fmt: skip
    rows = _rows(times, batch, flops, spec if memory else None, (h, w), "train", threads, tune)
    return Report(_title("training step", name, model, h, w, batch, threads), rows, peak)


def _rows(
    times: dict[str, list[float]],
    batch: int,
    flops: dict[str, float],
    memory_spec: dict[str, Any] | None,
    size: tuple[int, int],
    mode: str,
    threads: int,
    tune: bool,
) -> list[Row]:
    """One row per side (median time); with `memory_spec`, each side's peak memory from a subprocess."""
    rows = [Row(side, statistics.median(t), batch, flops[side]) for side, t in times.items()]
    if memory_spec is not None:
        for row, side in zip(rows, ("ours", "reference"), strict=False):
            row.peak_mb = peak_memory_mb(memory_spec, side, size, batch, mode, threads, tune)
    return rows


def _title(what: str, name: str, model: nn.Module, h: int, w: int, batch: int, threads: int) -> str:
    k = model.config.num_classes
    return f"{what}: {name} ({k} classes) at {h}x{w}, batch {batch}, {threads} CPU threads"


def _train_step(module: nn.Module, loss: Callable[[], Tensor]) -> Callable[[], None]:
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=True)

    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# -- peak memory, one fresh process per side --


def peak_memory_mb(
    spec: dict[str, Any], side: str, size: tuple[int, int], batch: int, mode: str, threads: int, tune: bool
) -> float:
    """Peak-RSS growth (MB) of one step of `side` ("ours" / "reference") in a fresh subprocess."""
    args = {"spec": spec, "side": side, "size": list(size), "batch": batch, "mode": mode,
            "threads": threads, "tune": tune}  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "segformer.bench", json.dumps(args)],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SegformerError(f"peak-memory subprocess failed: {proc.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def _memory_child(args: dict[str, Any]) -> dict[str, float]:
    torch.set_num_threads(args["threads"])
    if args["tune"]:
        tune_cpu_allocator()
    spec = args["spec"]
    name, num_classes, compare = spec["name"], int(spec["num_classes"]), spec["compare"]
    model = build_model(name, num_classes, compare, spec["overrides"])
    h, w = args["size"]
    x = torch.randn(args["batch"], model.config.in_channels, h, w)
    train = args["mode"] == "train"
    if args["side"] == "reference":
        factory = load_reference(compare)
        if factory is None:
            raise SegformerError("no reference to measure (compare is 'none')")
        ref = factory(model)
        del model
        module, forward, loss = ref.module, ref.forward, ref.loss
    else:
        module = model
        forward = model if train else ours_inference(model, spec.get("backend", "torch"))
        criterion = SegmentationLoss("ce")

        def loss(x: Tensor, y: Tensor) -> Tensor:
            return criterion(model(x), y)

    if train:
        y = torch.randint(0, num_classes, (x.shape[0], h, w))
        step = _train_step(module, lambda: loss(x, y))
    else:
        module.eval()

        def step() -> None:
            with torch.inference_mode():
                forward(x)

    before = _reset_peak_rss_kb()
    step()
    return {"peak_mb": (_peak_rss_kb() - before) / 1024}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SegformerError(f"/proc/self/status has no {field}")


def _reset_peak_rss_kb() -> int:
    """Reset the high-water mark to the current resident set and return that (KB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS")
    except OSError:  # not Linux: the process-lifetime peak, which imports may already have set
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1 if sys.platform == "linux" else 1024)


def _peak_rss_kb() -> int:
    try:
        return _status_kb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1 if sys.platform == "linux" else 1024)
