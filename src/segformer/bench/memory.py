"""Peak memory of one step, each side in a fresh process (``python -m segformer.bench``, whose
`__main__` runs the step): the resident-set high-water mark during the step minus the resident set
before it, after imports, model, optimizer and input exist."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from typing import Any

from ..errors import SegformerError
from .report import Row


def rows_with_memory(
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


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SegformerError(f"/proc/self/status has no {field}")


def reset_peak_rss_kb() -> int:
    """Reset the high-water mark to the current resident set and return that (KB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS")
    except OSError:  # not Linux: the process-lifetime peak, which imports may already have set
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1 if sys.platform == "linux" else 1024)


def peak_rss_kb() -> int:
    try:
        return _status_kb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1 if sys.platform == "linux" else 1024)
