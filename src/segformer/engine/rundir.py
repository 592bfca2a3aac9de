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
    RUN/.segformer-manifest.json   the output policy's record of the files the run wrote

The run folder is an output under the policy of `segformer.fileio.OutputFolder`: a file counts as the
run's only when the folder's manifest records that ``segformer train`` wrote it. A file or folder of
the user's at one of the run's names (``config.yaml``, ``best/`` ...) is refused in one line, even with
``--overwrite``; other files of the user's in a new run's folder are refused unless ``--overwrite``, and
then kept; the data folders the run reads are never written. The run's own files are replaced as it goes
on, and by a resumed run even where they changed since they were recorded (a log torn by a kill, a
state.pt re-saved by an older version: resuming rewrites them from state.pt).

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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import distributed
from ..checkpoint import save_model
from ..config import RunConfig, read_recipe
from ..errors import SegformerError
from ..fileio import MANIFEST_NAME, OutputFolder, acquire_lock, make_dirs, refuse_foreign, release_lock
from ..fileio import write_json as _write_json
from ..fileio import write_text as _write_text


class _File:
    """A file of the run folder: ``run.NAME`` is ``run.path / filename``."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def __get__(self, run: RunDir | None, owner: type) -> Any:
        return self if run is None else run.path / self.filename  # (on the class: the descriptor)


# What the run writes: files, and the model folders whose files it writes.
RUN_FILES = ("config.yaml", "state.pt", "metrics.jsonl", "summary.json", "best_scores.json", "curves.png")
RUN_FOLDERS = ("last", "best")
# Entries written under rules of their own: TensorBoard's event files (a new file per process, never one
# replaced), synthetic data (a dataset with its own manifest), the lock.
MANAGED = ("tensorboard", "data", "lock")


@dataclass(frozen=True)
class RunDir:
    """A training run folder; every name of a file in it comes from here.

    While `lock` is held by this process, every write goes through the output policy (`write_text`,
    `write_json`, `writing`, `save_model`): claimed first, recorded in the manifest once in place."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))
        object.__setattr__(self, "_out", None)  # the OutputFolder while the lock is held
        object.__setattr__(self, "_resume", False)

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
        self.write_text(
            self.metrics, "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records)
        )

    @contextmanager
    def lock(
        self, inputs: Iterable[str | Path | None] = (), overwrite: bool = False, resume: bool = False
    ) -> Iterator[None]:
        """Hold the run folder's lock for the duration: a second writer gets a `SegformerError`; and
        open the folder under the output policy (`check_entries`), with the run's `inputs` (its data
        folders) never written. `overwrite`: a new run may be written next to files of the user's
        (kept); `resume`: the run's own files are replaced even where they changed since.

        The lock is an advisory ``flock`` on ``RUN/lock``, which the kernel releases when its process
        dies however it dies, so a lock left behind by a killed run (its pid no longer alive) is
        taken over without a race. The file names the owner for the error message of the next one.
        """
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise SegformerError(
                f"{self.path}: already exists and is not a folder; "
                "segformer never replaces a file with a folder"
            )
        created = not self.path.exists()
        make_dirs(self.path)
        fd = acquire_lock(self.lock_file)  # (the one writer lock of segformer.fileio)
        try:
            # overwrite=True: a run replaces its own files as it goes; the user's `overwrite` decides
            # only whether a new run may be written next to files of theirs (`check_entries`)
            given = [p for p in inputs if p is not None]
            with OutputFolder(self.path, "train", given, overwrite=True, what="run file") as out:
                object.__setattr__(self, "_resume", resume)
                self.check_entries(out, overwrite, resume)
                object.__setattr__(self, "_out", out)
                try:
                    yield
                finally:
                    object.__setattr__(self, "_out", None)
        finally:
            release_lock(self.lock_file, fd)
            try:
                if created and not any(self.path.iterdir()):
                    self.path.rmdir()  # a run that failed before writing anything leaves nothing
            except OSError:
                pass

    @contextmanager
    def lock_on_every_process(
        self, inputs: Iterable[str | Path | None] = (), overwrite: bool = False, resume: bool = False
    ) -> Iterator[None]:
        """`lock`, taken by the main process (the one that writes), for all processes of a distributed
        run: each of them enters the block, or raises the main process's error."""
        with contextlib.ExitStack() as stack:
            error = None
            if distributed.is_main():
                try:
                    stack.enter_context(self.lock(inputs, overwrite, resume))
                except SegformerError as err:
                    error = str(err)
            error = distributed.broadcast_object(error)
            if error:
                raise SegformerError(error)
            yield

    # -- the output policy

    def _ours(self, out: OutputFolder, path: Path, recorded: set[Path]) -> bool:
        """Whether `path` (an existing file) is the run's: recorded as written by segformer train and,
        unless resuming, unchanged since."""
        if path.is_symlink() or not path.is_file():
            return False
        return path in recorded if self._resume else out.owns(path)

    def check_entries(self, out: OutputFolder, overwrite: bool, resume: bool) -> None:
        """Refuse, in one line and before anything is written, a run folder where an entry at one of the
        run's names is not the run's (even with `overwrite`), and a new run's folder holding other files
        that are not segformer train's (unless `overwrite`: they are kept)."""
        self._refuse_clashes(out, (*RUN_FILES, *RUN_FOLDERS))
        if not resume:
            refuse_foreign(out, overwrite, "a training run", managed=MANAGED)

    def _refuse_clashes(self, out: OutputFolder, names: Iterable[str]) -> None:
        """A one-line error naming the entries at `names` that are not the run's."""
        recorded = set(out.recorded())
        clashes = []
        for name in names:
            entry = self.path / name
            if not os.path.lexists(entry):
                continue
            if name in RUN_FOLDERS and entry.is_dir() and not entry.is_symlink():
                inside = [p for p in entry.rglob("*") if p.is_symlink() or not p.is_dir()]
                if all(self._ours(out, p, recorded) for p in inside):
                    continue
            elif name in RUN_FILES and self._ours(out, entry, recorded):
                continue
            clashes.append(entry)
        if clashes:
            shown = ", ".join(p.name for p in clashes)
            raise SegformerError(
                f"{self.path}: writing the run would replace {shown}, which segformer did not write "
                f"(this folder's {MANIFEST_NAME} does not record {'it' if len(clashes) == 1 else 'them'} "
                "as segformer train's): move them away or choose another --out"
            )

    def _claim(self, path: Path) -> Path:
        out = self._out
        if out is None:  # not held by this process: (in a distributed run, only the main one writes)
            return path
        if os.path.lexists(path) and self._ours(out, path, set(out.recorded())):
            return path
        return out.claim(path)

    def _record(self, path: Path) -> None:
        if self._out is not None and path.is_file() and not path.is_symlink():
            self._out.record(path)

    @contextmanager
    def writing(self, path: str | Path) -> Iterator[Path]:
        """A file of the run written by the block (atomically, by the caller): claimed first (a one-line
        `SegformerError` where it may not be written), recorded in the manifest once written."""
        path = self._claim(Path(path))
        yield path
        self._record(path)

    def write_text(self, path: str | Path, text: str) -> None:
        with self.writing(path) as dest:
            _write_text(dest, text)

    def write_json(self, path: str | Path, data: Any) -> None:
        with self.writing(path) as dest:
            _write_json(dest, data)

    def save_model(self, model: Any, folder: Path, meta: dict[str, Any]) -> None:
        """`model` as the model folder `folder` (last/ or best/), replaced as a whole; its files recorded."""
        if self._out is not None:
            self._refuse_clashes(self._out, [folder.name])  # nothing of the user's got in since
        files = [folder / "config.json", folder / "model.safetensors"]
        for file in files:
            self._claim(file)
        save_model(model, folder, meta=meta)
        for file in files:
            self._record(file)

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
