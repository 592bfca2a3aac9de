"""NVlabs/mmseg ``.pth`` interop: fake official checkpoints built by the documented key layout round-trip.

The fake checkpoints are written out by hand below from the module names of NVlabs/SegFormer's
``mix_transformer.py`` and ``segformer_head.py`` (not with the converter under test), then loaded.
"""

from __future__ import annotations

import pytest
import torch

import segformer
from segformer import SegformerError
from segformer.cli import main
from segformer.convert import infer_config, native_to_original, original_to_native
from segformer.models import get_config

from conftest import tiny_config

NAMES = ("background", "sky", "road", "tree", "person")
SIZE = (97, 131)
BLOCK_PARTS = [  # ours -> NVlabs, inside block{S}.{j}
    ("norm1", "norm1"),
    ("attn.q", "attn.q"),
    ("attn.kv", "attn.kv"),
    ("attn.proj", "attn.proj"),
    ("attn.sr", "attn.sr"),
    ("attn.norm", "attn.norm"),
    ("norm2", "norm2"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.dwconv", "mlp.dwconv.dwconv"),
    ("mlp.fc2", "mlp.fc2"),
]


def randomize_(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb norms, biases and BN statistics, which initialisation leaves trivial."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point() and value.ndim <= 1:
                value.add_(torch.randn_like(value) * 0.1)
                if key.endswith("running_var"):
                    value.abs_().add_(0.5)
    return model.eval()


def nvlabs_layout(model: torch.nn.Module, encoder_only: bool = False) -> dict[str, torch.Tensor]:
    """Our weights under the official names, spelled out stage by stage and block by block."""
    sd = model.state_dict()
    pre = "" if encoder_only else "backbone."
    out = {}
    for i, stage in enumerate(model.encoder.stages):
        s = i + 1
        for p in ("weight", "bias"):
            out[f"{pre}patch_embed{s}.proj.{p}"] = sd[f"encoder.stages.{i}.patch_embed.proj.{p}"]
            out[f"{pre}patch_embed{s}.norm.{p}"] = sd[f"encoder.stages.{i}.patch_embed.norm.{p}"]
            for j in range(len(stage.blocks)):
                for ours, theirs in BLOCK_PARTS:
                    key = f"encoder.stages.{i}.blocks.{j}.{ours}.{p}"
                    if key in sd:  # stages with sr ratio 1 have no attn.sr / attn.norm
                        out[f"{pre}block{s}.{j}.{theirs}.{p}"] = sd[key]
            out[f"{pre}norm{s}.{p}"] = sd[f"encoder.stages.{i}.norm.{p}"]
            if not encoder_only:
                out[f"decode_head.linear_c{s}.proj.{p}"] = sd[f"decoder.linear_c.{i}.{p}"]
    if not encoder_only:
        out["decode_head.linear_fuse.conv.weight"] = sd["decoder.linear_fuse.weight"]
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"decode_head.linear_fuse.bn.{p}"] = sd[f"decoder.norm.{p}"]
        out["decode_head.linear_pred.weight"] = sd["decoder.classifier.weight"]
        out["decode_head.linear_pred.bias"] = sd["decoder.classifier.bias"]
    return out


def mmseg_checkpoint(model: torch.nn.Module) -> dict:
    """What mmcv's save_checkpoint writes: meta + state_dict, with mmseg's unused ``conv_seg`` head."""
    state = nvlabs_layout(model)
    k = model.config.num_classes
    state["decode_head.conv_seg.weight"] = torch.randn(k, 128, 1, 1)
    state["decode_head.conv_seg.bias"] = torch.randn(k)
    meta = {
        "mmcv_version": "1.2.7",
        "CLASSES": NAMES,
        "PALETTE": [[i, i, i] for i in range(k)],
        "iter": 160000,
    }
    return {"meta": meta, "state_dict": state}


def assert_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_converter_writes_the_documented_layout():
    model = segformer.create_model(tiny_config())
    theirs = native_to_original(model.state_dict())
    want = nvlabs_layout(model)
    assert theirs.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(theirs[key], value, rtol=0, atol=0)
    encoder = native_to_original(model.state_dict(), encoder_only=True)
    assert encoder.keys() == nvlabs_layout(model, encoder_only=True).keys()


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        pytest.param(get_config("segformer-b0", num_classes=5), {}, id="b0"),
        pytest.param(tiny_config(), {"num_heads": (1, 2, 3, 4)}, id="tiny"),
    ],
)
def test_nvlabs_segmentation_checkpoint_round_trip(tmp_path, config, extra):
    model = randomize_(segformer.create_model(config))
    torch.save(mmseg_checkpoint(model), tmp_path / "segformer.pth")
    loaded = segformer.load(tmp_path / "segformer.pth", **extra)
    # Every field is read from the shapes (heads from the registry / the override); classes from meta.
    assert loaded.config == model.config.replace(class_names=NAMES)
    assert loaded.meta["source_format"] == "original"
    assert_identical(loaded, model)


def test_imagenet_encoder_checkpoint_initialises_the_encoder(tmp_path):
    model = randomize_(segformer.create_model("segformer-b0", num_classes=5))
    state = nvlabs_layout(model, encoder_only=True)
    state["head.weight"], state["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    torch.save(state, tmp_path / "mit_b0.pth")
    with pytest.raises(SegformerError, match=r"mit_b0\.pth: encoder-only checkpoint.*pass num_classes"):
        segformer.load(tmp_path / "mit_b0.pth")
    loaded = segformer.load(tmp_path / "mit_b0.pth", num_classes=7)
    assert loaded.config == get_config("segformer-b0", num_classes=7)
    for key, value in model.state_dict().items():
        if key.startswith("encoder."):
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    with torch.no_grad():
        assert loaded(torch.randn(1, 3, *SIZE)).shape == (1, 7, *SIZE)


def test_shapes_determine_the_architecture():
    config = tiny_config(sr_ratios=(2, 2, 1, 1), mlp_ratios=(4, 3, 2, 1), qkv_bias=False, decoder_dim=12)
    state = segformer.create_model(config).state_dict()
    inferred, match = infer_config(state, num_heads=config.num_heads)
    assert match is None and inferred == config
    b2, match = infer_config(segformer.create_model("segformer-b2", num_classes=3).state_dict())
    assert match == "segformer-b2" and b2 == get_config("segformer-b2", num_classes=3)
    with pytest.raises(
        SegformerError, match=r"heads are not stored in the weights.*stage 3: 24 channels / 5 heads"
    ):
        infer_config(state)


def test_original_converters_are_idempotent_and_exhaustive(tmp_path):
    model = randomize_(segformer.create_model(tiny_config()))
    theirs = nvlabs_layout(model)
    ours = original_to_native(theirs)
    assert ours.keys() == model.state_dict().keys()
    assert original_to_native(ours) == ours
    back = native_to_original(ours)
    assert native_to_original(back) == back and back.keys() == theirs.keys()

    with pytest.raises(SegformerError, match=r"unmapped key 'backbone\.block1\.0\.attn\.qkv\.weight'"):
        original_to_native({**theirs, "backbone.block1.0.attn.qkv.weight": torch.zeros(1)})

    ckpt = mmseg_checkpoint(model)
    del ckpt["state_dict"]["backbone.norm2.weight"]
    torch.save(ckpt, tmp_path / "broken.pth")
    with pytest.raises(SegformerError, match=r"broken\.pth: missing key 'backbone\.norm2\.weight'"):
        segformer.load(tmp_path / "broken.pth", num_heads=(1, 2, 3, 4))


def test_pth_with_our_own_key_names_loads(tmp_path):
    """E.g. a CE7454 submission ``ckpt["state_dict"]``, saved from a DDP-wrapped MicroSegFormer."""
    model = randomize_(segformer.create_model("microsegformer"))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")
    loaded = segformer.load(tmp_path / "ckpt.pth")
    assert loaded.config == get_config("microsegformer")
    assert loaded.meta["source_format"] == "native"
    assert_identical(loaded, model)


def test_convert_cli_reads_nvlabs_checkpoints(tmp_path, capsys):
    model = randomize_(segformer.create_model(tiny_config()))
    torch.save(mmseg_checkpoint(model), tmp_path / "segformer.pth")
    assert main(["convert", str(tmp_path / "segformer.pth"), "--out", str(tmp_path / "native")]) == 1
    assert "pass num_heads" in capsys.readouterr().err
    argv = ["convert", str(tmp_path / "segformer.pth"), "--out", str(tmp_path / "native")]
    assert main([*argv, "--set", "num_heads=[1,2,3,4]"]) == 0
    assert_identical(segformer.load(tmp_path / "native"), model)
