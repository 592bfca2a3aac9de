"""Shared fixtures: tiny model configs that keep the suite fast on 2 CPU cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segformer import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SHARED_DATA = ROOT.parent / "shared" / "data" / "celebamask-mini"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Each test gets an empty segformer cache (exported ONNX graphs) of its own, not the user's."""
    monkeypatch.setenv("SEGFORMER_CACHE", str(tmp_path_factory.mktemp("cache")))


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m segformer ARGS` in a subprocess against this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "segformer", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def run_solution(solution: str | Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a CE7454 ``solution/run.py ARGS`` as a grader would: in its folder, without PYTHONPATH, and
    with ``import segformer`` made to fail (the package may be installed in site-packages)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        f"import runpy, sys; sys.modules['segformer'] = None; sys.argv = {['run.py', *args]!r}; "
        "runpy.run_path('run.py', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=solution, env=env, capture_output=True, text=True, timeout=timeout
    )


def tiny_config(decoder: str = "mlp", **changes) -> ModelConfig:
    """A 4-stage SegFormer a few thousand parameters big, with every feature switched on."""
    base = ModelConfig(
        num_classes=5,
        embed_dims=(8, 16, 24, 32),
        depths=(1, 2, 1, 1),
        num_heads=(1, 2, 3, 4),
        sr_ratios=(4, 2, 2, 1),
        mlp_ratios=(2, 2, 2, 2),
        decoder=decoder,
        decoder_dim=16,
        mix_ffn=decoder == "mlp",
    )
    return base.replace(**changes)


def randomize_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Affine parameters and BatchNorm statistics far from their identity initialisation."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "train" / "images").is_dir():
        pytest.skip(f"shared face data not found at {SHARED_DATA}")
    return SHARED_DATA
