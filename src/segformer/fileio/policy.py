"""Whole outputs under the policy of `OutputFolder`: `staged_output`, `check_output`, `refuse_foreign`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import SegformerError
from .atomic import write_error
from .manifest import OutputFolder, _check_entries, _foreign_entries
from .names import STAGING_PREFIX
from .ownership import _names


def refuse_foreign(
    out: OutputFolder, overwrite: bool, what: str = "output", managed: Iterable[str] = ()
) -> None:
    """Refuse an output folder that holds files this command did not write, unless `overwrite` (then the
    command writes next to them and they are kept). `managed`: top-level entries that other commands
    write under their own policy (a demo's ``data/`` and ``run/``)."""
    if overwrite:
        return
    skip = set(managed)
    foreign = [e for e in _foreign_entries(out, out.path, recurse=True) if e.name not in skip]
    if foreign:
        verb = "is" if len(foreign) == 1 else "are"
        raise SegformerError(
            f"{out.path}: already exists and is not empty ({_names(foreign)} {verb} not segformer's); "
            f"choose another folder or pass --overwrite to write {what} next to them (they are kept)"
        )


def _open_output(
    out: OutputFolder,
    overwrite: bool,
    replace: bool,
    beside: bool,
    names: Iterable[str],
    what: str,
    managed: Iterable[str] = (),
) -> list[Path]:
    """The checks on entry of `staged_output` / `check_output`; returns the files of an earlier output."""
    _check_entries(out, names, what)  # (first: a file of the user's at one of our names is the news)
    if not beside:
        refuse_foreign(out, overwrite, what, managed)
    earlier = [p for p in out.recorded() if os.path.lexists(p)]
    if earlier and not (overwrite or replace):
        raise SegformerError(
            f"{out.path}: already exists and is not empty: it holds {what} written by an earlier "
            f"segformer {out.command} (pass --overwrite to replace it)"
        )
    return earlier


@contextmanager
def _entered(
    path: str | Path,
    command: str,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    *,
    replace: bool = False,
    beside: bool = False,
    names: Iterable[str] = (),
    what: str = "output",
) -> Iterator[tuple[OutputFolder, list[Path]]]:
    """The output folder of `staged_output`, entered and checked; yields it with the files of an
    earlier output of `command` there."""
    with OutputFolder(path, command, inputs, overwrite or replace, what=what) as out:
        yield out, _open_output(out, overwrite, replace, beside, names, what)


@contextmanager
def staged_output(path: str | Path, command: str, *args: Any, **policy: Any) -> Iterator[Path]:
    """A whole output folder under the policy of `OutputFolder`, assembled in a staging folder and
    moved into place at the end (a failed command changes nothing at `path`). Arguments: `inputs`
    (paths the output must not overwrite), `overwrite`, and the keywords `replace`, `beside`, `names`,
    `what`.

    On entry: a folder holding files that are not this command's is refused unless `overwrite` (or
    `beside`: the command writes next to other files as a matter of course), and then they are kept;
    an existing sub-folder among `names` (the top-level names the output will have) that holds files
    that are not ours is refused always; an earlier output of `command` is replaced only with
    `overwrite`, or when `replace` says the command always may (a report written again).

    Yields the staging folder (inside `path`, hidden). On success every file in it is claimed first
    (one refusal and nothing is moved), then moved to the same place under `path` and recorded; the
    files an earlier run of `command` recorded there and this one did not write are removed, so the
    folder holds this output only, beside whatever else the user keeps in it."""
    path = Path(path)
    with _entered(path, command, *args, **policy) as (out, earlier):
        for old in path.glob(f"{STAGING_PREFIX}*.tmp"):  # left by a killed run of ours
            shutil.rmtree(old, ignore_errors=True)
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".tmp", dir=out.path))
        except OSError as err:
            raise write_error(path, err) from None
        try:
            yield staging
            written = set(out.install(staging, out.path, policy.get("what", "output")))
            for old in earlier:
                if old not in written and out.owns(old):
                    out.forget(old)
                    _remove_empty_parents(old.parent, out.path)
        except SegformerError as err:
            # a failed write inside the staging folder names its destination, not the staging folder
            raise SegformerError(str(err).replace(str(staging), str(path))) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def check_output(path: str | Path, command: str, *args: Any, **policy: Any) -> Path:
    """The checks `staged_output` makes on entry (the same arguments), for a command to make before
    long work (nothing is written; a missing folder stays missing)."""
    with _entered(path, command, *args, **policy):
        pass
    return Path(path)


def _remove_empty_parents(folder: Path, top: Path) -> None:
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
