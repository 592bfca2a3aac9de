"""Every command in the README and the documents it points to runs as shown.

Fast: every `segformer ...` command line of `DOCUMENTS` (also inside `torchrun -m segformer` and `&&`
chains) parses with the CLI's own parser, every script it names exists, every relative link leads to a
file and heading that exist, the README stays a five-minute read, and the Python snippets that need no
trained model run. Slow (`-m slow`): the documents are followed in order, top to bottom, in one empty
folder, commands and Python snippets in order, with the tiny sizes of `TINY` substituted for
minutes-long settings; commands that need data this machine may lack (CE7454, CelebAMask-HQ), the
network, a placeholder for the reader's own files, timing benchmarks and set-up commands are skipped,
each for the reason in `skip_reason`. Files the reader is asked to bring (`READER_FILES`: their photos)
are drawn as synthetic faces before the first command that names them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segformer.cli import build_parser
from segformer.data.synthetic import generate_face

from conftest import SRC

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results.md"
# The documents whose commands are tested, in the order the slow test follows them: the README, the
# pages it links to for details (their commands use what the README's made: the demo's run, b0-hf),
# then the measurements and the commands that made them.
DOCUMENTS = [
    README,
    *(ROOT / "docs" / f"{name}.md" for name in ("data", "models", "inference", "training", "experiments")),
    RESULTS,
]
README_MAX_LINES = 200
# The README's first lines: the set-up commands `.ci/run` and CI rely on, word for word.
SET_UP = [
    'python -c "import torch" 2>/dev/null || pip install torch==2.13.0; pip install -e . && segformer demo',
    'python -c "import torch" 2>/dev/null || pip install torch==2.13.0; pip install -e ".[test]" '
    "&& python -m pytest -q",
]
# Files the reader brings (their own photos): the tests draw a synthetic face in their place.
READER_FILES = ("photo.jpg", "street.jpg")

# Document text -> what the slow test runs instead: the same command at a size that takes seconds.
TINY = {
    "segformer demo": "segformer demo --epochs 1 --num 16 --val 2 --size 32",
    "--num 1000 --size 256": "--num 12 --size 64",
    "--num 1000 --size 128": "--num 12 --size 32",
    "--num 5100 --size 128 --val-fraction 0.0196": "--num 51 --size 32 --val-fraction 0.0196",
    "--img-size 128 --batch-size 16 --epochs 200 --max-minutes 5": "--img-size 32 --batch-size 16 --epochs 1",
    "--synthetic 200 --img-size 64 --epochs 5": "--synthetic 24 --img-size 32 --epochs 1 --batch-size 8",
    "--quick --synthetic 24": "--quick --synthetic 12",
}


def blocks(document: Path = README) -> list[tuple[str, str]]:
    """(language, code) of a document's fenced blocks, in order (indented blocks dedented)."""
    text = document.read_text()
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


def name(document: Path) -> str:
    return str(document.relative_to(ROOT))


SHELL = [(doc, code) for doc in DOCUMENTS for lang, code in blocks(doc) if lang in ("bash", "console")]
PYTHON = [(doc, code) for doc in DOCUMENTS for lang, code in blocks(doc) if lang == "python"]
COMMANDS = [(doc, argv) for doc, code in SHELL for argv in segformer_argvs(code)]


def test_the_documents_have_the_blocks_this_test_reads():
    assert len(SHELL) >= 8 and len(PYTHON) >= 4
    assert len(COMMANDS) >= 25
    for document in DOCUMENTS:  # a page that lost its commands (or moved) is noticed here
        assert any(doc == document for doc, _ in COMMANDS), name(document)
    readme = [argv for doc, argv in COMMANDS if doc == README]
    assert len(readme) >= 10 and any(argv[:1] == ["predict"] for argv in readme)


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move details to docs/"


def test_readme_starts_with_the_set_up_commands():
    lang, code = blocks(README)[0]
    assert lang == "bash" and shell_lines(code) == SET_UP


@pytest.mark.parametrize(
    "document,argv", COMMANDS, ids=[f"{name(doc)}: {' '.join(argv)}" for doc, argv in COMMANDS]
)
def test_every_segformer_command_parses(document, argv, capsys):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{name(document)}: segformer {' '.join(argv)}: {capsys.readouterr().err.strip()}")
    assert callable(args.func)


def test_every_script_and_file_the_documents_run_exists():
    for document, code in SHELL:
        for line in shell_lines(code):
            for script in re.findall(r"(?:python|bash) ((?:benchmarks|\.ci)/\S+)", line):
                assert (ROOT / script).is_file(), f"{name(document)}: {script}"


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_leads_somewhere():
    """Links between the README and docs/ name files that exist, and headings that exist in them."""
    for document in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"^( *)```.*?^\1```", "", document.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, fragment = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            assert linked.is_file(), f"{name(document)}: {target}"
            if fragment:
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), flags=re.M)
                assert fragment in {anchor(h) for h in headings}, f"{name(document)}: {target}"


# The snippets that need no data or trained run, each found by a line it contains.
SELF_CONTAINED = {
    "pretrained": 'segformer.Predictor("microsegformer-celebamask")',
    "models": 'segformer.create_model("microsegformer", num_classes=19)',
    "interop": 'segformer.save(model, "b0-hf", format="hf")',
}


@pytest.mark.parametrize("snippet", list(SELF_CONTAINED))
def test_python_snippets_without_data_run(snippet, tmp_path):
    (code,) = [code for _, code in PYTHON if SELF_CONTAINED[snippet] in code]
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def bring_reader_files(text: str, cwd: Path) -> None:
    """The reader's own photos that `text` names, as synthetic faces (a photo-sized canvas with one
    face would do as well: the command only has to find a file)."""
    for file in READER_FILES:
        if re.search(rf"(^|[\s\"']){re.escape(file)}", text) and not (cwd / file).exists():
            image, _ = generate_face(np.random.default_rng(len(file)), 256)
            Image.fromarray(image).save(cwd / file, quality=95)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    bring_reader_files(code, cwd)
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
    if line.startswith("segformer push") or re.search(r"(^|\s)nvidia/", line):
        return "needs the network (the Hugging Face Hub)"
    if line.startswith("torchrun"):
        return "DATA is a placeholder (DDP is tested in tests/test_train.py)"
    if line.startswith(("segformer bench", "python benchmarks/")):
        return "a timing benchmark: minutes of CPU"
    if line.startswith(("segformer serve", "curl ")):
        return "a server runs until Ctrl-C (tests/test_serve_load.py starts one and calls it)"
    if re.search(r"\b(DATA|RUN)\b", line):
        return "DATA / RUN stand for the reader's own data or run"
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
def test_following_the_documents_in_an_empty_folder(tmp_path):
    """README first, then each document of `DOCUMENTS`, top to bottom, in one folder: each block's
    commands, then its Python snippet."""
    ran, skipped = [], []
    for document in DOCUMENTS:
        for lang, code in blocks(document):
            if lang == "python":
                done = run_python(code, tmp_path)
                assert done.returncode == 0, f"{name(document)}:\n{code}\n{done.stderr}"
                ran.append((document, "python snippet"))
                continue
            if lang not in ("bash", "console"):
                continue
            for line in shell_lines(code):
                reason = skip_reason(line, tmp_path)
                if reason:
                    skipped.append((line, reason))
                    continue
                bring_reader_files(line, tmp_path)
                command = runnable(line)
                done = subprocess.run(
                    ["bash", "-c", command],
                    cwd=tmp_path,
                    env=env(),
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                expected = 1 if "--fix" in line else 0  # `data check` of the CE7454 folder: mirrored masks
                assert done.returncode == expected, (
                    f"{name(document)}: {command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
                )
                ran.append((document, line))
    assert len(ran) >= 24, (ran, skipped)  # 20 commands and 4 Python snippets at least
    assert sum(doc == README for doc, _ in ran) >= 8, (ran, skipped)  # the README's own examples run
