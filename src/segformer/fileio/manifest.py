"""The output policy's manifest: `OutputFolder`, the record of which files in a folder a command wrote."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import SegformerError
from .atomic import (
    _blocking_file,
    atomic_file,
    atomic_path,
    current_umask,
    make_dirs,
    write_error,
    write_text,
)
from .locks import _folder_mutex, acquire_lock, release_lock
from .names import _RESERVED, JOURNAL_NAME, LOCK_NAME, MANIFEST_FORMAT, MANIFEST_NAME, _scratch
from .ownership import _entries, _names, is_ours

# -- the output policy ------------------------------------------------------------------------------


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
    def for_file(cls, path: str | Path, command: str, *args: Any, **kwargs: Any) -> OutputFolder:
        """A single-file output `path` under the same rules (claimed on entry: refused before the work);
        the other arguments are the constructor's (`inputs`, `overwrite`, `what` naming the file in
        messages such as "is not a segformer ONNX file", `option` the command's option that chooses it)."""
        path = Path(path)
        return cls(path.parent, command, *args, _target=path, **kwargs)

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
    def _claimed(self, path: str | Path, opener: Any) -> Iterator[Any]:
        path = self.claim(path)
        with opener(path) as handle:
            yield handle
        self.record(path)

    def atomic_path(self, path: str | Path) -> AbstractContextManager[Path]:
        """claim + `atomic_path` + record."""
        return self._claimed(path, atomic_path)

    def atomic_file(self, path: str | Path) -> AbstractContextManager[BinaryIO]:
        """claim + `atomic_file` + record."""
        return self._claimed(path, atomic_file)

    def write_bytes(self, path: str | Path, data: bytes) -> Path:
        with self.atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return Path(path)

    def write_text(self, path: str | Path, text: str) -> Path:
        return self.write_bytes(path, text.encode())

    def write_json(self, path: str | Path, data: Any) -> Path:
        return self.write_text(path, json.dumps(data, indent=2) + "\n")


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
