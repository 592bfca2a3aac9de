"""One writer per folder: an advisory lock file holding "PID HOST" (`acquire_lock`, `writer_lock`)."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import SegformerError
from .atomic import make_dirs, write_error
from .names import LOCK_NAME
from .ownership import _run_lock, _safely

# -- one writer per folder --------------------------------------------------------------------------

# (an assignment, not try/import: the run.py bundler copies top-level definitions only)
fcntl: Any = None if sys.platform == "win32" else importlib.import_module("fcntl")  # Windows: pid check alone


def _lock_owner() -> str:
    return f"{os.getpid()} {socket.gethostname()}"


def same_file(path: Path, fd: int) -> bool:
    """Whether `path` is (still) the file open as `fd`."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def _lock_holder(path: Path) -> str:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
    except OSError:
        return "another process"
    return f"process {pid} on {host}" if host else f"process {pid}"


def _pid_alive(path: Path) -> bool:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
        if host and host != socket.gethostname():
            return True  # cannot tell: assume it runs
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True
    return True


def _busy(path: Path, target: Path) -> SegformerError:
    return SegformerError(
        f"{target} is being written by {_lock_holder(path)} (lock {path}); "
        "wait for that command to end or choose another --out"
    )


def acquire_lock(path: str | Path, target: str | Path | None = None, orphan_wait: float = 15.0) -> int:
    """Take the writer lock file `path` (for output `target`, its folder by default); returns its fd.

    The lock is an advisory ``flock``, which the kernel releases when its process dies however it dies,
    so a lock left behind by a killed writer is taken over without a race. The file holds "PID HOST"
    for the error message of the next writer. A second writer gets a one-line `SegformerError`."""
    path = Path(path)
    target = Path(target) if target is not None else path.parent
    if path.is_symlink() or (path.exists() and not _safely(_run_lock, path)):
        raise SegformerError(
            f"{path}: exists and is not a segformer lock; move it away or choose another --out"
        )
    deadline = time.monotonic() + orphan_wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(path, err) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                # DataLoader workers forked by a killed owner share its lock until they notice
                # (within seconds); a live owner keeps it.
                if not _pid_alive(path) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise _busy(path, target) from None
            if not same_file(path, fd):  # removed by its previous owner meanwhile: retry
                os.close(fd)
                continue
        elif os.fstat(fd).st_size and _pid_alive(path):
            os.close(fd)
            raise _busy(path, target)
        os.ftruncate(fd, 0)
        os.write(fd, (_lock_owner() + "\n").encode())
        return fd


def release_lock(path: str | Path, fd: int) -> None:
    """Give back a lock taken by `acquire_lock` (its file removed while it is still ours)."""
    try:
        if same_file(Path(path), fd):
            Path(path).unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def writer_lock(
    folder: str | Path, name: str = LOCK_NAME, target: str | Path | None = None
) -> Iterator[Path]:
    """Hold the writer lock ``folder/name`` for the block (the folder is created); yields `folder`.

    The one mechanism for "one writer per output": training's run lock (``RUN/lock``) and every
    `OutputFolder` use it."""
    folder = make_dirs(folder)
    lock = folder / name
    fd = acquire_lock(lock, target if target is not None else folder)
    try:
        yield folder
    finally:
        release_lock(lock, fd)


@contextmanager
def _folder_mutex(folder: Path) -> Iterator[None]:
    """A short exclusive lock on `folder` itself (a flock on its descriptor), for the read-modify-write
    of its manifest by writers of different files in it. Without flock it is a no-op."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a filesystem without locks: one writer per file still holds
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
