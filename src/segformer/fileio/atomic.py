"""Atomic files: a write goes to a temporary name beside its destination and is renamed over it when
complete; the filesystem's errors become one-line `SegformerError`s naming the destination."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import SegformerError

# -- permissions ------------------------------------------------------------------------------------

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc (a read with no side effect); elsewhere it is
    read by setting and restoring it, under a lock so that two threads do not interleave."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _open_up(path: Path, directory: bool) -> None:
    """Give a temporary file / folder (created 0600 / 0700) the mode a plain create would give it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


# -- errors -----------------------------------------------------------------------------------------


def _blocking_file(path: Path) -> Path | None:
    """The first ancestor of `path` that exists and is not a folder, if any."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
        if not parent.exists():
            return None
    return None


def write_error(path: str | Path, err: OSError) -> SegformerError:
    """`err` raised while writing `path`, as one line naming `path` and the system's reason."""
    path = Path(path)
    blocker = _blocking_file(path)
    if blocker is not None:
        return SegformerError(f"{path}: cannot write: {blocker} is a file, not a folder")
    reason = err.strerror or str(err)
    where = Path(err.filename) if isinstance(err.filename, str) else None
    # Name the folder the system complained about when it is not the destination or our temp file.
    if where is not None and where != path and not where.name.startswith(f".{path.name}."):
        reason = f"{where}: {reason}"
    return SegformerError(f"{path}: cannot write ({reason})")


def make_dirs(path: str | Path) -> Path:
    """`mkdir -p path`, with a file in the way or a system refusal reported as `SegformerError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if path.exists() and not path.is_dir():
            raise SegformerError(f"{path}: is a file, not a folder") from None
        raise write_error(path, err) from None
    return path


class _RecordingFile(io.RawIOBase):
    """A binary file that remembers the `OSError` of a failed write: `torch.save` reports a full disk
    as a bare RuntimeError, and this recovers the system's reason."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        if not self._f.closed:  # (also called when this object is collected, after the real close)
            self._f.flush()


# -- atomic files -----------------------------------------------------------------------------------


@contextmanager
def _interrupt_after_write() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise the `KeyboardInterrupt` it asked for.

    An interrupt that lands inside a writer (`torch.save` in the middle of a zip record) would make the
    writer raise its own confused error over it, and the run would end in a traceback instead of "interrupted"
    with its last checkpoint complete. Writes are short, so the user waits a fraction of a second at most.
    Only on the main thread and only while Python's own handler is installed: a program that set its own
    SIGINT handler keeps it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed.

    An existing folder at `path` is never replaced (that is an error), and OS errors become
    `SegformerError`s naming `path`. A Ctrl-C during the write is held until the file is in place."""
    with _interrupt_after_write(), _atomic_path(path) as tmp:
        yield tmp


@contextmanager
def _atomic_path(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    make_dirs(path.parent)
    try:
        if path.is_dir():
            raise SegformerError(f"{path}: is a folder; segformer does not replace a folder with a file")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        _open_up(tmp_path, directory=False)
        os.replace(tmp_path, path)
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """`atomic_path` as an open binary file, for writers that take a file object (`torch.save`,
    `np.save`, `savefig`). A writer that turns the file's `OSError` into another exception still
    gets a `SegformerError` naming `path` and the system's reason."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        f = _RecordingFile(raw)
        try:
            yield f  # type: ignore[misc]
        except Exception as err:
            if f.error is not None and err is not f.error:
                raise write_error(path, f.error) from None
            raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


# The temporary files and folders of the writers above: ours wherever they appear.
_TEMP_NAME = re.compile(r"^\..+\.(tmp|old)$")
