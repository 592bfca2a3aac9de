"""Result tables of the report (`segformer.apps.report`): CSV, GitHub Markdown and LaTeX booktabs, one
row per run of a results.csv, the best score of each score column in bold, and the caption that says
what the numbers are."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..fileio import write_text

# (header, results.csv key, formatter, higher is better) of the comparison tables.
COLUMNS: list[tuple[str, str, Callable[[Any], str], bool]] = [
    ("Params (M)", "params", lambda v: f"{v / 1e6:.2f}", False),
    ("GFLOPs", "gflops", lambda v: f"{v:.3g}", False),
    ("FPS", "fps", lambda v: f"{v:.1f}", False),
    ("Epochs", "epochs_completed", lambda v: f"{v:g}", False),
    ("CE7454 F", "ce7454_f", lambda v: f"{v:.4f}", True),
    ("mIoU", "miou", lambda v: f"{v:.4f}", True),
    ("mean F1", "mean_f1_fg", lambda v: f"{v:.4f}", True),
]


def _best(rows: Sequence[dict[str, Any]], key: str) -> float:
    return max(float(r[key]) for r in rows)


def _cells(rows: Sequence[dict[str, Any]], bold: Callable[[str], str]) -> list[list[str]]:
    """Formatted table cells, the best score of each score column wrapped with `bold`."""
    out = []
    for r in rows:
        line = [str(r["run"])]
        for _, key, fmt, score in COLUMNS:
            text = fmt(float(r[key]))
            line.append(bold(text) if score and fmt(float(r[key])) == fmt(_best(rows, key)) else text)
        out.append(line)
    return out


def caption(rows: Sequence[dict[str, Any]], description: str) -> str:
    """What the numbers are: data split, training settings, how GFLOPs and FPS were measured."""
    r = rows[0]
    budget = (
        f", at most {float(r['max_minutes']):g} min per run" if r.get("max_minutes") not in (None, "") else ""
    )
    size = f"{r['img_size']}x{r['img_size']}"
    return (
        f"{description}. Validation: {r['val_images']} images, {r['val_source']}; scores of the final "
        f"epoch (CE7454 F: per-image mean F1 over present classes; mean F1 excludes background). "
        f"Training: {r['img_size']}px, {r['epochs']} epochs{budget}, batch {r['batch_size']}, "
        f"seed {r['seed']}, same recipe for every run. GFLOPs: one forward pass at {size} "
        f"(2 FLOPs per multiply-add). FPS: inference images/s at {size}, batch 1, CPU, "
        f"torch threads: {r['fps_threads']}. Best score in bold."
    )


def markdown_table(rows: Sequence[dict[str, Any]], description: str | None = None) -> str:
    """A GitHub Markdown table of `rows` (results.csv lines), followed by a caption paragraph."""
    head = ["Run"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(rows, lambda s: f"**{s}**")]
    if description is not None:
        lines += ["", caption(rows, description)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def latex_table(rows: Sequence[dict[str, Any]], description: str, label: str) -> str:
    """A booktabs table (\\toprule / \\midrule / \\bottomrule) with caption and label."""
    head = ["Run"] + [c[0] for c in COLUMNS]
    body = [
        "    " + " & ".join(latex_escape(c) if i == 0 else c for i, c in enumerate(cells)) + r" \\"
        for cells in _cells(rows, lambda s: f"\\textbf{{{s}}}")
    ]
    return "\n".join(
        [
            "% requires \\usepackage{booktabs}",
            r"\begin{table}[t]",
            r"  \centering",
            f"  \\caption{{{latex_escape(caption(rows, description))}}}",
            f"  \\label{{tab:{latex_escape(label)}}}",
            r"  \begin{tabular}{l" + "r" * len(COLUMNS) + "}",
            r"    \toprule",
            "    " + " & ".join(head) + r" \\",
            r"    \midrule",
            *body,
            r"    \bottomrule",
            r"  \end{tabular}",
            r"\end{table}",
            "",
        ]
    )


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
