"""The plumbing of the config dataclasses: plain dicts in and out (`to_plain`, `from_plain`,
`replace_fields`, with unknown keys named), and renamed keys (`RENAMED`): recipes, run folders and code
written before a rename still load, and an error names the key as it was written."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import SegformerError

T = TypeVar("T")

RENAMED: dict[str, dict[str, str]] = {"data": {"img_size": "image_size"}}
"""Old key -> its field, per section: recipes, run folders and code written before a rename still work."""


def old_names(section: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: the dataclass's constructor also takes the old names of its renamed fields
    (`RENAMED`), and reads them as attributes, so that code written before a rename goes on working."""

    def wrap(cls: type[T]) -> type[T]:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            for old, new in RENAMED[section].items():
                if old in kwargs:
                    if new in kwargs:
                        raise SegformerError(f"{section}.{new}: given twice ({old} is its old name)")
                    kwargs[new] = kwargs.pop(old)
            init(self, *args, **kwargs)

        cls.__init__ = __init__  # type: ignore[method-assign]
        for old, new in RENAMED[section].items():
            setattr(
                cls, old, property(lambda self, new=new: getattr(self, new), doc=f"The old name of `{new}`.")
            )
        return cls

    return wrap


@contextmanager
def as_written(written: Mapping[str, str]) -> Iterator[None]:
    """Errors raised inside name a renamed key as it was `written` (new key -> old spelling)."""
    try:
        yield
    except SegformerError as err:
        message = str(err)
        for new, old in written.items():
            if message.startswith(f"{new}:"):
                raise SegformerError(message.replace(new, old)) from None
        raise


def to_plain(config: Any) -> dict[str, Any]:
    """A dataclass as a JSON/YAML-friendly dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_plain(cls: type, data: Mapping[str, Any]) -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, Mapping):
        raise SegformerError(f"{cls.section}: expected a mapping of fields, got {data!r}")
    return replace_fields(cls(), data)


def replace_fields(config: Any, changes: Mapping[str, Any]) -> Any:
    """`dataclasses.replace` with unknown keys reported by name and renamed keys (`RENAMED`) read as
    their field (values are checked on construction)."""
    section = type(config).section
    renamed = RENAMED.get(section, {})
    fields: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key, value in changes.items():
        name = renamed.get(key, key)
        if name in fields and fields[name] != value:
            raise SegformerError(f"{section}.{name}: given twice ({section}.{key} is its old name)")
        if name != key:
            written[f"{section}.{name}"] = f"{section}.{key}"
        fields[name] = value
    names = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(map(str, set(fields) - set(names)))
    if unknown:
        raise SegformerError(
            f"{section}: unknown field(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
            f"known: {', '.join(names)}"
        )
    with as_written(written):
        return dataclasses.replace(config, **fields)


__all__ = ["RENAMED", "as_written", "from_plain", "old_names", "replace_fields", "to_plain"]
