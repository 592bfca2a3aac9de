"""Reading recipes: YAML files (`load_yaml`) and dotted ``key=value`` overrides (`parse_overrides`), with
every error one line naming the file or the override."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..errors import SegformerError


def yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint and its position in one line (PyYAML's own message takes up to eight,
    with a copy of the offending line and a caret under it)."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if problem is None:
        return " ".join(str(err).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{' '.join(problem.split())}"


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of a UTF-8 file; unreadable and non-UTF-8 files are one-line errors naming `path`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SegformerError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SegformerError(
            f"{path}: not a UTF-8 text {what} (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8"
        ) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    text = read_text(path, "file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SegformerError(f"{path}: invalid YAML ({yaml_problem(err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SegformerError(f"{path}: expected a mapping at the top level")
    return data


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML (``depths=[1,1,1,1]``, ``lr=1e-3``, ``amp=true``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SegformerError(f"override {item!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise SegformerError(
                f"override {item!r}: value is not valid YAML ({yaml_problem(err)})"
            ) from None
    return out


__all__ = ["load_yaml", "parse_overrides", "read_text", "yaml_problem"]
