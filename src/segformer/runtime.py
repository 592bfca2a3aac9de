"""Process-level settings that make PyTorch faster on a CPU without changing any result: the allocator
(`tune_cpu_allocator`) and the number of compute threads (`set_threads`).

Segmentation logits and losses at full resolution are large short-lived tensors (19 classes x 256 x
256 px x 16 images is 80 MB). glibc's malloc serves blocks over its mmap threshold (128 KB growing
to at most 32 MB) with a fresh ``mmap`` and unmaps them when freed, so every training step makes
the kernel page-fault and zero that memory again, 4 KB at a time: on a 2-core CPU a MicroSegFormer
training step spent more time in page faults than in the loss itself.

`tune_cpu_allocator` turns mmap off for malloc (``M_MMAP_MAX = 0``) and raises the trim threshold to
1 GB (``M_TRIM_THRESHOLD``): big blocks then come from the heap, stay mapped when freed and are
reused by the next step. Measured with `benchmarks/bench_train.py`-style loops (MicroSegFormer,
batch 16, 2 threads): 128 px ~85 -> ~115 images/s, 256 px ~16 -> ~31 images/s. (PyTorch's
``THP_MEM_ALLOC_ENABLE=1`` helped less: huge pages fault faster but are still faulted every step.)

No computed value changes. The cost is memory that stays with the process after a peak instead of
returning to the system, which suits a training or inference process. The setting is process-wide;
`segformer.engine.train.train` and the CLI call this, library users may. Other C libraries (musl,
macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SegformerError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def tune_cpu_allocator() -> bool:
    """Apply the malloc settings above (once per process); returns whether glibc accepted them."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):  # not glibc
            return False
        _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _applied


# -- threads --------------------------------------------------------------------------------------------
#
# PyTorch starts one OpenMP thread per core. When other processes keep some cores busy, the extra
# threads do not just run slower: every parallel region waits for its slowest thread, OpenMP threads
# spin while they wait, and a descheduled thread stalls the whole region. Measured on this project's
# 2-core machine (MicroSegFormer training steps at 128 px, batch 8, images/s):
#
#   other busy processes   1 thread   2 threads   2 threads, OMP_WAIT_POLICY=PASSIVE
#   none                        91         152          72
#   1                           95      29-61          64-69
#   2                        55-58          46          74
#
# Using every core is best on an idle machine and the worst choice as soon as one core is taken; the
# passive wait policy halves idle speed (threads sleep and wake between small operators), so it is not
# the default either. The default counts the cores that are idle right now and uses that many threads.


@dataclass(frozen=True)
class ThreadChoice:
    """The number of compute threads in use and why (``reason`` is printed at the start of a run)."""

    threads: int
    cores: int
    reason: str
    adaptive: bool = False  # a default choice, which a long run may revise (`ThreadTuner`); not --threads

    def describe(self) -> str:
        plural = "s" if self.threads != 1 else ""
        return f"{self.threads} CPU thread{plural} of {self.cores} cores ({self.reason})"


_threads: ThreadChoice | None = None


def thread_choice() -> ThreadChoice:
    """What `set_threads` chose last in this process (or PyTorch's own setting if it was never called),
    for start lines and summaries."""
    import torch

    if _threads is not None and _threads.threads == torch.get_num_threads():
        return _threads
    return ThreadChoice(torch.get_num_threads(), available_cores(), "set by the program")


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, or None where it does not exist."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    return values[3] + values[4], sum(values[:8])  # idle + iowait; user..steal


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_workers(requested: int | None, device: str) -> int:
    """DataLoader workers: `requested` when given, else for a CPU run the cores the compute threads
    leave over (at most 4; none on a 2-core machine running 2 threads, where workers preempt the compute
    threads at every OpenMP barrier: end to end 0.79x of the bare step with 2 workers against 0.88x
    with none, at 256² on 2 cores), and for a GPU run up to 4, keeping one core for the training loop."""
    if requested is not None:
        return requested
    import torch

    cores = available_cores()
    if device == "cpu":
        return max(0, min(4, cores - torch.get_num_threads()))
    return max(1, min(4, cores - 1))


def idle_cores(interval: float = 0.25) -> float | None:
    """How many cores no process used during the next `interval` seconds (this one sleeps meanwhile),
    from /proc/stat; None where that is not available. Unlike the load average (a 1-minute mean) it
    reflects the machine now, not the run that has just finished."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(interval)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return None
    share = (after[0] - before[0]) / (after[1] - before[1])
    return share * (os.cpu_count() or 1)


def choose_threads(requested: int | None = None) -> ThreadChoice:
    """`requested` threads (capped at the cores available), or by default as many as there are idle
    cores now (at least 1; all of them where idleness cannot be measured)."""
    cores = available_cores()
    if requested is not None:
        if requested < 1:
            raise SegformerError(f"--threads must be at least 1 (got {requested})")
        return ThreadChoice(requested, cores, "--threads")
    idle = idle_cores()
    if idle is None:
        return ThreadChoice(cores, cores, "default: all cores", adaptive=True)
    threads = max(1, min(cores, round(idle)))
    return ThreadChoice(threads, cores, f"default: {idle:.1f} cores idle now; --threads N to choose", True)


def set_threads(requested: int | None = None) -> ThreadChoice:
    """Choose the thread count (`choose_threads`) and apply it to PyTorch and OpenCV; the one place the
    command line sets threads."""

    choice = choose_threads(requested)
    apply_threads(choice)
    return choice


def apply_threads(choice: ThreadChoice) -> None:
    """Set PyTorch's and OpenCV's compute threads to `choice` (what `thread_choice` then reports)."""
    import torch

    global _threads
    _threads = choice
    torch.set_num_threads(choice.threads)
    try:
        import cv2

        cv2.setNumThreads(choice.threads)
    except ImportError:
        pass


class ThreadTuner:
    """Re-decides the compute threads of a long run (train, experiment, demo) while it runs.

    The default thread count comes from a quarter-second look at the idle cores when the command
    starts; other processes come and go during a run of hours, and with them the count that runs
    fastest (see the table above). The run reports the speed of each period it measured (an epoch,
    in images/s) to `measured`. After `warmup` periods, and then every `probe_every` periods, the tuner
    tries a neighbouring count (one fewer or one more thread, in turn) for one period, keeps it when it
    measured more than `margin` faster than the period before, and goes back otherwise. A count given
    with ``--threads N`` is never changed (`for_run` returns None for it).

    `apply` sets a count (default: `apply_threads`): tests give their own, and their own measurements.
    """

    def __init__(
        self,
        threads: int,
        cores: int,
        apply: Callable[[int], None] | None = None,
        probe_every: int = 4,
        margin: float = 0.05,
        warmup: int = 1,
    ) -> None:
        self.threads, self.cores, self.margin, self.probe_every = threads, cores, margin, probe_every
        self._apply = apply or (lambda n: apply_threads(ThreadChoice(n, cores, "measured fastest now", True)))
        self._wait = warmup + 1  # periods until the next probe (the first ones warm caches and workers)
        self._probe_from: tuple[int, float] | None = None  # (threads, rate) the running probe is against
        self._direction = -1  # the first probe tries one thread fewer

    @classmethod
    def for_run(cls) -> ThreadTuner | None:
        """A tuner of the process's thread count, or None where the count was given (``--threads``) or
        set by the program rather than chosen by default."""
        choice = thread_choice()
        if not choice.adaptive or choice.cores < 2:
            return None
        return cls(choice.threads, choice.cores)

    def measured(self, rate: float) -> str | None:
        """Report the speed of the period just ended, run at `threads`; sets the count for the next
        period. Returns a line for the log when the run moves to another count for good."""
        if self._probe_from is not None:
            before, before_rate = self._probe_from
            self._probe_from, self._wait = None, self.probe_every
            if rate > before_rate * (1 + self.margin):
                plural = "s" if self.threads != 1 else ""
                return (
                    f"threads: {before} -> {self.threads} ({self.threads} thread{plural} measured "
                    f"{rate:.3g}/s against {before_rate:.3g}/s with {before}: the machine's load changed)"
                )
            self._set(before)  # no faster: back
            return None
        self._wait -= 1
        if self._wait <= 0:
            candidate = self._candidate()
            if candidate is None:
                self._wait = self.probe_every
            else:
                self._probe_from = (self.threads, rate)
                self._set(candidate)
        return None

    def _candidate(self) -> int | None:
        """One thread fewer or one more, in turn (the other where one is out of range)."""
        for direction in (self._direction, -self._direction):
            candidate = self.threads + direction
            if 1 <= candidate <= self.cores:
                self._direction = -direction
                return candidate
        return None

    def _set(self, threads: int) -> None:
        self.threads = threads
        self._apply(threads)


# -- memory ---------------------------------------------------------------------------------------------


def available_memory(device: str | object = "cpu") -> int | None:
    """Bytes that `device` can still allocate: free GPU memory for CUDA; for the CPU the kernel's
    ``MemAvailable`` plus free swap, capped by this process's cgroup limit; None where unknown."""
    import torch

    device = torch.device(device)  # type: ignore[arg-type]
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        info = dict(
            line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line
        )
        free = (int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:  # cgroup v2: a container's own limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = min(free, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return free


def check_memory(nbytes: int, what: str, device: str | object = "cpu") -> None:
    """A one-line `SegformerError` before the work when `what` needs more than `nbytes` bytes and
    `device` has less available (`available_memory`), rather than a failure inside the allocator."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        raise SegformerError(
            f"{what} needs at least {nbytes / 2**30:,.1f} GiB of memory; {device} has "
            f"{free / 2**30:,.1f} GiB available"
        )


def peak_memory(model: Any, input_shape: Sequence[int], train: bool = False) -> int:
    """Bytes that running `model` on a float32 input of `input_shape` holds at its peak: forward, and
    with `train` the backward pass too (the activations autograd keeps, the gradients), counted
    without allocating anything. `model` must live on the meta device (build it inside
    ``with torch.device("meta"):``), where tensors have shapes but no storage.

    Every tensor an operator creates is counted from its creation until it is freed (views and
    in-place results share their input's memory and count nothing), so the peak is that of the real
    run up to the allocator's own overhead and the workspaces of kernels: within about 20% for
    MicroSegFormer at 128-512 px on a CPU (measured against the process's peak RSS). Parameters count
    once; optimizer state is the caller's to add."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0

        def _freed(self, nbytes: int) -> None:
            self.live -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            returns = func._schema.returns
            for i, t in enumerate(out if isinstance(out, (tuple, list)) else (out,)):
                if not isinstance(t, torch.Tensor) or (
                    i < len(returns) and returns[i].alias_info is not None
                ):
                    continue  # not a tensor, or a view / in-place result: no memory of its own
                nbytes = t.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._freed, nbytes)
            return out

    params = sum(p.numel() * p.element_size() for p in model.parameters())
    counter = LiveBytes()
    with counter, torch.set_grad_enabled(train):
        x = torch.empty(*input_shape, device="meta")  # (counted: the input is memory too)
        out = model(x)
        if train:
            out.float().mean().backward()
        del out
    return params + counter.peak
