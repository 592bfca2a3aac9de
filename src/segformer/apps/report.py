"""Report material: result tables (CSV, Markdown, LaTeX booktabs), figures, and an offline HTML page.

The tables and figures are those a face-parsing project report needs: a comparison table (params /
GFLOPs / FPS / score), training curves, per-class scores, a parameter-score plot and sample
predictions. `build_report` gathers run folders (written by
`segformer train`) and suite folders (written by `segformer experiment`) into one self-contained
folder, ``index.html`` + ``report.md`` + ``assets/``, that opens in a browser with no network.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..engine.figures import DPI, plot_val_curves, pyplot, save_figure
from ..engine.rundir import RunDir
from ..errors import SegformerError
from ..fileio import atomic_path, staged_output, write_text

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


# -- figures ---------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return RunDir(run_dir).read_metrics()


def plot_per_class_f1(per_class: dict[str, dict[str, float | None]], path: Path) -> None:
    """Grouped bars: per-class F1 (x: classes, one bar per run); classes absent everywhere are blank."""
    plt = pyplot()
    runs = list(per_class)
    classes = list(next(iter(per_class.values())))
    x = np.arange(len(classes))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.5 * len(classes) * max(1, len(runs) / 2)), 4.0))
    for i, run in enumerate(runs):
        values = [per_class[run].get(c) for c in classes]
        ax.bar(x - 0.4 + width * (i + 0.5), [np.nan if v is None else v for v in values], width, label=run)
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 (validation, final epoch)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(runs), 4))
    save_figure(fig, path)


def plot_params_vs_score(rows: Sequence[dict[str, Any]], path: Path, key: str = "ce7454_f") -> None:
    """Parameters (log scale) against the validation score, each run labelled."""
    from matplotlib.ticker import NullFormatter

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    params = [float(r["params"]) / 1e6 for r in rows]
    scores = [float(r[key]) for r in rows]
    ax.scatter(params, scores, s=40, zorder=3)
    for r, p, s in zip(rows, params, scores, strict=True):
        ax.annotate(str(r["run"]), (p, s), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ticks: list[float] = []
    for p in sorted(set(params)):  # label the runs' sizes, not log decades; one label per ~10% band
        if not ticks or p > ticks[-1] * 1.1:
            ticks.append(p)
    ax.set_xticks(ticks, [f"{p:.3g}" for p in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("parameters (M, log scale)")
    ax.set_ylabel(f"validation {key}")
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def validation_images(run_dir: Path):
    """The raw (uint8) validation split a run trained against, as its config.yaml describes it (synthetic
    faces generated by the run itself are in ``RUN/data``)."""
    from ..config import DataConfig, from_plain
    from ..data.layouts import load_split

    dc = from_plain(DataConfig, yaml.safe_load(RunDir(run_dir).config.read_text())["data"])
    root = dc.root or run_dir / "data"
    return load_split(
        root,
        "val",
        kind=dc.kind,
        label_set=dc.label_set,
        val_fraction=dc.val_fraction,
        split_seed=dc.split_seed,
    )


def add_class_legend(fig, label_set, classes: Sequence[int] | None = None, ncol: int = 6) -> None:
    """A legend of class colours (the label set's palette) under `fig`'s axes: `classes` (ids; default
    all) in id order. The one legend of every mask figure (`plot_predictions`, `segformer data preview`
    sheets drawn with matplotlib)."""
    from matplotlib.patches import Patch

    ids = sorted(set(range(label_set.num_classes) if classes is None else classes))
    handles = [
        Patch(
            facecolor=np.asarray(label_set.palette[i]) / 255.0,
            edgecolor="#444",
            label=label_set.class_names[i],
        )
        for i in ids
        if 0 <= i < label_set.num_classes
    ]
    if handles:
        fig.legend(
            handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(ncol, len(handles)),
            fontsize=8, frameon=False, title="classes", title_fontsize=8,
        )  # fmt: skip


def plot_predictions(models: dict[str, Any], dataset, path: Path, count: int, size: int) -> None:
    """Rows of validation images: image | ground truth | one prediction per model, column titles on top,
    a legend of the classes shown underneath. Each panel is drawn at least at the image's own resolution
    (predictions are resized back to it), so small structures stay visible."""
    from ..data.io import colorize
    from ..inference.predictor import Predictor

    plt = pyplot()
    predictors = [
        Predictor(m, image_size=size, label_set=dataset.label_set, faces=False) for m in models.values()
    ]
    n = min(count, len(dataset))
    cols = 2 + len(models)
    rows, shown = [], set()
    for i in range(n):
        image, truth = dataset.load(i)
        masks = [np.asarray(truth), *(np.asarray(p(image)) for p in predictors)]
        for m in masks:
            shown.update(int(v) for v in np.unique(m))
        rows.append([image, *(colorize(m, dataset.label_set) for m in masks)])
    height, width = max(r[0].shape[0] for r in rows), max(r[0].shape[1] for r in rows)
    scale = max(1.0, 192 / min(height, width))  # tiny images are enlarged so titles fit above them
    panel = (width * scale / DPI, height * scale / DPI)
    fig, axes = plt.subplots(
        n, cols, figsize=(panel[0] * cols * 1.04, panel[1] * n * 1.06 + 0.3), squeeze=False
    )
    for i, panels in enumerate(rows):
        for j, (image, title) in enumerate(zip(panels, ["image", "ground truth", *models], strict=True)):
            axes[i, j].imshow(image, interpolation="nearest")
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(title, fontsize=9)
    fig.subplots_adjust(
        left=0.01, right=0.99, top=1 - 0.3 / fig.get_figheight(), bottom=0.0, wspace=0.03, hspace=0.03
    )
    add_class_legend(fig, dataset.label_set, sorted(shown))
    save_figure(fig, path)


def write_suite_outputs(
    suite_dir: Path,
    rows: list[dict[str, Any]],
    runs: dict[str, dict[str, Any]],
    meta: dict[str, Any],
    samples: int,
) -> list[str]:
    """results.csv/.md/.tex, per_class_f1.csv, curves.png, per_class_f1.png, predictions.png and, when
    the runs differ in size, params_vs_score.png; returns the file names written."""
    from ..checkpoint import load

    name, description = meta["suite"], meta["description"]
    write_csv(suite_dir / "results.csv", rows)
    write_text(suite_dir / "results.md", f"### {name}\n\n" + markdown_table(rows, description))
    write_text(suite_dir / "results.tex", latex_table(rows, description, f"suite-{name}"))
    per_class = {
        run: {c: s["f1"] for c, s in info["scores"]["per_class"].items()} for run, info in runs.items()
    }
    classes = list(next(iter(per_class.values())))
    write_csv(
        suite_dir / "per_class_f1.csv",
        [{"class": c, **{r: per_class[r][c] for r in per_class}} for c in classes],
    )
    files = ["results.csv", "results.md", "results.tex", "per_class_f1.csv", "curves.png", "per_class_f1.png"]
    plot_val_curves({run: read_metrics(info["dir"]) for run, info in runs.items()}, suite_dir / "curves.png")
    plot_per_class_f1(per_class, suite_dir / "per_class_f1.png")
    if len({r["params"] for r in rows}) > 1:
        plot_params_vs_score(rows, suite_dir / "params_vs_score.png")
        files.append("params_vs_score.png")
    if samples > 0:
        first = next(iter(runs.values()))["dir"]
        models = {run: load(RunDir(info["dir"]).last) for run, info in runs.items()}
        size = int(rows[0]["img_size"])
        plot_predictions(models, validation_images(first), suite_dir / "predictions.png", samples, size)
        files.append("predictions.png")
    return files


# -- the report page -------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 14px; }
th, td { border-bottom: 1px solid #ccc; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1em 0; }
figcaption, .caption { color: #555; font-size: 13px; }
code { background: #f4f4f4; padding: 1px 4px; }
"""


class _Page:
    """The report under construction: HTML and Markdown side by side, assets copied into ``assets/``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.html: list[str] = []
        self.md: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.slugs: set[str] = set()

    def section(self, title: str) -> str:
        slug = base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        n = 2
        while slug in self.slugs:
            slug, n = f"{base}-{n}", n + 1
        self.slugs.add(slug)
        self.toc.append((slug, title))
        self.html.append(f'<section id="{slug}"><h2>{html.escape(title)}</h2>')
        self.md += [f"## {title}", ""]
        return slug

    def end_section(self) -> None:
        self.html.append("</section>")

    def heading(self, text: str) -> None:
        self.html.append(f"<h3>{html.escape(text)}</h3>")
        self.md += [f"### {text}", ""]

    def para(self, text: str, cls: str | None = None) -> None:
        attr = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{attr}>{html.escape(text)}</p>")
        self.md += [text, ""]

    def table(self, head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        def cell(tag: str, text: str) -> str:
            inner = html.escape(text)
            if text.startswith("**") and text.endswith("**"):
                inner = f"<b>{html.escape(text[2:-2])}</b>"
            return f"<{tag}>{inner}</{tag}>"

        self.html.append("<table><thead><tr>" + "".join(cell("th", h) for h in head) + "</tr></thead><tbody>")
        self.html += ["<tr>" + "".join(cell("td", c) for c in r) + "</tr>" for r in rows]
        self.html.append("</tbody></table>")
        self.md += ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
        self.md += ["| " + " | ".join(r) + " |" for r in rows] + [""]

    def asset(self, src: Path, slug: str) -> str:
        """Copy `src` into assets/<slug>/ and return its path relative to the page."""
        rel = f"assets/{slug}/{src.name}"
        dst = self.out / rel
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return rel

    def figure(self, rel: str, text: str) -> None:
        self.html.append(
            f'<figure><img src="{html.escape(rel)}" alt="{html.escape(text)}">'
            f"<figcaption>{html.escape(text)}</figcaption></figure>"
        )
        self.md += [f"![{text}]({rel})", "", f"*{text}*", ""]

    def links(self, rels: Sequence[str]) -> None:
        self.html.append(
            "<p>"
            + " · ".join(f'<a href="{html.escape(r)}">{html.escape(Path(r).name)}</a>' for r in rels)
            + "</p>"
        )
        self.md += [" · ".join(f"[{Path(r).name}]({r})" for r in rels), ""]

    def write(self, title: str) -> tuple[Path, Path]:
        stamp = time.strftime("%Y-%m-%d %H:%M")
        toc = "".join(f'<li><a href="#{s}">{html.escape(t)}</a></li>' for s, t in self.toc)
        page = (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            f'<p class="caption">generated {stamp} by segformer report</p>\n<ul>{toc}</ul>\n'
            + "\n".join(self.html)
            + "\n</body></html>\n"
        )
        md = "\n".join([f"# {title}", "", f"generated {stamp} by segformer report", "", *self.md])
        write_text(self.out / "index.html", page)
        write_text(self.out / "report.md", md)
        return self.out / "index.html", self.out / "report.md"


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def _partial_suite_section(page: _Page, suite_dir: Path, meta: dict[str, Any]) -> None:
    """An interrupted suite: the final-epoch scores of the runs that finished (their summaries), the
    others listed as missing; no speed measurements or figures (those are made once all runs are done)."""
    page.section(f"Suite: {meta['suite']} (PARTIAL)")
    done = [r for r in meta["runs"] if RunDir(suite_dir / r).is_finished()]
    missing = [r for r in meta["runs"] if r not in done]
    page.para(
        f"PARTIAL RESULTS: {len(done)} of {len(meta['runs'])} runs finished; "
        f"not finished: {', '.join(missing) or 'none'} (the suite was interrupted; run the same "
        "`segformer experiment` command again to complete it). " + meta["description"] + "."
    )
    keys = [("CE7454 F", "ce7454_f"), ("mIoU", "miou"), ("mean F1", "mean_f1_fg"), ("pixel acc", "pixel_acc")]
    table = []
    for run in done:
        summary = RunDir(suite_dir / run).read_summary()
        last = summary.get("last_scores") or {}
        table.append([run, f"{summary['epochs_completed']:g}", *(_fmt(last.get(k)) for _, k in keys)])
    if table:
        page.table(["Run", "Epochs", *(h for h, _ in keys)], table)
        page.para("Validation scores of each finished run's final epoch.", "caption")
    page.end_section()


def _suite_section(page: _Page, suite_dir: Path) -> None:
    meta = json.loads((suite_dir / "suite.json").read_text())
    if not meta.get("complete", True) or not (suite_dir / "results.csv").is_file():
        _partial_suite_section(page, suite_dir, meta)
        return
    rows = read_csv(suite_dir / "results.csv")
    slug = page.section(f"Suite: {meta['suite']}")
    page.para(meta["description"])
    page.table(["Run"] + [c[0] for c in COLUMNS], _cells(rows, lambda s: f"**{s}**"))
    page.para(caption(rows, meta["description"]), "caption")
    page.links(
        [
            page.asset(suite_dir / f, slug)
            for f in ("results.csv", "results.md", "results.tex", "per_class_f1.csv")
        ]
    )
    figures = {
        "curves.png": "validation CE7454 F-score per epoch",
        "params_vs_score.png": "parameters against the final validation CE7454 F-score",
        "per_class_f1.png": "per-class F1 on the validation split (final epoch)",
        "predictions.png": "validation images: image | ground truth | prediction of each run (final epoch)",
    }
    for name, text in figures.items():
        if (suite_dir / name).is_file():
            page.figure(page.asset(suite_dir / name, slug), f"{meta['suite']}: {text}")
    per_class = read_csv(suite_dir / "per_class_f1.csv")
    page.heading("Per-class F1 (validation, final epoch)")
    runs = [k for k in per_class[0] if k != "class"]
    page.table(
        ["class", *runs],
        [[r["class"]] + [_fmt(float(r[k])) if r[k] else "-" for k in runs] for r in per_class],
    )
    page.end_section()


def run_label(run_dir: Path) -> str:
    """A run's name for titles: its folder with the parent (``segformer-demo/run``, ``loss/ce``), since
    run folders are often called just ``run``."""
    run_dir = Path(run_dir).resolve()
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name else run_dir.name


def _run_section(page: _Page, run_dir: Path, samples: int) -> None:
    from ..checkpoint import load

    run = RunDir(run_dir)
    summary = run.read_summary()
    cfg = run.read_config()
    label = run_label(run_dir)
    slug = page.section(f"Run: {label}")
    model = load(run.last)
    params = sum(p.numel() for p in model.parameters())
    page.para(
        f"{summary['model']} ({params:,} parameters), {cfg.data.image_size}px, "
        f"{summary['epochs_completed']} epochs in {summary['minutes']:.1f} min ({summary['stop_reason']}), "
        f"seed {cfg.train.seed}, data {cfg.data.root}."
    )
    last = summary.get("last_scores") or {}
    best = json.loads(run.best_scores.read_text()) if run.best_scores.is_file() else {}
    keys = [("CE7454 F", "ce7454_f"), ("mIoU", "miou"), ("mean F1", "mean_f1_fg"), ("pixel acc", "pixel_acc")]
    table = []
    if last:
        table.append([f"final epoch ({summary['epochs_completed']})"] + [_fmt(last.get(k)) for _, k in keys])
    if best:
        table.append([f"best epoch ({best['epoch']})"] + [_fmt(best.get(k)) for _, k in keys])
    page.table(["validation", *(h for h, _ in keys)], table)
    if run.curves.is_file():
        page.figure(page.asset(run.curves, slug), f"{label}: training loss, validation scores, lr")
    if last.get("per_class"):
        page.heading("Per-class scores (validation, final epoch)")
        page.table(
            ["class", "IoU", "F1", "precision", "recall", "pixels"],
            [
                [
                    c,
                    _fmt(s["iou"]),
                    _fmt(s["f1"]),
                    _fmt(s["precision"]),
                    _fmt(s["recall"]),
                    f"{s['support']:,}",
                ]
                for c, s in last["per_class"].items()
            ],
        )
    if samples > 0:
        try:
            dataset = validation_images(run_dir)
        except SegformerError as err:
            page.para(f"sample predictions skipped: {err}", "caption")
        else:
            path = page.out / "assets" / slug / "predictions.png"
            plot_predictions({"prediction": model}, dataset, path, samples, cfg.data.image_size)
            page.figure(
                f"assets/{slug}/predictions.png",
                f"{label}: validation image | ground truth | prediction",
            )
    page.end_section()


def build_report(
    inputs: Sequence[str | Path],
    out: str | Path,
    title: str = "segformer report",
    samples: int = 4,
    overwrite: bool = False,
) -> Path:
    """Gather run folders (``summary.json``) and experiment suite folders (``suite.json``; an experiment
    folder holding several suites counts as all of them) into ``OUT/index.html`` + ``OUT/report.md``
    with every image copied into ``OUT/assets/``; returns the HTML path."""
    sections: list[tuple[str, Path]] = []
    for item in map(Path, inputs):
        if (item / "suite.json").is_file():
            sections.append(("suite", item))
        elif RunDir(item).is_finished():
            sections.append(("run", item))
        elif item.is_dir() and sorted(p.parent for p in item.glob("*/suite.json")):
            sections += [("suite", p.parent) for p in sorted(item.glob("*/suite.json"))]
        else:
            raise SegformerError(
                f"{item}: neither a run folder (summary.json) nor an experiment suite folder (suite.json)"
            )
    # A report is written again freely; the runs and suites it reads are never written, nor is it put
    # inside them; a file in OUT that segformer report did not write is never replaced.
    with staged_output(
        out, "report", list(map(Path, inputs)), overwrite, replace=True, what="a report"
    ) as tmp:
        page = _Page(tmp)
        for kind, path in sections:
            if kind == "suite":
                _suite_section(page, path)
            else:
                _run_section(page, path, samples)
        page.write(title)
    return Path(out) / "index.html"
