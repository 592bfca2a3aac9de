"""Shared by the scripts in this folder: run one `segformer.bench` comparison and judge it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from segformer.bench import Report


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the targets' setting)")
    p.add_argument("--json", type=Path, default=None, help="also write the reports to this JSON file")
    return p


def judge(report: Report, key: str, target: float, higher_is_better: bool = True) -> bool:
    """Print `report` and whether its ratio `key` meets `target`."""
    value = report.ratio()[key]
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    print(report.format())
    print(f"TARGET {key} {sign} {target}: {value:.2f} -> {'met' if ok else 'NOT MET'}\n", flush=True)
    return ok


def main(cases: list[tuple[Callable[[], Report], str, float, bool]], json_path: Path | None) -> int:
    """Run each (benchmark, ratio key, target, higher is better); exit 1 when a target is missed."""
    results, ok = [], True
    for run, key, target, higher in cases:
        report = run()
        ok &= judge(report, key, target, higher)
        results.append({**report.to_dict(), "target": {key: target}})
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1
