"""The only module that knows about ranks: process-group setup for `torchrun` and reductions.

`torchrun --nproc_per_node N -m segformer train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; everything
else in the package asks this module whether it runs distributed and whether it is rank 0. `predict`
shares its inputs out (`shard`), writes one output folder from every process (`shared_output`) and
gathers the reports (`all_gather`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import SegformerError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str, timeout: timedelta = timedelta(minutes=30)) -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device.

    gloo on CPU, NCCL on CUDA (one GPU per process, chosen by LOCAL_RANK). `timeout`: how long a
    collective waits for the slowest process.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if env_world_size() > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timeout)
    return dev


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor in place over all processes (no-op when not distributed)."""
    if is_distributed():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_object(obj):
    """Rank 0's `obj` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_max(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor in place by its elementwise maximum over all processes."""
    if is_distributed():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (every process must call this at the same point)."""
    if not is_distributed():
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


T = TypeVar("T")


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of `items`: every world-size-th item from its rank on. Given the same
    sequence everywhere, each item goes to exactly one process (all of them when not distributed)."""
    return list(items[rank() :: world_size()])


def all_gather(obj: T) -> list[T]:
    """`obj` of every process, in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    objects: list[Any] = [None] * world_size()
    dist.all_gather_object(objects, obj)
    return objects


@contextmanager
def shared_output(open_output: Callable[[bool], AbstractContextManager[T]]) -> Iterator[T]:
    """An output that every process writes into, with one writer lock for all: rank 0 opens it first
    (``open_output(False)``, which takes the lock), the others after it (``open_output(True)``:
    joining, without the lock); at the end the others close first and rank 0 last, so the lock covers
    every write. A refusal on rank 0 (the output is another command's) is raised on every process.
    Not distributed: ``open_output(False)``."""
    if not is_distributed():
        with open_output(False) as out:
            yield out
        return
    with ExitStack() as first:
        error = None
        if is_main():
            try:
                out = first.enter_context(open_output(False))
            except SegformerError as err:
                error = str(err)
        error = broadcast_object(error)
        if error is not None:
            raise SegformerError(error)
        with ExitStack() as others:
            if not is_main():
                out = others.enter_context(open_output(True))
            yield out
            barrier()  # every process has written everything
        barrier()  # the others have closed: rank 0 closes last
