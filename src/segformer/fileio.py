"""Safe writes: nothing the user owns is deleted, a killed process never leaves a half-written file.

Every file the package writes (weights, training state, JSON, images) goes to a temporary name in the
destination's directory and is renamed over the destination once complete (`os.replace` is atomic on
POSIX and Windows). Folders are assembled the same way and moved into place at the end.

Ownership. A command only ever replaces what segformer itself wrote. `check_output_dir` is the one
policy every writer asks before it writes into a folder: an output folder of each `OutputKind` (a model
directory, a run folder, a dataset, ...) is recognised by the names, types and contents of its entries.
A folder that is missing, empty or recognisably ours may be written; a non-empty folder holding
anything else is refused unless the caller passes ``overwrite``, and even then only our own entries are
replaced: the user's files stay where they are. A regular file is never replaced by a folder, nor a
folder by a file, whatever ``overwrite`` says.

The filesystem is input like any other: an `OSError` while writing (read-only or full disk, no
permission, a file where a folder should be) becomes a `SegformerError` naming the destination and
the system's reason, and the temporary file is removed. New files and folders get the permissions the
user's umask gives (temporary files are created private and opened up before the rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import SegformerError

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


# -- ownership --------------------------------------------------------------------------------------

# The temporary files and folders of the writers above: ours wherever they appear.
_TEMP_NAME = re.compile(r"^\..+\.(tmp|old)$")


@dataclass(frozen=True)
class OutputKind:
    """What segformer writes into one kind of output folder.

    `entries` maps each name we write to its type (True: a folder); a name may be a regular expression
    (matched in full). `recognise` maps names to a check of their content (a file we wrote carries a
    mark). With an `anchor`, a folder counts as ours only when that entry is present and recognised:
    the anchor makes generic names such as ``train/`` ours; the entries named in `marked` are ours by
    their content alone (a run's lock, which exists before anything else). `replace` says whether a
    folder that is recognisably ours may be replaced without ``overwrite`` (a model saved again).
    """

    name: str
    what: str
    entries: dict[str, bool]
    recognise: dict[str, Callable[[Path], bool]] = field(default_factory=dict)
    anchor: str | None = None
    marked: tuple[str, ...] = ()
    replace: bool = True

    def expects(self, name: str) -> bool | None:
        """Whether `name` is one of our entries: True for a folder, False for a file, None if not."""
        for pattern, is_dir in self.entries.items():
            if re.fullmatch(pattern, name):
                return is_dir
        return None

    def owns(self, entry: Path, anchored: bool = True) -> bool:
        """Whether `entry` (inside a folder of this kind) is something we wrote."""
        if _TEMP_NAME.match(entry.name) or _scratch(entry.name):  # (and the output policy's manifest)
            return True
        is_dir = self.expects(entry.name)
        if is_dir is None or entry.is_symlink() or entry.is_dir() != is_dir:
            return False
        if not anchored and entry.name not in self.marked:
            return False
        check = next((c for p, c in self.recognise.items() if re.fullmatch(p, entry.name)), None)
        return check is None or _safely(check, entry)

    def anchored(self, folder: Path) -> bool:
        if self.anchor is None:
            return True
        anchor = folder / self.anchor
        if not anchor.exists():
            return False
        check = self.recognise.get(self.anchor)
        return check is None or _safely(check, anchor)


def _safely(check: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(check(path))
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _json_field(path: Path, key: str, accept: Callable[[Any], bool]) -> bool:
    doc = json.loads(path.read_text())
    return isinstance(doc, dict) and accept(doc.get(key))


def _contains(text: str) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:
        with open(path, errors="replace") as f:
            return text in f.read(65536)

    return check


def _segformer_model_config(path: Path) -> bool:
    # Both native ("format": "segformer") and HF ("model_type": "segformer") directories are ours.
    doc = json.loads(path.read_text())
    return isinstance(doc, dict) and "segformer" in (doc.get("format"), doc.get("model_type"))


def _run_lock(path: Path) -> bool:
    # "PID HOST" (empty for the moment between its creation and the first write)
    return re.fullmatch(r"(\d+ \S+\n?)?", path.read_text()) is not None


def _our_dataset(path: Path) -> bool:
    return _json_field(path, "generator", lambda g: isinstance(g, str) and g.startswith("segformer"))


_RUN_ENTRIES = {
    "config.yaml": False,
    "state.pt": False,
    "metrics.jsonl": False,
    "curves.png": False,
    "summary.json": False,
    "best_scores.json": False,
    "measurements.json": False,
    "last": True,
    "best": True,
    "tensorboard": True,
    "data": True,
    "lock": False,
}

KINDS: dict[str, OutputKind] = {
    kind.name: kind
    for kind in [
        OutputKind(
            "model",
            "a segformer model folder",
            {"config.json": False, "model.safetensors": False},
            {"config.json": _segformer_model_config},
            anchor="config.json",
        ),
        OutputKind(
            "run",
            "a segformer run folder",
            _RUN_ENTRIES,
            {"config.yaml": _contains("train:"), "lock": _run_lock},
            anchor="config.yaml",
            marked=("lock",),
        ),
        OutputKind(
            "dataset",
            "a segformer dataset",
            {"train": True, "val": True, "test": True, "dataset.json": False, "contact_sheet.png": False},
            {"dataset.json": _our_dataset},
            anchor="dataset.json",
            replace=False,  # a dataset may have cost hours: replacing it takes --overwrite
        ),
        OutputKind(
            "ce7454",
            "a CE7454 solution folder",
            {"ckpt.pth": False, "requirements.txt": False, "run.py": False},
            {"run.py": _contains("segformer export --format ce7454")},
            anchor="run.py",
        ),
        OutputKind(
            "report",
            "a segformer report folder",
            {"index.html": False, "report.md": False, "assets": True},
            {"index.html": _contains("by segformer report")},
            anchor="index.html",
        ),
        OutputKind(
            "attention",
            "a segformer attention folder",
            {r"stage\d+\.png": False, "stage1_sr_vs_full.png": False, "attention.json": False},
        ),
        OutputKind(
            "demo",
            "a segformer demo folder",
            {"data": True, "run": True, "predictions": True, "predictions.png": False, "report.md": False},
            {"report.md": _contains("segformer")},
        ),
    ]
}


def _kind(kind: str | OutputKind) -> OutputKind:
    if isinstance(kind, OutputKind):
        return kind
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown output kind {kind!r}") from None


def _entries(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError as err:
        raise SegformerError(f"{path}: cannot list ({err.strerror or err})") from None


def _names(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def is_ours(path: str | Path, kind: str | OutputKind) -> bool:
    """Whether `path` is a non-empty folder holding only what segformer writes as `kind`."""
    path, kind = Path(path), _kind(kind)
    if not path.is_dir() or path.is_symlink():
        return False
    entries = _entries(path)
    anchored = kind.anchored(path)
    return bool(entries) and anchored and all(kind.owns(e, anchored) for e in entries)


def _folder(path: Path) -> Path:
    """`path` itself, or the folder a link at `path` points to (a link is followed, never replaced)."""
    if path.is_symlink():
        if not path.exists():
            raise SegformerError(f"{path}: is a broken link")
        return path.resolve()
    return path


def check_output_dir(path: str | Path, kind: str | OutputKind, overwrite: bool = False) -> Path:
    """Refuse to write output folder `path` of `kind` where that could destroy something of the user's.

    Allowed: `path` missing or empty; a folder that is recognisably ours (for kinds that are not
    `replace`-able only with `overwrite`); with `overwrite`, any folder, in which only our own entries
    will be replaced. Always refused: `path` being a file, and a foreign entry where we write one of
    ours (a file of the user's named ``config.json``, a file where we write a folder). Returns `path`.
    """
    path, kind = Path(path), _kind(kind)
    try:
        _check_output_dir(path, kind, overwrite)
    except OSError as err:
        raise write_error(path, err) from None
    return path


def _check_output_dir(path: Path, kind: OutputKind, overwrite: bool) -> None:
    blocker = _blocking_file(path)
    if blocker is not None:
        raise SegformerError(f"{path}: cannot write: {blocker} is a file, not a folder")
    folder = _folder(path)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise SegformerError(
            f"{path}: already exists and is not a folder; segformer never replaces a file with a folder"
        )
    entries = _entries(folder)
    if not entries:
        return
    anchored = kind.anchored(folder)
    foreign = [e for e in entries if not kind.owns(e, anchored)]
    if not foreign:
        if kind.replace or overwrite or not anchored:  # (not anchored: leftovers of ours only)
            return
        raise SegformerError(
            f"{path}: already exists and is not empty (pass --overwrite to replace {kind.what})"
        )
    clashes = [e for e in foreign if kind.expects(e.name) is not None]
    if clashes:
        raise SegformerError(
            f"{path}: already exists and is not {kind.what}; writing it would replace {_names(clashes)}, "
            "which segformer did not write: move them away or choose another folder"
        )
    if not overwrite:
        verb = "is" if len(foreign) == 1 else "are"
        raise SegformerError(
            f"{path}: already exists and is not empty ({_names(foreign)} {verb} not segformer's); "
            f"choose another folder or pass --overwrite to write {kind.what} next to them (they are kept)"
        )


def check_output_file(
    path: str | Path, ours: Callable[[Path], bool] | None = None, what: str = "output"
) -> Path:
    """Refuse to write file `path` over a folder, or over a file that `ours` does not recognise."""
    path = Path(path)
    blocker = _blocking_file(path)
    if blocker is not None:
        raise SegformerError(f"{path}: cannot write: {blocker} is a file, not a folder")
    if path.is_dir():
        raise SegformerError(f"{path}: is a folder; segformer does not replace a folder with a file")
    if path.exists() and not (ours is not None and _safely(ours, path)):
        raise SegformerError(
            f"{path}: already exists and is not a segformer {what}; move it away or choose another name"
        )
    return path


@contextmanager
def atomic_dir(path: str | Path, kind: str | OutputKind, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it is moved into place.

    The destination is checked with `check_output_dir` first. A missing or recognisably-ours
    destination is replaced as a whole (the old folder is kept until the new one is in place); an
    empty or foreign folder (the latter allowed by `overwrite`) receives our entries one by one, keeping
    the user's files. A link to a folder is followed: the folder it points to is written.
    """
    path, kind = Path(path), _kind(kind)
    check_output_dir(path, kind, overwrite)
    folder = _folder(path)
    make_dirs(folder.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield tmp
        check_output_dir(path, kind, overwrite)  # something may have appeared meanwhile
        _open_up(tmp, directory=True)
        if not folder.exists():
            os.replace(tmp, folder)
        elif is_ours(folder, kind):
            _swap(tmp, folder)
        else:
            new = sorted(tmp.iterdir())
            anchored = kind.anchored(folder)
            taken = [folder / e.name for e in new if os.path.lexists(folder / e.name)]
            foreign = [p for p in taken if not kind.owns(p, anchored)]
            if foreign:
                raise SegformerError(
                    f"{path}: writing it would replace {_names(foreign)}, which segformer did not write: "
                    "move them away or choose another folder"
                )
            for entry in new:
                _swap(entry, folder / entry.name)
    except OSError as err:
        raise write_error(path, err) from None
    except SegformerError as err:
        # a failed write inside the folder names its destination, not the temporary folder
        raise SegformerError(str(err).replace(str(tmp), str(path))) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap(new: Path, dst: Path) -> None:
    """Move `new` to `dst`, replacing what is there (ours: checked by the caller)."""
    if not dst.exists() and not dst.is_symlink():
        os.replace(new, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    try:
        os.replace(dst, old / "x")  # keep the old copy until the new one is in place
        try:
            os.replace(new, dst)
        except OSError:
            os.replace(old / "x", dst)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# -- one writer per folder --------------------------------------------------------------------------

# (an assignment, not try/import: the run.py bundler copies top-level definitions only)
fcntl: Any = None if sys.platform == "win32" else importlib.import_module("fcntl")  # Windows: pid check alone

LOCK_NAME = ".segformer-lock"


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


# -- the output policy ------------------------------------------------------------------------------

MANIFEST_NAME = ".segformer-manifest.json"
JOURNAL_NAME = ".segformer-manifest.jsonl"
MANIFEST_FORMAT = "segformer-manifest"
_RESERVED = (MANIFEST_NAME, JOURNAL_NAME, LOCK_NAME)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class OutputFolder:
    """The one output policy of every command that writes: what a user owns is never changed.

    ::

        with OutputFolder(out_dir, command="predict", inputs=[...], overwrite=False) as out:
            path = out.claim(out_dir / "x.png")  # one-line SegformerError if the path may not be written
            ... write `path` atomically (atomic_file / atomic_path / write_*) ...
            out.record(path)                     # the manifest now says: ours
        # or in one call: out.write_bytes(path, data), out.write_json(...), `with out.atomic_file(path)`

    Rules of `claim`: a path that is one of the command's `inputs` or lies inside an input folder is
    never written (a hard link to an input counts as the input); an existing file is replaced only when
    this folder's manifest records that this `command` wrote it, with the content it has now (a file the
    user edited since is theirs), and only with `overwrite`; a folder or a link is never replaced. So
    ``--overwrite`` never replaces a file that is not ours, and a folder written before manifests existed
    holds nothing of ours: its files must be moved away by the user (the message says so).

    Entering takes the folder's writer lock (`writer_lock`: a second writer gets "OUT is being written
    by process N") and creates the folder; leaving releases the lock and removes a folder it created
    that received nothing. The manifest (``OUT/.segformer-manifest.json``) is replaced atomically; each
    `record` appends a line to a journal beside it (``.jsonl``), folded into the manifest when the
    folder is next opened or closed, so a killed command loses at most the file it was writing.

    `OutputFolder.for_file(path, ...)` applies the same rules to a single-file output: the manifest is
    the one of the folder holding it, the lock is the file's own (``.NAME.segformer-lock``), so writers
    of different files in one folder do not wait for each other.
    """

    def __init__(
        self,
        out_dir: str | Path,
        command: str,
        inputs: Iterable[str | Path] = (),
        overwrite: bool = False,
        *,
        what: str = "output",
        option: str = "--out",
        shared: bool = False,
        _target: Path | None = None,
    ) -> None:
        self.path = Path(out_dir)
        # shared: one of several processes of one command (torchrun ranks) that write the folder
        # together; another of them holds the writer lock for all (`segformer.distributed.shared_output`)
        self.shared = shared
        self.command = command
        self.what = what
        self.option = option
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.overwrite = overwrite
        self.target = _target
        self._real_inputs = [(p, _real(p)) for p in self.inputs]
        self._files: dict[str, dict[str, Any]] = {}
        self._fd: int | None = None
        self._lock: Path | None = None
        self._created: Path | None = None  # the top-most folder this command created
        self._journal_lines = 0
        self.written: list[Path] = []

    @classmethod
    def for_file(
        cls,
        path: str | Path,
        command: str,
        inputs: Iterable[str | Path] = (),
        overwrite: bool = False,
        *,
        what: str = "output",
        option: str = "--out",
    ) -> OutputFolder:
        """A single-file output `path` under the same rules (claimed on entry: refused before the work).
        `what` names the file in messages ("is not a segformer ONNX file"), `option` the command's
        option that chooses it."""
        path = Path(path)
        return cls(path.parent, command, inputs, overwrite, what=what, option=option, _target=path)

    # -- entering and leaving

    def __enter__(self) -> OutputFolder:
        try:
            self._open()
        except OSError as err:
            self._close()
            raise write_error(self.target or self.path, err) from None
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _open(self) -> None:
        where = self.target or self.path
        blocker = _blocking_file(self.path / "x")
        if blocker is not None:
            if blocker == self.path and self.target is None:
                raise SegformerError(
                    f"{self.path}: already exists and is not a folder; "
                    "segformer never replaces a file with a folder"
                )
            raise SegformerError(f"{where}: cannot write: {blocker} is a file, not a folder")
        if self.path.is_symlink() and not self.path.exists():
            raise SegformerError(f"{self.path}: is a broken link")
        if self.target is None:
            self._refuse_input(self.path, folder=True)
        else:
            self._refuse_input(self.target)  # before the folder or any lock appears
        missing = [p for p in (self.path, *self.path.parents) if not os.path.lexists(p)]
        self._created = missing[-1] if missing else None
        make_dirs(self.path)
        self._lock = self.path / (LOCK_NAME if self.target is None else f".{self.target.name}{LOCK_NAME}")
        if not self.shared:
            self._fd = acquire_lock(self._lock, where)
        with _folder_mutex(self.path):
            self._load()
            self._compact()
        if self.target is not None:
            self.claim(self.target)

    def _close(self) -> None:
        try:
            if self._fd is not None and self.path.is_dir():
                with _folder_mutex(self.path):
                    self._load()
                    self._compact()
        except (OSError, SegformerError):
            pass  # the journal is kept: the next writer folds it in
        finally:
            if self._fd is not None:
                release_lock(self._lock, self._fd)  # type: ignore[arg-type]
                self._fd = None
            if self._created is not None:
                self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        """A folder this command created and wrote nothing into disappears again."""
        try:
            names = {e.name for e in self.path.iterdir()}
            if names <= {MANIFEST_NAME, JOURNAL_NAME} and not self._files:
                for name in names:
                    (self.path / name).unlink()
                folder = self.path
                while True:  # and the parents it created for it
                    folder.rmdir()
                    if folder == self._created or self._created not in folder.parents:
                        break
                    folder = folder.parent
        except OSError:
            pass

    # -- the manifest

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_NAME

    def _load(self) -> None:
        files: dict[str, dict[str, Any]] = {}
        if os.path.lexists(self.manifest):
            try:
                doc = json.loads(self.manifest.read_text())
            except (OSError, ValueError, UnicodeDecodeError):
                doc = None
            if self.manifest.is_symlink() or not (
                isinstance(doc, dict)
                and doc.get("format") == MANIFEST_FORMAT
                and isinstance(doc.get("files"), dict)
            ):
                raise SegformerError(
                    f"{self.manifest}: is not a segformer manifest; "
                    f"move it away or choose another {self.option}"
                )
            files = {k: v for k, v in doc["files"].items() if isinstance(v, dict)}
        if self.journal.is_file() and not self.journal.is_symlink():
            for line in self.journal.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    name = entry.pop("path")
                except (ValueError, KeyError, AttributeError, TypeError):
                    continue  # a line cut by a kill
                if entry.get("removed"):
                    files.pop(name, None)
                else:
                    files[name] = entry
        self._files = files

    def _compact(self) -> None:
        if not self._files and not os.path.lexists(self.manifest):
            self.journal.unlink(missing_ok=True)
            return
        doc = {"format": MANIFEST_FORMAT, "version": 1, "files": dict(sorted(self._files.items()))}
        write_text(self.manifest, json.dumps(doc, indent=1) + "\n")
        self.journal.unlink(missing_ok=True)
        self._journal_lines = 0

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry) + "\n"
        with _folder_mutex(self.path):
            if self.target is not None:
                self._load()  # other files' writers may have recorded meanwhile
            try:
                fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666 & ~current_umask())
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            except OSError as err:
                raise write_error(self.journal, err) from None
            name = entry.pop("path")
            if entry.get("removed"):
                self._files.pop(name, None)
            else:
                self._files[name] = entry
            self._journal_lines += 1
            if self._journal_lines >= 4096:  # keep the journal short in long runs
                self._load()  # (with the lines other processes of a shared folder appended)
                self._compact()

    def _name(self, path: str | Path) -> str:
        """`path` relative to the folder (as the manifest keys it); a path outside is a caller's bug."""
        path = Path(path)
        try:
            rel = path.relative_to(self.path) if path.is_absolute() == self.path.is_absolute() else None
        except ValueError:
            rel = None
        if rel is None:
            try:
                rel = _real(path).relative_to(_real(self.path))
            except ValueError:
                raise ValueError(f"{path} is not inside the output folder {self.path}") from None
        if not rel.parts or ".." in rel.parts or rel.parts[-1] in _RESERVED or rel.name.endswith(LOCK_NAME):
            raise ValueError(f"{path} is not a file name an output may have")
        return rel.as_posix()

    # -- the rules

    def _refuse_input(self, path: Path, folder: bool = False) -> None:
        real = _real(path)
        for given, inp in self._real_inputs:
            if real == inp or (inp.is_dir() and _within(real, inp)):
                what = "is the command's input" if real == inp else f"lies inside the input folder {given}"
                raise SegformerError(
                    f"{path}: {what}; segformer never writes over its input: choose another {self.option}"
                )
            if not folder and os.path.lexists(path) and inp.exists():
                try:
                    if os.path.samefile(path, inp):
                        raise SegformerError(
                            f"{path}: is the command's input {given} (a link to it); "
                            f"segformer never writes over its input: choose another {self.option}"
                        )
                except OSError:
                    pass

    def owns(self, path: str | Path) -> bool:
        """Whether `path` is a file this folder's manifest records as written by this command, unchanged."""
        path = Path(path)
        entry = self._files.get(self._name(path))
        if entry is None or entry.get("command") != self.command:
            return False
        if path.is_symlink() or not path.is_file():
            return False
        try:
            st = path.stat()
            return st.st_size == entry.get("size") and sha256_file(path) == entry.get("sha256")
        except OSError:
            return False

    def claim(self, path: str | Path) -> Path:
        """`path`, once it is sure that this command may write it; a one-line `SegformerError` if not."""
        path = Path(path)
        name = self._name(path)
        self._refuse_input(path)
        blocker = _blocking_file(path)
        if blocker is not None:
            raise SegformerError(f"{path}: cannot write: {blocker} is a file, not a folder")
        if path.is_symlink():
            raise SegformerError(f"{path}: is a link; segformer does not replace links: move it away")
        if path.is_dir():
            raise SegformerError(f"{path}: is a folder; segformer does not replace a folder with a file")
        if os.path.lexists(path):
            entry = self._files.get(name)
            if not self.owns(path):
                if entry is None:
                    why = f"segformer {self.command} did not write it"
                    if not self._files:
                        why += f": this folder has no {MANIFEST_NAME}"
                elif entry.get("command") != self.command:
                    other = entry.get("command")
                    why = f"segformer {other} wrote it, segformer {self.command} did not write it"
                else:
                    why = f"it was changed after segformer {self.command} wrote it"
                raise SegformerError(
                    f"{path}: already exists and is not a segformer {self.what} ({why}); it is never "
                    f"replaced, even with --overwrite: choose another {self.option} or remove the file "
                    "yourself"
                )
            if not self.overwrite:
                raise SegformerError(
                    f"{path}: already exists (written by an earlier segformer {self.command}); "
                    "pass --overwrite to replace it"
                )
        return path

    def record(self, path: str | Path) -> Path:
        """Say in the manifest that this command wrote `path` (call once it is in place)."""
        path = Path(path)
        name = self._name(path)
        try:
            entry = {
                "path": name,
                "command": self.command,
                "size": path.stat().st_size,
                "sha256": sha256_file(path),
            }
        except OSError as err:
            raise SegformerError(f"{path}: cannot read back ({err.strerror or err})") from None
        self._append(entry)
        self.written.append(path)
        return path

    def forget(self, path: str | Path) -> None:
        """Remove `path`, a file of ours (checked), and its manifest entry."""
        path = Path(path)
        if not self.owns(path):
            raise SegformerError(f"{path}: was not written by segformer {self.command}; it is kept")
        self._append({"path": self._name(path), "removed": True})
        path.unlink(missing_ok=True)

    def recorded(self) -> list[Path]:
        """The files the manifest records as written by this command (whether they still exist or not)."""
        return [self.path / k for k, v in self._files.items() if v.get("command") == self.command]

    def install(self, staging: Path, dest: str | Path, what: str = "output") -> list[Path]:
        """Move every file under `staging` to the same place under `dest` (inside this folder): all are
        claimed first (one refusal and nothing moves; an existing sub-folder holding files that are not
        ours is never added to), then each is moved and recorded. Returns the files written."""
        dest = Path(dest)
        new = sorted(p for p in staging.rglob("*") if not p.is_dir())
        targets = [dest / p.relative_to(staging) for p in new]
        tops = {t.relative_to(self.path).parts[0] for t in targets if t.parent != self.path}
        _check_entries(self, tops, what)
        for target in targets:
            self.claim(target)
        for src, target in zip(new, targets, strict=True):
            try:
                make_dirs(target.parent)
                os.replace(src, target)
            except OSError as err:
                raise write_error(target, err) from None
            self.record(target)
        return targets

    # -- writing in one call

    @contextmanager
    def atomic_path(self, path: str | Path) -> Iterator[Path]:
        """claim + `atomic_path` + record."""
        path = self.claim(path)
        with atomic_path(path) as tmp:
            yield tmp
        self.record(path)

    @contextmanager
    def atomic_file(self, path: str | Path) -> Iterator[BinaryIO]:
        """claim + `atomic_file` + record."""
        path = self.claim(path)
        with atomic_file(path) as f:
            yield f
        self.record(path)

    def write_bytes(self, path: str | Path, data: bytes) -> Path:
        with self.atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return Path(path)

    def write_text(self, path: str | Path, text: str) -> Path:
        return self.write_bytes(path, text.encode())

    def write_json(self, path: str | Path, data: Any) -> Path:
        return self.write_text(path, json.dumps(data, indent=2) + "\n")


STAGING_PREFIX = ".segformer-staging."


def _scratch(name: str) -> bool:
    """Names of our own bookkeeping in an output folder: manifest, journal, locks, temporaries."""
    return (
        name in _RESERVED
        or name.endswith(LOCK_NAME)
        or name.startswith(STAGING_PREFIX)
        or _TEMP_NAME.match(name) is not None
    )


def _read_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The files the manifest of `folder` records (with its journal), without taking its lock."""
    out = OutputFolder(folder, "")
    try:
        out._load()
    except (OSError, SegformerError):
        return {}
    return out._files


# Folders the gate of `refuse_foreign` counts as segformer's by their content (written by commands that
# keep no manifest yet: a run folder, a model directory).
_GATE_KINDS = ("run", "model", "dataset", "ce7454", "report")


def _foreign_entries(out: OutputFolder, folder: Path, recurse: bool = True) -> list[Path]:
    """The entries of `folder` (inside `out`) that are not segformer's: a file the manifest does not
    record as this command's (cheap: by name; a changed file is caught by `claim`), a link, a folder
    holding such. A sub-folder with a manifest of its own (a dataset inside a demo) is judged by it,
    whichever command wrote it; a run folder or a model directory by its content."""
    return _foreign(folder, out.path, out._files, out.command, recurse)


def _foreign(
    folder: Path, base: Path, records: dict[str, dict[str, Any]], command: str | None, recurse: bool
) -> list[Path]:
    if folder != base and (folder / MANIFEST_NAME).is_file():
        base, records, command = folder, _read_records(folder), None  # a nested output: any command
    foreign = []
    for entry in _entries(folder):
        if _scratch(entry.name):
            continue
        if entry.is_symlink():
            foreign.append(entry)
        elif entry.is_dir():
            if any(is_ours(entry, kind) for kind in _GATE_KINDS):
                continue
            if recurse and _foreign(entry, base, records, command, recurse):
                foreign.append(entry)
        else:
            recorded = records.get(entry.relative_to(base).as_posix())
            if recorded is None or (command is not None and recorded.get("command") != command):
                foreign.append(entry)
    return foreign


def _check_entries(out: OutputFolder, names: Iterable[str], what: str) -> None:
    """Refuse to put anything into an existing sub-folder of OUT that holds files that are not ours (the
    user's own dataset under ``train/``), or to write where a file of the user's has the name."""
    clashes = []
    for name in sorted(set(names)):
        entry = out.path / name
        if not os.path.lexists(entry):
            continue
        if entry.is_symlink():
            clashes.append(entry)
        elif entry.is_dir():
            if _foreign_entries(out, entry):
                clashes.append(entry)
        elif not out.owns(entry):
            clashes.append(entry)
    if clashes:
        raise SegformerError(
            f"{out.path}: writing {what} would replace or add to {_names(clashes)}, which segformer "
            f"{out.command} did not write: move them away or choose another folder"
        )


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
def staged_output(
    path: str | Path,
    command: str,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    *,
    replace: bool = False,
    beside: bool = False,
    names: Iterable[str] = (),
    what: str = "output",
) -> Iterator[Path]:
    """A whole output folder under the policy of `OutputFolder`, assembled in a staging folder and
    moved into place at the end (a failed command changes nothing at `path`).

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
    with OutputFolder(path, command, inputs, overwrite or replace, what=what) as out:
        earlier = _open_output(out, overwrite, replace, beside, names, what)
        for old in path.glob(f"{STAGING_PREFIX}*.tmp"):  # left by a killed run of ours
            shutil.rmtree(old, ignore_errors=True)
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".tmp", dir=out.path))
        except OSError as err:
            raise write_error(path, err) from None
        try:
            yield staging
            written = set(out.install(staging, out.path, what))
            for old in earlier:
                if old not in written and out.owns(old):
                    out.forget(old)
                    _remove_empty_parents(old.parent, out.path)
        except SegformerError as err:
            # a failed write inside the staging folder names its destination, not the staging folder
            raise SegformerError(str(err).replace(str(staging), str(path))) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def check_output(
    path: str | Path,
    command: str,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    *,
    replace: bool = False,
    beside: bool = False,
    names: Iterable[str] = (),
    what: str = "output",
) -> Path:
    """The checks `staged_output` makes on entry, for a command to make before long work (nothing is
    written; a missing folder stays missing)."""
    with OutputFolder(path, command, inputs, overwrite or replace, what=what) as out:
        _open_output(out, overwrite, replace, beside, names, what)
    return Path(path)


def _remove_empty_parents(folder: Path, top: Path) -> None:
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
