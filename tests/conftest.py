"""Shared fixtures: tiny model configs that keep the suite fast on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segformer import ModelConfig

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "celebamask-mini"


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


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "train" / "images").is_dir():
        pytest.skip(f"shared face data not found at {SHARED_DATA}")
    return SHARED_DATA
