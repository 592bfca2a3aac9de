"""The one validation system of recipes and inference settings: rules for allowed values (`OneOf`,
`Bounds`, `NonEmpty`, `Provided`), type coercion of YAML / ``--set`` values (`check_fields`) and the
checks of plain values read from files (`check_number`, `check_integer`, `check_sequence`,
`check_choice`). Every failure is one line that names the key.

The config is the ground floor of the package: it imports neither the data package, the metrics nor
the models. The names a recipe is checked against that live there (dataset layouts, augmentation
presets, label sets, scores, registered models) are handed down by their owners when those are
imported (`provide`), and looked up here when a value is checked.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SegformerError

# -- what the packages above the config hand down -----------------------------------------------------

_PROVIDED: dict[str, Callable[..., Any]] = {}

OWNERS = {
    "data.kind": "segformer.data.layouts",
    "data.augment": "segformer.data.transforms",
    "data.label_set": "segformer.data.labels",
    "train.monitor": "segformer.metrics",
    "model.arch": "segformer.models.registry",
    "model.decoders": "segformer.models.registry",
    "model.name": "segformer.models.registry",
}
"""The module that provides each key. When a check needs a key whose owner nobody has imported yet, the
owner is imported then, by name: importing the config itself loads none of them (and no torch)."""


def provide(key: str, lookup: Callable[..., Any]) -> None:
    """Register the owner's `lookup` for `key`: ``"data.kind"`` -> the layout names, ``"model.name"``
    -> the registered config of a model name, ... (called by the module that owns the names, when it
    is imported)."""
    _PROVIDED[key] = lookup


def provided(key: str) -> Callable[..., Any]:
    """The lookup its owner registered for `key` (the owner imported first where needed)."""
    if key not in _PROVIDED and key in OWNERS:
        importlib.import_module(OWNERS[key])
    if key not in _PROVIDED:
        raise SegformerError(f"{key}: nothing provides its values")
    return _PROVIDED[key]


def names_of(key: str) -> Callable[[], list[str]]:
    """The choices of a `OneOf` that its owner provides (looked up at check time: registries grow)."""
    return lambda: list(provided(key)())


# -- rules: the allowed values of a field -------------------------------------------------------------


@dataclass(frozen=True)
class OneOf:
    """The value must be one of `choices` (a callable is asked at check time: registries grow)."""

    choices: Sequence[str] | Callable[[], Iterable[str]]
    noun: str = "value"

    def allowed(self) -> list[str]:
        return list(self.choices() if callable(self.choices) else self.choices)

    def problem(self, value: Any) -> str | None:
        allowed = self.allowed()
        if isinstance(value, str) and value in allowed:
            return None
        return f"unknown {self.noun} {value!r}; choose from {', '.join(allowed)}"

    def bad_values(self) -> list[Any]:
        return ["no-such-choice"]


@dataclass(frozen=True)
class Bounds:
    """A finite number (or each number of a tuple) within bounds; None passes where the type allows it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"lie in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"be {'>' if self.low_open else '>='} {self.low:g}"
        return f"be {'<' if self.high_open else '<='} {self.high:g}" if self.high is not None else "be finite"

    def fits(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def problem(self, value: Any) -> str | None:
        for v in value if isinstance(value, tuple) else () if value is None else (value,):
            if not self.fits(v):
                return f"must {self.describe()}, got {v!r}"
        return None

    def bad_values(self) -> list[Any]:
        out: list[Any] = [float("nan")]
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - 1)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + 1)
        return out


@dataclass(frozen=True)
class Provided:
    """Checked by the lookup its owner provides for `key`, which raises `SegformerError` on a bad value
    (e.g. ``data.label_set``: a label set name or alias, checked by `segformer.data.labels`)."""

    key: str

    def problem(self, value: Any) -> str | None:
        try:
            provided(self.key)(value)
        except SegformerError as err:
            return str(err)
        return None

    def bad_values(self) -> list[Any]:
        return ["no-such-name"]


@dataclass(frozen=True)
class NonEmpty:
    """A string with something in it (None passes where the type allows it)."""

    def problem(self, value: Any) -> str | None:
        return "must not be empty" if value is not None and not value.strip() else None

    def bad_values(self) -> list[Any]:
        return [""]


Rule = OneOf | Bounds | Provided | NonEmpty


def require(what: str, value: Any, rule: Rule) -> Any:
    """`value` when `rule` accepts it, else a `SegformerError` ``"what: problem"``."""
    problem = rule.problem(value)
    if problem:
        raise SegformerError(f"{what}: {problem}")
    return value


# -- the fields of a config dataclass ----------------------------------------------------------------


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(config: Any, section: str, rules: Mapping[str, Rule]) -> None:
    """Coerce every field of the dataclass `config` to its annotated type (YAML lists become tuples,
    ints floats, ...) and check it against its rule in `rules`; errors name ``section.field``."""
    for name, hint in _field_types(type(config)).items():
        if name.startswith("_") or typing.get_origin(hint) is typing.ClassVar:
            continue
        key = f"{section}.{name}"
        value = _coerce(key, getattr(config, name), hint)
        object.__setattr__(config, name, value)
        if isinstance(value, float) or (isinstance(value, tuple) and value and isinstance(value[0], float)):
            for v in value if isinstance(value, tuple) else (value,):
                if not math.isfinite(v):
                    raise SegformerError(f"{key}: must be a finite number, got {v!r}")
        if name in rules:
            require(key, value, rules[name])


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Make YAML/CLI values fit the annotated type (lists -> tuples, ints -> floats); refuse the rest."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
                raise TypeError(f"expected a list, got {value!r}")
            item = args[0] if args else Any
            return tuple(_coerce(name, v, item) for v in value)
        if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if hint is float and isinstance(value, str):
            # YAML 1.1 reads "3e-3" (no dot) as a string; accept what Python accepts as a float.
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"expected float, got {value!r}") from None
        if hint is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if hint is str and isinstance(value, os.PathLike):
            return os.fspath(value)
        if hint in (int, float, str, bool) and not isinstance(value, hint):
            raise TypeError(f"expected {hint.__name__}, got {value!r}")
        if hint is int and isinstance(value, bool):
            raise TypeError(f"expected int, got {value!r}")
    except TypeError as err:
        raise SegformerError(f"{name}: {err}") from None
    return value


# -- plain values read from files (model directories, ONNX metadata, checkpoints) -----------------------


def check_number(value: Any, what: str) -> float:
    """`value` as a float; a bool, a string or a non-finite number is an error naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SegformerError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def check_integer(value: Any, what: str, low: int = 0, high: int | None = None) -> int:
    """`value` as an int in [low, high] (a float with an integral value passes)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise SegformerError(f"{what}: expected {bound}, got {value!r}")
    return value


def check_sequence(value: Any, what: str, length: int | None = None) -> Sequence[Any]:
    """`value` when it is a list (of `length` items, when given); a string or mapping is not."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise SegformerError(f"{what}: expected a list, got {value!r}")
    if length is not None and len(value) != length:
        raise SegformerError(f"{what}: expected {length} values, got {len(value)}")
    return value


def check_choice(value: Any, what: str, noun: str, choices: Sequence[str]) -> str:
    """`value` when it is one of `choices`; the error says which `noun` was unknown and lists them."""
    return require(what, value, OneOf(choices, noun))


__all__ = [
    "OWNERS",
    "Bounds",
    "NonEmpty",
    "OneOf",
    "Provided",
    "Rule",
    "check_choice",
    "check_fields",
    "check_integer",
    "check_number",
    "check_sequence",
    "names_of",
    "provide",
    "provided",
    "require",
]
