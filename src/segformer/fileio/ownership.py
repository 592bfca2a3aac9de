"""Ownership of output folders: `OutputKind`, `check_output_dir`, `atomic_dir` (see the package docstring)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SegformerError
from .atomic import _TEMP_NAME, _blocking_file, _open_up, make_dirs, write_error
from .names import _scratch

# -- ownership --------------------------------------------------------------------------------------


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
