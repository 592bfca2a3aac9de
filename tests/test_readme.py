"""Every command in the README runs as shown.

Fast: every `segformer ...` command line (also inside `torchrun -m segformer` and `&&` chains) parses
with the CLI's own parser, every script it names exists, and the Python snippets that need no trained
model run. Slow (`-m slow`): the README is followed from top to bottom in an empty folder, commands and
Python snippets in order, with the tiny sizes of `TINY` substituted for minutes-long settings; commands
that need data this machine may lack (CE7454, CelebAMask-HQ), timing benchmarks and set-up commands are
skipped, each for the reason in `skip_reason`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segformer.cli import build_parser

from conftest import SRC

README = Path(__file__).resolve().parents[1] / "README.md"
ROOT = README.parent

# README text -> what the slow test runs instead: the same command at a size that takes seconds.
TINY = {
    "segformer demo": "segformer demo --epochs 1 --num 16 --val 2 --size 32",
    "--num 1000 --size 256": "--num 12 --size 64",
    "--num 1000 --size 128": "--num 12 --size 32",
    "--num 5100 --size 128 --val-fraction 0.0196": "--num 51 --size 32 --val-fraction 0.0196",
    "--img-size 128 --batch-size 16 --epochs 200 --max-minutes 5": "--img-size 32 --batch-size 16 --epochs 1",
    "--synthetic 200 --img-size 64 --epochs 5": "--synthetic 24 --img-size 32 --epochs 1 --batch-size 8",
    "--quick --synthetic 24": "--quick --synthetic 12",
}


def blocks() -> list[tuple[str, str]]:
    """(language, code) of the README's fenced blocks, in order (indented blocks dedented)."""
    text = README.read_text()
    found = re.findall(r"^( *)```(\w+)\n(.*?)^\1```", text, flags=re.M | re.S)
    return [(lang, textwrap.dedent(indent_strip(indent, body))) for indent, lang, body in found]


def indent_strip(indent: str, body: str) -> str:
    return "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in body.splitlines())


def shell_lines(code: str) -> list[str]:
    """Command lines of a bash/console block: continuations joined, prompts and comments dropped."""
    code = re.sub(r"\\\n\s*", " ", code)
    lines = []
    for line in code.splitlines():
        line = re.sub(r"(^|\s+)#(\s.*)?$", "", line.strip().removeprefix("$ "))  # comments: " # ..."
        if line:
            lines.append(line)
    return lines


def segformer_argvs(code: str) -> list[list[str]]:
    """The argument lists given to `segformer` in a block (`segformer`, `python -m segformer` and
    `torchrun ... -m segformer`, also inside && / || / ; chains)."""
    found = []
    for line in re.sub(r"\\\n\s*", " ", code).splitlines():
        words = shlex.split(line.strip().removeprefix("$ "), comments=True)
        segment: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";") or word.endswith(";"):
                if word.endswith(";") and word != ";":
                    segment.append(word[:-1])
                if "segformer" in segment:
                    start = segment.index("segformer")
                    if start == 0 or segment[start - 1] == "-m":
                        found.append(segment[start + 1 :])
                segment = []
            else:
                segment.append(word)
    return found


SHELL = [code for lang, code in blocks() if lang in ("bash", "console")]
PYTHON = [code for lang, code in blocks() if lang == "python"]


def test_the_readme_has_the_blocks_this_test_reads():
    assert len(SHELL) >= 8 and len(PYTHON) >= 4
    assert sum(len(segformer_argvs(code)) for code in SHELL) >= 25


@pytest.mark.parametrize("argv", [a for code in SHELL for a in segformer_argvs(code)], ids=" ".join)
def test_every_segformer_command_parses(argv, capsys):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"segformer {' '.join(argv)}: {capsys.readouterr().err.strip()}")
    assert callable(args.func)


def test_every_script_and_file_the_readme_runs_exists():
    for code in SHELL:
        for line in shell_lines(code):
            for script in re.findall(r"(?:python|bash) ((?:benchmarks|\.ci)/\S+)", line):
                assert (ROOT / script).is_file(), script


# The snippets that need no data or trained run, each found by a line it contains.
SELF_CONTAINED = {
    "pretrained": 'segformer.Predictor("microsegformer-celebamask")',
    "models": 'segformer.create_model("microsegformer", num_classes=19)',
    "interop": 'segformer.save(model, "b0-hf", format="hf")',
}


@pytest.mark.parametrize("name", list(SELF_CONTAINED))
def test_python_snippets_without_data_run(name, tmp_path):
    (code,) = [code for code in PYTHON if SELF_CONTAINED[name] in code]
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env(), capture_output=True, text=True, timeout=600
    )


def skip_reason(line: str, cwd: Path) -> str | None:
    """Why the slow test does not run `line` (None: it runs)."""
    if "import torch" in line and "segformer demo" in line:
        return None  # the first set-up line: its `segformer demo` runs (see `runnable`)
    if re.search(r"pip install|python -m pytest|ruff |bash \.ci/run", line):
        return "set-up or the test suite itself"
    needs_data = any(p in line for p in ("data/ce7454", "data/CelebAMask-HQ", "runs/micro"))
    if needs_data and not (cwd / "data" / "ce7454").is_dir():
        return "needs the CE7454 / CelebAMask-HQ data"
    if line.startswith("torchrun"):
        return "DATA is a placeholder (DDP is tested in tests/test_train.py)"
    if line.startswith(("segformer bench", "python benchmarks/")):
        return "a timing benchmark: minutes of CPU"
    if line.startswith(("segformer serve", "curl ")):
        return "a server runs until Ctrl-C (tests/test_serve_load.py starts one and calls it)"
    return None


def runnable(line: str) -> str:
    """`line` as the slow test runs it: the tiny substitutions, `segformer` from this checkout."""
    if (
        "import torch" in line and "segformer demo" in line
    ):  # python -c ... || pip install ...; pip install -e . && segformer demo
        line = line.split("&&")[-1].strip()
    if line == "segformer demo":
        line = TINY["segformer demo"]
    for text, tiny in TINY.items():
        if text != "segformer demo":
            line = line.replace(text, tiny)
    return re.sub(r"(^|&& )segformer ", rf"\1{sys.executable} -m segformer ", line)


@pytest.mark.slow
def test_following_the_readme_in_an_empty_folder(tmp_path):
    """Top to bottom, in order: each block's commands, then its Python snippet."""
    ran, skipped = [], []
    for lang, code in blocks():
        if lang == "python":
            done = run_python(code, tmp_path)
            assert done.returncode == 0, f"{code}\n{done.stderr}"
            ran.append("python snippet")
            continue
        if lang not in ("bash", "console"):
            continue
        for line in shell_lines(code):
            reason = skip_reason(line, tmp_path)
            if reason:
                skipped.append((line, reason))
                continue
            command = runnable(line)
            done = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900
            )
            expected = 1 if "--fix" in line else 0  # `data check` of the CE7454 folder finds mirrored masks
            assert done.returncode == expected, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            ran.append(line)
    assert len(ran) >= 24, (ran, skipped)  # 20 commands and 4 Python snippets here
