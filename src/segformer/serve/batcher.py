"""One thread owns the model; requests reach it through a bounded queue and are run in batches.

The event loop admits a request only while fewer than `capacity` are waiting or running (`admit`; the
caller answers 503 otherwise), so the memory held by images in flight is bounded. The model thread
takes the first waiting job, then more for at most `max_wait` seconds or until it has `max_batch`,
runs them with one call of `run` and answers each job's future as soon as `run` reports it. A job
whose caller gave up (its future cancelled by a time limit) is skipped if it has not started; its
admission is given back only when the model thread is done with it, so abandoned work still counts
against the bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("segformer.serve")

Answer = Callable[[int, Any, BaseException | None], None]
"""``answer(index, result, error)``: how `run` reports job `index` of its batch."""


class Job:
    __slots__ = ("finished", "future", "item", "orphaned")

    def __init__(self, item: Any, future: asyncio.Future) -> None:
        self.item = item
        self.future = future
        self.finished = False  # the model thread is done with it (set on the event loop)
        self.orphaned = False  # its ticket was closed first: finishing gives the admission back


class Ticket:
    """One admitted request. `close` it when the request is answered (``finally``)."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._job: Job | None = None
        self._closed = False

    async def run(self, item: Any, timeout: float) -> Any:
        """The result of `item`, computed on the model thread; `TimeoutError` after `timeout` seconds."""
        job = self._job = self._batcher._enqueue(item)
        return await asyncio.wait_for(job.future, max(timeout, 0.0))  # cancels the future on timeout

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._job is not None and not self._job.finished:
            self._job.orphaned = True  # still queued or running: the model thread releases it
        else:
            self._batcher._release()


class Batcher:
    """Runs ``run(items, answer)`` on batches of items on a thread of its own (see the module docstring).

    `threads` sets PyTorch's intra-op threads on the model thread (a per-thread setting under OpenMP);
    `warmup` runs there first, before `ready` is set.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Any], Answer], None],
        *,
        max_batch: int = 8,
        max_wait: float = 0.005,
        capacity: int = 32,
        threads: int | None = None,
        warmup: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1 or capacity < 1 or max_wait < 0:
            raise ValueError("max_batch and capacity must be >= 1, max_wait >= 0")
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.capacity = capacity
        self.threads = threads
        self._warmup = warmup
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.pending = 0
        """Admitted requests not yet answered (read and written on the event loop only)."""
        self.seconds_per_item = 0.0
        """Moving average of the model thread's time per item (for Retry-After)."""
        self.processed = 0

    # -- event loop side ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the model thread (from the event loop that will submit jobs)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._serve, name="segformer-model", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish every queued job, then end the model thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def admit(self) -> Ticket | None:
        """A ticket, or None when `capacity` requests are already in flight."""
        if self.pending >= self.capacity:
            return None
        self.pending += 1
        return Ticket(self)

    def retry_after(self) -> int:
        """Seconds after which a refused client may expect room: the time to work off the backlog."""
        return max(1, math.ceil(self.pending * self.seconds_per_item))

    def _release(self) -> None:
        self.pending -= 1

    def _enqueue(self, item: Any) -> Job:
        if not self.alive:
            raise RuntimeError("the model thread is not running")
        job = Job(item, asyncio.get_running_loop().create_future())
        self._queue.put(job)
        return job

    def _finish(self, job: Job, result: Any, error: BaseException | None) -> None:
        if job.finished:
            return
        job.finished = True
        if not job.future.done():
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
        if job.orphaned:
            self._release()

    # -- model thread -------------------------------------------------------------------------------

    def _post(self, job: Job, result: Any, error: BaseException | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._finish, job, result, error)

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """`first` and the jobs that arrive within `max_wait` (at most `max_batch`); True when the
        stop sentinel was met."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _serve(self) -> None:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        if self._warmup is not None:
            try:
                self._warmup()
            except Exception:
                log.exception("warm-up failed")
        self.ready.set()
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            live = []
            for job in batch:
                if job.future.cancelled():
                    self._post(job, None, None)  # timed out while waiting: skipped
                else:
                    live.append(job)
            if live:
                self._process(live)

    def _process(self, jobs: list[Job]) -> None:
        """Run one batch; every job is answered, by `run` or here with its error."""
        answered: set[int] = set()

        def answer(i: int, result: Any, error: BaseException | None) -> None:
            answered.add(i)
            self._post(jobs[i], result, error)

        start = time.perf_counter()
        error: BaseException = RuntimeError("the model thread gave no answer")
        try:
            self._run([job.item for job in jobs], answer)
        except Exception as err:
            error = err
        for i, job in enumerate(jobs):
            if i not in answered:
                self._post(job, None, error)
        per_item = (time.perf_counter() - start) / len(jobs)
        first = self.processed == 0
        self.processed += len(jobs)
        self.seconds_per_item = per_item if first else 0.8 * self.seconds_per_item + 0.2 * per_item
