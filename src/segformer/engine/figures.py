"""The package's figure helpers: matplotlib on the Agg backend (`pyplot`), atomic PNG writes
(`save_figure`) and the curves of training runs, drawn the same way in a run's ``curves.png``
(`plot_training_curves`) and in the report's comparison of runs (`plot_val_curves`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_file

DPI = 110


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write `fig` as a PNG atomically and close it."""
    with atomic_file(path) as f:  # a file object: Pillow ignores a short write to a path
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)


def _values(records: Sequence[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> list[float]:
    """`get` of each record; a value logged as None (NaN or infinite in JSON) leaves a gap."""
    return [math.nan if get(r) is None else get(r) for r in records]


def plot_scores(ax, records: Sequence[dict[str, Any]], key: str, label: str) -> None:
    """The validation score `key` of the epochs of `records` (metrics.jsonl lines) that were evaluated."""
    evals = [r for r in records if r.get("val")]
    ax.plot([r["epoch"] for r in evals], _values(evals, lambda r: r["val"].get(key)), marker=".", label=label)


def plot_training_curves(records: Sequence[dict[str, Any]], path: Path, monitor: str) -> None:
    """A run's loss, validation scores and learning rate per epoch, as one PNG (``RUN/curves.png``)."""
    plt = pyplot()
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].plot(epochs, _values(records, lambda r: r["train_loss"]), label="train loss")
    axes[0].set_title("training loss")
    for key in dict.fromkeys([monitor, "ce7454_f", "miou", "mean_f1_fg"]):
        plot_scores(axes[1], records, key, key)
    axes[1].set_title("validation")
    axes[1].legend(loc="lower right")
    axes[2].plot(epochs, _values(records, lambda r: r["lr"]))
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_val_curves(records: dict[str, list[dict[str, Any]]], path: Path, key: str = "ce7454_f") -> None:
    """Validation `key` per epoch, one line per run (`records`: run name -> its metrics records)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, recs in records.items():
        plot_scores(ax, recs, key, name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


__all__ = ["DPI", "plot_scores", "plot_training_curves", "plot_val_curves", "pyplot", "save_figure"]
