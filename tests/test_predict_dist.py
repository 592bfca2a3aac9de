"""`torchrun -m segformer predict`: the inputs shared out over the processes (gloo on CPU) write the same
files, byte for byte, as one process; one summary at the end; a re-run resumes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segformer import create_model
from segformer.checkpoint import save_model
from segformer.fileio import MANIFEST_NAME

from conftest import SRC, run_cli, tiny_config

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def _files(out: Path) -> dict[str, str]:
    """Checksum of every file under `out` but the manifest (its entries are checked on their own)."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".segformer-lock")
    }


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    command += ["--standalone", "-m", "segformer", "predict", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(3)
    save_model(
        create_model(tiny_config("micro", num_classes=19)), root / "model", meta={"label_set": "celebamask"}
    )
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    for i in range(5):  # odd count and sizes: the shares differ
        h, w = 32 + 4 * i, 40 - 2 * i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    writer = cv2.VideoWriter(str(images / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (40, 32))
    for _ in range(3):
        writer.write(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    writer.release()
    return root / "model", images


def test_two_processes_write_what_one_process_writes(inputs, tmp_path):
    model, images = inputs
    options = ["--whole-image", "--image-size", "32", "--backend", "torch", "--threads", "1", "--overlay"]
    options += ["--probs", "--parts", "skin,hair", "--cutout", "--quiet"]
    one = run_cli("predict", str(model), str(images), "--out", str(tmp_path / "one"), *options)
    assert one.returncode == 1, one.stderr  # broken.jpg
    two = _torchrun(str(model), str(images), "--out", str(tmp_path / "two"), *options)
    assert two.returncode != 0, two.stderr  # (torchrun reports the exit code 1 of its processes)
    expected = _files(tmp_path / "one")
    assert len(expected) == 8 * 6  # 5 images + 3 video frames, each: map, overlay, probs, 2 parts, cut-out
    assert _files(tmp_path / "two") == expected  # every file written once, the same bytes
    summaries = [line for line in two.stderr.splitlines() if line.startswith("wrote ")]
    assert len(summaries) == 1, two.stderr  # one summary, of both shares, by the first process
    assert "wrote 8 label map(s) and 40 other file(s)" in summaries[0]
    assert "1 input(s) failed" in summaries[0] and two.stderr.count("broken.jpg: not a readable") == 1
    assert not list((tmp_path / "two").glob(".segformer-lock"))  # the lock went with the run
    for out in ("one", "two"):  # every file is recorded as predict's (a re-run replaces or skips them)
        manifest = json.loads((tmp_path / out / MANIFEST_NAME).read_text())["files"]
        assert sorted(manifest) == sorted(expected) and {e["command"] for e in manifest.values()} == {
            "predict"
        }
