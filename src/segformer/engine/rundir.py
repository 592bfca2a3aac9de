"""The run folder of `segformer train`: the names of its files, its lock and its metrics log.

::

    RUN/config.yaml        the resolved recipe (model, data, train)
    RUN/state.pt           resumable training state (plain types: loads with weights_only=True),
                           including every epoch's metrics record
    RUN/last/ RUN/best/    model directories (config.json + model.safetensors) of the last / best evaluation
    RUN/metrics.jsonl      one JSON line per epoch, rewritten from state.pt after every checkpoint
    RUN/best_scores.json   all validation scores of the best epoch
    RUN/curves.png         loss, validation scores and learning rate per epoch
    RUN/summary.json       how the run ended, best epoch and scores, where things are
    RUN/lock               held while a process writes the run: its pid and host

Every file is written atomically (`segformer.fileio`): a write goes to ``.NAME.XXXX.tmp`` and is
renamed over ``NAME`` once complete, so a killed process leaves at worst such a temporary behind,
which the next writer of the folder removes (`RunDir.remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import distributed
from ..config import RunConfig, read_recipe
from ..errors import SegformerError
from ..fileio import acquire_lock, make_dirs, release_lock, write_text


class _File:
    """A file of the run folder: ``run.NAME`` is ``run.path / filename``."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def __get__(self, run: RunDir | None, owner: type) -> Any:
        return self if run is None else run.path / self.filename  # (on the class: the descriptor)


@dataclass(frozen=True)
class RunDir:
    """A training run folder; every name of a file in it comes from here."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    config = _File("config.yaml")
    state = _File("state.pt")
    metrics = _File("metrics.jsonl")
    summary = _File("summary.json")
    best = _File("best")
    last = _File("last")
    best_scores = _File("best_scores.json")
    curves = _File("curves.png")
    lock_file = _File("lock")
    tensorboard = _File("tensorboard")

    def has_state(self) -> bool:
        return self.state.is_file()

    def is_finished(self) -> bool:
        return self.summary.is_file()

    def read_config(self) -> RunConfig:
        """The run's recipe (runs written before a key was renamed included: `segformer.config.RENAMED`)."""
        return read_recipe(self.config)

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.summary.read_text())
        except (OSError, ValueError) as err:
            raise SegformerError(f"{self.summary}: cannot read ({err})") from None

    def read_metrics(self) -> list[dict[str, Any]]:
        """The epoch records of metrics.jsonl; a torn last line (a write cut by a kill, in folders
        written before the log was rewritten atomically) is left out."""
        if not self.metrics.is_file():
            return []
        records = []
        for line in self.metrics.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl from `records` (atomically: never a torn line)."""
        write_text(self.metrics, "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder's lock for the duration: a second writer gets a `SegformerError`.

        The lock is an advisory ``flock`` on ``RUN/lock``, which the kernel releases when its process
        dies however it dies, so a lock left behind by a killed run (its pid no longer alive) is
        taken over without a race. The file names the owner for the error message of the next one.
        """
        created = not self.path.exists()
        make_dirs(self.path)
        fd = acquire_lock(self.lock_file)  # (the one writer lock of segformer.fileio)
        try:
            yield
        finally:
            release_lock(self.lock_file, fd)
            try:
                if created and not any(self.path.iterdir()):
                    self.path.rmdir()  # a run that failed before writing anything leaves nothing
            except OSError:
                pass

    @contextmanager
    def lock_on_every_process(self) -> Iterator[None]:
        """`lock`, taken by the main process, for all processes of a distributed run: each of them
        enters the block, or raises the main process's error."""
        with contextlib.ExitStack() as stack:
            error = None
            if distributed.is_main():
                try:
                    stack.enter_context(self.lock())
                except SegformerError as err:
                    error = str(err)
            error = distributed.broadcast_object(error)
            if error:
                raise SegformerError(error)
            yield

    def remove_leftovers(self) -> list[Path]:
        """Remove the temporaries that killed atomic writes left in the folder (``.NAME.*.tmp``);
        a model directory caught between the two renames of its replacement (``.NAME.*.old/x``,
        NAME missing) is put back first. Call only while holding the lock. Returns what was removed."""
        removed = []
        if not self.path.is_dir():
            return removed
        for old in sorted(self.path.glob(".*.*.old")):
            target = self.path / old.name[1:].rsplit(".", 2)[0]
            if (old / "x").exists() and not target.exists():
                os.replace(old / "x", target)
        for tmp in sorted([*self.path.glob(".*.*.tmp"), *self.path.glob(".*.*.old")]):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
        return removed


def json_safe(value: Any) -> Any:
    """`value` with every NaN / infinite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
