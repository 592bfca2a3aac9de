"""Argument types for the numeric options: argparse reports a bad value as one line naming the option
(``argument --workers: must be an integer >= 0, got '-1'``) and exits 2, before any work starts.

NaN and infinities are refused everywhere; 0 is accepted only where it means something (0 workers:
load in the main process; seed 0).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (no upper bound when `high` is None)."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text!r}")
        return value

    parse.__name__ = f"int_{low}_{high}"
    return parse


positive_int = int_between(1)
"""An integer >= 1 (counts, sizes, epochs, batch sizes, threads)."""
nonneg_int = int_between(0)
"""An integer >= 0 (seeds, worker processes, optional counts where 0 means none)."""


def workers_count(text: str) -> int | str:
    """``auto`` (chosen from the cores and the device) or a number of worker processes >= 0."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return nonneg_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be auto or an integer >= 0, got {text!r}") from None


def positive_float(text: str) -> float:
    """A finite number > 0 (minutes, rates)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0 (a wait that may be none)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A finite number in [0, 1) (fractions such as the validation share)."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text!r}")
    return value


def positive_floats(text: str) -> list[float]:
    """Comma-separated numbers > 0, e.g. TTA scales ``0.75,1,1.25``."""
    try:
        return [positive_float(v) for v in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers > 0, e.g. 0.75,1,1.25; got {text!r}"
        ) from None


__all__ = ["int_between", "nonneg_int", "positive_float", "positive_floats", "positive_int", "unit_interval"]
