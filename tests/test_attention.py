"""Attention maps: the probabilities are the model's own (they rebuild every attention layer's output),
query points map to the right tokens, maps with and without sequence reduction, figures and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import segformer
from segformer import SegformerError, create_model
from segformer.apps.attention import attention_probs, collect_attention, write_attention_maps
from segformer.cli import main
from segformer.data.io import load_image, save_image
from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segformer.inference.ops import preprocess
from segformer.models import SegFormer
from segformer.models.mit import EfficientSelfAttention

from conftest import tiny_config


def test_probabilities_rebuild_every_attention_output():
    """softmax(q k^T / sqrt(d)) from `attention_probs`, applied to the values and the output projection,
    must give exactly what each EfficientSelfAttention returned inside the model's forward pass."""
    model = SegFormer(tiny_config()).eval()  # heads 1, 2, 3, 4; sr 4, 2, 2, 1
    checked = []

    def check(attn, args, output):
        x, h, w = args
        probs = attention_probs(attn, x, h, w)  # (B, heads, N, M)
        b, n, c = x.shape
        y = x
        if attn.sr_ratio > 1:
            r = attn.sr_ratio
            m = F.pad(x.transpose(1, 2).reshape(b, c, h, w), (0, max(0, r - w), 0, max(0, r - h)))
            y = attn.norm(attn.sr(m).flatten(2).transpose(1, 2))
        v = attn.kv(y)[..., c:].reshape(b, -1, attn.num_heads, c // attn.num_heads).transpose(1, 2)
        rebuilt = attn.proj((probs @ v).transpose(1, 2).reshape(b, n, c))
        torch.testing.assert_close(rebuilt, output, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(probs.sum(-1), torch.ones(b, attn.num_heads, n))
        checked.append((attn.num_heads, attn.sr_ratio, probs.shape[-1], h * w))

    handles = [
        m.register_forward_hook(check) for m in model.modules() if isinstance(m, EfficientSelfAttention)
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 48))
        # (heads, sr, keys, queries) of every block: stage maps 16x12, 8x6, 4x3, 2x2, keys shrunk by sr^2
        assert checked == [(1, 4, 12, 192), (2, 2, 12, 48), (2, 2, 12, 48), (3, 2, 2, 12), (4, 1, 4, 4)]
        checked.clear()
        model(torch.randn(1, 3, 12, 9))  # stage 1 is 3x3, smaller than one sr=4 window: padded to 1 key
    for handle in handles:
        handle.remove()
    assert checked == [(1, 4, 1, 9), (2, 2, 1, 4), (2, 2, 1, 4), (3, 2, 1, 1), (4, 1, 1, 1)]


def test_without_reduction_uses_one_key_per_token_and_equals_reduction_when_sr_is_one():
    model = SegFormer(tiny_config()).eval()
    x = torch.randn(1, 3, 64, 64)
    blocks = collect_attention(model, x[0], [(0.5, 0.5), (0.1, 0.9)])
    assert [(b.stage, b.block) for b in blocks] == [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)]
    for b in blocks:
        h, w = b.grid
        assert b.maps.shape == (2, h // b.sr_ratio, w // b.sr_ratio)
        torch.testing.assert_close(b.maps.sum((-1, -2)), torch.ones(2))
        if b.sr_ratio > 1:
            assert b.full is not None and b.full.shape == (2, h, w)
            torch.testing.assert_close(b.full.sum((-1, -2)), torch.ones(2))
        else:
            assert b.full is None
    last = model.encoder.stages[3].blocks[0].attn  # sr 1: "without reduction" is the same map
    tokens = torch.randn(1, 4, 32)
    torch.testing.assert_close(
        attention_probs(last, tokens, 2, 2), attention_probs(last, tokens, 2, 2, False)
    )


def test_query_points_select_the_token_under_them():
    model = SegFormer(tiny_config()).eval()
    image = torch.randn(3, 64, 64)
    attn = model.encoder.stages[0].blocks[0].attn
    captured = {}
    handle = attn.register_forward_pre_hook(lambda m, args: captured.update(args=args))
    # stage 1 of a 64x64 input is 16x16: x = 0.5 -> column 8, y = 0.9 -> row 14
    blocks = collect_attention(model, image, [(0.5, 0.9), (0.0, 0.0), (0.99, 0.5)])
    handle.remove()
    assert blocks[0].queries == [(14, 8), (0, 0), (8, 15)]
    assert blocks[-1].queries == [(1, 1), (0, 0), (1, 1)]  # the 2x2 map of stage 4
    x, h, w = captured["args"]
    with torch.no_grad():
        probs = attention_probs(attn, x, h, w)[0].mean(0)  # (N, M), mean over heads
    assert probs.shape == (256, 16)
    for q, token in enumerate([14 * 16 + 8, 0, 8 * 16 + 15]):
        torch.testing.assert_close(blocks[0].maps[q].flatten(), probs[token])


@pytest.fixture
def face_image(tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    path = tmp_path / "face.png"
    save_image(path, image)
    return path


def assert_png(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100


def test_writes_one_figure_per_stage_and_the_stage1_comparison(tmp_path, face_image):
    model = create_model("microsegformer", embed_dims=(8, 16, 24, 32), decoder_dim=16)
    model.meta = {"image_size": 64}
    paths = write_attention_maps(model, face_image, tmp_path / "att", points=[(40, 30), (10, 50)])
    names = [p.name for p in paths]
    assert names == ["stage1.png", "stage2.png", "stage3.png", "stage4.png", "stage1_sr_vs_full.png"]
    for p in paths:
        assert_png(p)
    doc = json.loads((tmp_path / "att" / "attention.json").read_text())
    assert doc["working_size"] == 64 and doc["points"] == [[40, 30], [10, 50]]
    stages = doc["stages"]
    assert [s["sr_ratio"] for s in stages] == [8, 4, 2, 1]
    assert [s["queries_grid"] for s in stages] == [[16, 16], [8, 8], [4, 4], [2, 2]]
    assert [s["keys_grid"] for s in stages] == [[2, 2], [2, 2], [2, 2], [2, 2]]
    assert stages[0]["query_tokens"] == [[8, 8], [13, 2]]  # (y/60*16, x/80*16)
    assert stages[0]["block"] == 1 and stages[1]["block"] == 2  # the last block of each stage
    # entropies lie between 0 and log(number of keys); un-reduced stage 1 has 256 keys
    assert all(0 <= e <= np.log(4) + 1e-9 for e in stages[0]["entropy"])
    assert all(0 <= e <= np.log(256) + 1e-9 for e in stages[0]["entropy_without_sr"])
    assert stages[3]["entropy_without_sr"] is None
    # One colour scale for every panel: 0 to the largest weight drawn, as a multiple of uniform.
    tensor = preprocess(load_image(face_image), 64, IMAGENET_MEAN, IMAGENET_STD)
    blocks = collect_attention(model, tensor, [(40 / 80, 30 / 60), (10 / 80, 50 / 60)])
    last = {b.stage: b for b in blocks}
    drawn = [m for b in last.values() for m in b.maps] + list(last[0].full)
    assert doc["colour_scale"] == pytest.approx(
        [0.0, max(float(m.max()) * m.numel() for m in drawn)], rel=1e-5
    )


def test_a_nearly_uniform_map_is_drawn_nearly_flat():
    from matplotlib.colors import Normalize

    from segformer.apps.attention import _heatmap

    image = np.full((32, 32, 3), 128, np.uint8)
    attn = torch.full((4, 4), 1 / 16)
    attn[0, 0] *= 1.02  # 2% above uniform somewhere
    attn /= attn.sum()
    panel = _heatmap(image, attn, Normalize(0.0, 8.0)).astype(int)
    assert np.ptp(panel, axis=(0, 1)).max() <= 2  # flat on the shared scale, not stretched to full contrast
    peaked = torch.zeros(4, 4)
    peaked[0, 0] = 1.0  # 16x uniform: saturates the same scale
    panel = _heatmap(image, peaked, Normalize(0.0, 8.0)).astype(int)
    assert np.ptp(panel, axis=(0, 1)).max() > 60


def test_cli_on_a_model_directory(tmp_path, face_image, capsys):
    model = create_model("microsegformer", embed_dims=(8, 16, 24, 32), decoder_dim=16)
    segformer.save(model, tmp_path / "model", meta={"image_size": 48})
    out = tmp_path / "maps"
    assert (
        main(["attention", str(tmp_path / "model"), str(face_image), "--out", str(out), "--point", "20,20"])
        == 0
    )
    assert len(capsys.readouterr().out.split()) == 5
    assert json.loads((out / "attention.json").read_text())["working_size"] == 48
    assert_png(out / "stage1_sr_vs_full.png")


def test_bad_inputs(tmp_path, face_image, capsys):
    unet = create_model("unet", num_classes=3, unet_width=4)
    with pytest.raises(SegformerError, match="UNet has no MiT self-attention"):
        write_attention_maps(unet, face_image, tmp_path / "u")
    model = create_model("microsegformer", embed_dims=(8, 16, 24, 32), decoder_dim=16)
    with pytest.raises(SegformerError, match=r"query point \(80, 10\) lies outside the 80x60 image"):
        write_attention_maps(model, face_image, tmp_path / "x", points=[(80, 10)])
    segformer.save(model, tmp_path / "model")
    assert (
        main(["attention", str(tmp_path / "model"), str(tmp_path / "none.jpg"), "--out", str(tmp_path)]) == 1
    )
    assert "none.jpg: image not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attention", str(tmp_path / "model"), str(face_image), "--out", str(tmp_path), "--point", "a"])
