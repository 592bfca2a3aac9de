"""Tables (Markdown, LaTeX booktabs), and the offline HTML / Markdown report of suites and runs, rendered
by headless Chromium in a slow test."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segformer import SegformerError
from segformer.apps.experiments import QUICK, run_suite
from segformer.apps.report import build_report, latex_escape, latex_table, markdown_table
from segformer.cli import main
from segformer.data.synthetic import write_synthetic_dataset

CHROMIUM = Path("/usr/bin/chromium")


def row(run: str, score: float, params: int = 1_721_939, **extra) -> dict:
    base = {
        "run": run,
        "params": params,
        "gflops": 0.3244,
        "fps": 123.45,
        "epochs_completed": 30,
        "ce7454_f": score,
        "miou": score - 0.1,
        "mean_f1_fg": score - 0.05,
        "val_images": 90,
        "val_source": "a seeded 10% hold-out of train (split seed 0)",
        "img_size": 128,
        "epochs": 30,
        "max_minutes": None,
        "batch_size": 32,
        "seed": 0,
        "fps_threads": 2,
    }
    return {**base, **extra}


def test_markdown_table_has_one_row_per_run_and_bolds_the_best_scores():
    rows = [row("ce", 0.70), row("ce+0.5dice", 0.75, miou=0.66), row("dice_only", 0.72)]
    text = markdown_table(rows, "training loss")
    lines = text.splitlines()
    assert lines[0] == "| Run | Params (M) | GFLOPs | FPS | Epochs | CE7454 F | mIoU | mean F1 |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| ce | 1.72 | 0.324 | 123.5 | 30 | 0.7000 | 0.6000 | 0.6500 |"
    assert lines[3] == "| ce+0.5dice | 1.72 | 0.324 | 123.5 | 30 | **0.7500** | **0.6600** | **0.7000** |"
    assert lines[4].startswith("| dice_only |")
    caption = lines[6]
    assert caption.startswith("training loss. Validation: 90 images, a seeded 10% hold-out of train")
    assert "128px, 30 epochs, batch 32, seed 0" in caption and "torch threads: 2" in caption
    budget = markdown_table([row("a", 0.5, max_minutes=8.0)], "x")
    assert "30 epochs, at most 8 min per run" in budget


def test_latex_table_is_booktabs_and_escaped():
    rows = [row("ce_only", 0.70), row("ce+0.5dice", 0.75)]
    tex = latex_table(rows, "loss 100% & more", "suite-loss")
    lines = tex.splitlines()
    assert lines[0] == "% requires \\usepackage{booktabs}"
    assert "\\begin{tabular}{lrrrrrrr}" in tex and tex.count("\\toprule") == 1
    i, j = lines.index("    \\midrule"), lines.index("    \\bottomrule")
    assert lines[i - 1] == "    Run & Params (M) & GFLOPs & FPS & Epochs & CE7454 F & mIoU & mean F1 \\\\"
    assert lines[i + 1 : j] == [
        "    ce\\_only & 1.72 & 0.324 & 123.5 & 30 & 0.7000 & 0.6000 & 0.6500 \\\\",
        "    ce+0.5dice & 1.72 & 0.324 & 123.5 & 30 & "
        "\\textbf{0.7500} & \\textbf{0.6500} & \\textbf{0.7000} \\\\",
    ]
    assert "\\caption{loss 100\\% \\& more. Validation" in tex and "\\label{tab:suite-loss}" in tex
    assert (
        latex_escape("a_b#c$d{e}~f^g\\h") == "a\\_b\\#c\\$d\\{e\\}\\textasciitilde{}f\\^{}g\\textbackslash{}h"
    )


# -- the report page -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny runs on shared cores
    out = tmp_path_factory.mktemp("exp")
    data = out / "data"
    write_synthetic_dataset(data, num=20, size=32, seed=0, val_fraction=0.2, progress=False)
    run_suite("schedule", data, out, QUICK, progress=False)
    torch.set_num_threads(threads)
    return out


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.hrefs: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.hrefs.append(attrs["href"])
        if tag == "table":
            self.tables += 1


def check_page(report: Path) -> Links:
    page = (report / "index.html").read_text()
    links = Links()
    links.feed(page)
    assert links.images
    for src in links.images + [h for h in links.hrefs if not h.startswith("#")]:
        assert not re.match(r"^(/|[a-z]+:)", src), f"not a relative link: {src}"
        assert (report / src).is_file(), src
    for src in links.images:
        with Image.open(report / src) as img:
            img.verify()
    md = (report / "report.md").read_text()
    for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (report / src).is_file(), src
    return links


def test_report_of_a_suite_and_a_run_is_self_contained(experiment, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["report", str(experiment / "schedule"), str(experiment / "schedule" / "cosine"),
                 "--out", str(report), "--samples", "2"]) == 0  # fmt: skip
    assert "index.html" in capsys.readouterr().out
    links = check_page(report)
    # suite: results, per-class F1 table; run: scores, per-class scores
    assert links.tables == 4
    # the schedule variants share one model size: no parameter-score plot
    assert [Path(s).name for s in links.images] == [
        "curves.png", "per_class_f1.png", "predictions.png", "curves.png", "predictions.png"
    ]  # fmt: skip
    page = (report / "index.html").read_text()
    for run in ("constant", "step", "cosine"):
        assert f"<td>{run}</td>" in page
    assert "Suite: schedule" in page and "Run: schedule/cosine" in page
    md = (report / "report.md").read_text()
    assert "| constant |" in md and "## Run: schedule/cosine" in md
    # moving the folder keeps it whole
    moved = tmp_path / "moved"
    shutil.move(report, moved)
    check_page(moved)


def test_report_of_an_experiment_folder_includes_every_suite(experiment, tmp_path):
    html_path = build_report([experiment], tmp_path / "r", samples=0)
    assert "Suite: schedule" in html_path.read_text()


def test_report_rejects_folders_that_are_neither_runs_nor_suites(tmp_path, capsys):
    with pytest.raises(SegformerError, match="neither a run folder"):
        build_report([tmp_path], tmp_path / "out")
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: neither a run folder (summary.json)" in err


@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_its_images(experiment, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): apt-get install -y chromium")
    report = tmp_path / "report"
    build_report([experiment / "schedule", experiment / "schedule" / "cosine"], report, samples=2)
    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2600",
        "--virtual-time-budget=5000", (report / "index.html").as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as img:
        img.verify()
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 200, "the screenshot is blank"
    # Text and tables are black/grey on white: saturated colour only comes from the figures. matplotlib's
    # first line/bar colour (tab:blue, 31 119 180) must be there, so the <img> files were loaded.
    blue = (np.abs(pixels - [31, 119, 180]).sum(1) < 30).sum()
    assert blue > 500, f"only {blue} figure-blue pixels: images not loaded?"


def test_report_of_a_run_on_its_own_synthetic_faces_and_after_its_data_is_gone(tmp_path):
    from segformer.config import RunConfig
    from segformer.engine.train import train

    cfg = RunConfig.from_dict(
        {
            "model": {"name": "microsegformer", "embed_dims": [8, 16, 24, 32], "decoder_dim": 16},
            "data": {"synthetic": 12, "img_size": 32, "workers": 0, "val_fraction": 0.25},
            "train": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0},
        }
    )
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    build_report([run], tmp_path / "r1", samples=2)
    links = check_page(tmp_path / "r1")
    assert [Path(s).name for s in links.images] == ["curves.png", "predictions.png"]
    shutil.rmtree(run / "data")
    page = build_report([run], tmp_path / "r2", samples=2).read_text()
    assert "sample predictions skipped" in page and "predictions.png" not in page
    # A folder called "run" is titled with its parent, not "Run: run".
    assert f"Run: {tmp_path.name}/run" in page


def test_report_of_an_interrupted_suite_shows_the_finished_runs_marked_partial(tmp_path, monkeypatch):
    import segformer.apps.experiments as experiments
    from segformer.engine.train import train

    data = tmp_path / "data"
    write_synthetic_dataset(data, num=20, size=32, seed=0, val_fraction=0.2, progress=False)

    def interrupted_second(cfg, out, resume=False, progress=True):
        if Path(out).name == "step":
            raise KeyboardInterrupt
        return train(cfg, out, resume=resume, progress=progress)

    monkeypatch.setattr(experiments, "train", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        run_suite("schedule", data, tmp_path / "exp", QUICK, progress=False)
    meta = json.loads((tmp_path / "exp" / "schedule" / "suite.json").read_text())
    assert meta["complete"] is False and meta["runs"] == ["constant", "step", "cosine"]
    page = build_report([tmp_path / "exp"], tmp_path / "r", samples=0).read_text()
    assert "Suite: schedule (PARTIAL)" in page
    assert "PARTIAL RESULTS: 1 of 3 runs finished; not finished: step, cosine" in page
    assert "<td>constant</td>" in page and "<td>step</td>" not in page
    summary = json.loads((tmp_path / "exp" / "schedule" / "constant" / "summary.json").read_text())
    assert f"<td>{summary['last_scores']['ce7454_f']:.4f}</td>" in page
