"""What a benchmark reports: median seconds per call of each side, images/s, FLOP utilisation against
the machine's practical peak, and the ratio of the first side to the second."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..runtime import tune_cpu_allocator


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


def process_settings(threads: int, tune: bool) -> None:
    """What every benchmark process runs under, both sides alike: `threads` PyTorch threads and, with
    `tune`, the malloc settings of training and the Predictor (`segformer.runtime.tune_cpu_allocator`)."""
    torch.set_num_threads(threads)
    if tune:
        tune_cpu_allocator()


_GEMM_PEAK: dict[int, float] = {}


def gemm_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
    """Float32 FLOP/s of an n x n x n matrix product at the current thread count (the practical peak):
    the best of `repeats`, measured once per process and thread count."""
    threads = torch.get_num_threads()
    if threads not in _GEMM_PEAK:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        _GEMM_PEAK[threads] = 2 * n**3 / min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return _GEMM_PEAK[threads]


def timed(fn: Callable[[], Any]) -> float:
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
    ratio_label: str | None = None  # names the ratio; default "ours / REFERENCE"

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
            label = self.ratio_label or f"ours / {self.rows[1].side}"
            text = f"{label}: {ratio['speedup']:.2f}x images/s"
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


def title(what: str, name: str, model: torch.nn.Module, h: int, w: int, batch: int, threads: int) -> str:
    k = model.config.num_classes
    return f"{what}: {name} ({k} classes) at {h}x{w}, batch {batch}, {threads} CPU threads"


def hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
