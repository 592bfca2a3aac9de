"""Model construction, shapes, gradients, determinism, config coverage and a naive reference forward."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import segformer
from segformer import ModelConfig, SegformerError, create_model, list_models
from segformer.models import SegFormer, get_config
from segformer.models.mit import DropPath

from conftest import randomize_norms, tiny_config

# The published SegFormer configurations (equal to HF transformers' SegformerForSemanticSegmentation).
EXPECTED_PARAMS = {
    150: {
        "segformer-b0": 3_752_694,
        "segformer-b1": 13_715_798,
        "segformer-b2": 27_461_974,
        "segformer-b3": 47_337_814,
        "segformer-b4": 64_108_374,
        "segformer-b5": 84_708_694,
    },
    19: {
        "segformer-b0": 3_719_027,
        "segformer-b1": 13_682_131,
        "segformer-b2": 27_361_235,
        "segformer-b3": 47_237_075,
        "segformer-b4": 64_007_635,
        "segformer-b5": 84_607_955,
        "microsegformer": 1_721_939,
    },
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("num_classes", [19, 150])
@pytest.mark.parametrize("name", [f"segformer-b{i}" for i in range(6)])
def test_segformer_parameter_totals(name, num_classes):
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    assert n_params(model) == EXPECTED_PARAMS[num_classes][name]


def test_microsegformer_has_exactly_1721939_parameters_and_fits_the_course_budget():
    model = create_model("microsegformer")
    assert model.config.num_classes == 19
    assert n_params(model) == 1_721_939 < 1_821_085


def test_registry_lists_every_variant():
    names = list_models()
    assert names == sorted(names)
    assert {"microsegformer", *(f"segformer-b{i}" for i in range(6))} <= set(names)


@pytest.mark.parametrize("name", list_models())
def test_every_variant_builds_and_keeps_odd_input_sizes(name):
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 7, 37, 53)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("decoder", ["mlp", "micro"])
@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 31), (9, 200), (1, 1)])
def test_forward_returns_logits_at_input_size(decoder, size):
    model = SegFormer(tiny_config(decoder)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        y = model(x)
        low = model.forward_logits(x)
    assert y.shape == (2, 5, *size)
    assert torch.isfinite(y).all()
    # stride-4 logits: the first stage's map size, floor((n + 2*3 - 7) / 4) + 1
    assert low.shape[-2:] == tuple((n - 1) // 4 + 1 for n in size)
    expected = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, expected)


def test_feature_pyramid_strides():
    model = SegFormer(tiny_config()).eval()
    feats = model.forward_features(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == [8, 16, 24, 32]
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("decoder", ["mlp", "micro"])
def test_every_parameter_receives_a_gradient(decoder):
    model = SegFormer(tiny_config(decoder, drop_path_rate=0.0)).train()
    x = torch.randn(2, 3, 48, 40)
    target = torch.randint(0, 5, (2, 48, 40))
    F.cross_entropy(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_same_seed_same_initial_weights_different_seed_different():
    def weights(seed):
        torch.manual_seed(seed)
        return create_model("microsegformer").state_dict()

    a, b, c = weights(3), weights(3), weights(4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_initialisation_follows_mit():
    model = create_model("segformer-b0")
    q = model.encoder.stages[0].blocks[0].attn.q
    assert abs(q.weight.std().item() - 0.02) < 0.004
    assert torch.count_nonzero(q.bias) == 0
    conv = model.encoder.stages[0].patch_embed.proj  # He-normal over fan-out 7*7*32
    assert abs(conv.weight.std().item() - math.sqrt(2 / (7 * 7 * 32))) < 0.02


# --- every config field changes the built model ---------------------------------------------------

FIELD_CHANGES = {
    "num_classes": 6,
    "in_channels": 1,
    "embed_dims": (8, 16, 24, 40),
    "depths": (1, 1, 1, 1),
    "num_heads": (1, 1, 3, 4),
    "sr_ratios": (2, 2, 1, 1),
    "mlp_ratios": (2, 2, 2, 4),
    "patch_sizes": (5, 3, 3, 3),
    "strides": (4, 2, 2, 1),
    "mix_ffn": False,
    "qkv_bias": False,
    "drop_rate": 0.2,
    "attn_drop_rate": 0.2,
    "drop_path_rate": 0.3,
    "norm_eps": 1e-3,
    "embed_norm_eps": 1e-3,
    "decoder": "micro",
    "decoder_dim": 12,
    "decoder_dropout": 0.3,
}
# Fields that do not describe the SegFormer architecture, with the reason.
NOT_ARCHITECTURE = {
    "arch": "selects the model family (a different class altogether)",
    "unet_width": "U-Net baseline only",
    "class_names": "metadata carried in model.config",
}


def _describe(model: torch.nn.Module) -> tuple:
    sd = model.state_dict()
    return repr(model), tuple((k, tuple(v.shape)) for k, v in sd.items())


def test_field_change_table_covers_every_config_field():
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert fields == set(FIELD_CHANGES) | set(NOT_ARCHITECTURE)


@pytest.mark.parametrize("field", sorted(FIELD_CHANGES))
def test_each_config_field_changes_the_built_model(field):
    base = tiny_config()
    changed = base.replace(**{field: FIELD_CHANGES[field]})
    assert getattr(changed, field) != getattr(base, field)
    a, b = SegFormer(base), SegFormer(changed)
    assert _describe(a) != _describe(b)
    x = torch.randn(1, changed.in_channels, 40, 40)
    assert b.eval()(x).shape == (1, changed.num_classes, 40, 40)


def test_class_names_are_carried_by_the_model_config():
    names = ("bg", "a", "b", "c", "d")
    model = SegFormer(tiny_config(class_names=names))
    assert model.config.class_names == names


def test_drop_path_follows_the_config_linearly_over_all_blocks():
    model = SegFormer(tiny_config(drop_path_rate=0.4))
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    # ... and is really applied in training: two passes differ, eval passes do not.
    x = torch.randn(4, 3, 32, 32)
    model.train()
    for m in model.modules():  # isolate stochastic depth from BatchNorm batch statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    still = SegFormer(tiny_config(drop_path_rate=0.0, decoder_dropout=0.0)).train()
    for m in still.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    torch.testing.assert_close(still(x), still(x))


def test_variant_configs_match_the_spec_table():
    b2 = get_config("segformer-b2")
    assert b2.embed_dims == (64, 128, 320, 512) and b2.depths == (3, 4, 6, 3)
    assert b2.mlp_ratios == (4, 4, 4, 4) and b2.decoder_dim == 768
    assert get_config("segformer-b0").depths == (2, 2, 2, 2)
    micro = get_config("microsegformer")
    assert micro.embed_dims == (32, 64, 128, 192) and micro.depths == (1, 2, 2, 2)
    assert micro.num_heads == (1, 1, 1, 1) and micro.mlp_ratios == (2, 2, 2, 2) and not micro.mix_ffn


def test_architecture_search_by_config_alone():
    for depths in [(1, 1, 1, 1), (1, 2, 2, 2), (2, 3, 3, 3)]:
        model = create_model("microsegformer", depths=depths)
        assert [len(s.blocks) for s in model.encoder.stages] == list(depths)
    three_stage = create_model(
        "microsegformer",
        embed_dims=(16, 32, 64),
        depths=(1, 1, 1),
        num_heads=(1, 1, 1),
        sr_ratios=(4, 2, 1),
        mlp_ratios=(2, 2, 2),
        patch_sizes=(7, 3, 3),
        strides=(4, 2, 2),
    )
    assert three_stage.eval()(torch.randn(1, 3, 45, 45)).shape == (1, 19, 45, 45)


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_model_name_lists_the_available_ones():
    with pytest.raises(SegformerError, match=r"unknown model 'segformer-b9'.*microsegformer"):
        create_model("segformer-b9")


def test_unknown_override_is_named():
    with pytest.raises(SegformerError, match="depth_s"):
        create_model("microsegformer", depth_s=(1, 1, 1, 1))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_heads": (1, 2, 5, 7)}, "not divisible"),
        ({"depths": (1, 1, 1)}, "same non-zero length"),
        ({"decoder": "fpn"}, "unknown decoder"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"class_names": ("a",)}, "class names"),
        ({"depths": "1,1,1,1"}, "expected a list"),
    ],
)
def test_invalid_configs_are_rejected(changes, message):
    with pytest.raises(SegformerError, match=message):
        tiny_config(**changes)


def test_float_fields_accept_yaml_exponent_strings():
    # YAML 1.1 reads 3e-3 (no dot) as a string; recipes and --set must still accept it.
    from segformer.config import RunConfig, parse_overrides

    cfg = RunConfig.from_dict({"train": {"lr": "3e-3"}}).override(
        parse_overrides(["train.weight_decay=1e-2"])
    )
    assert cfg.train.lr == 3e-3 and cfg.train.weight_decay == 1e-2
    with pytest.raises(SegformerError, match="expected float"):
        RunConfig.from_dict({"train": {"lr": "fast"}})


def test_config_round_trips_through_a_plain_dict():
    config = get_config("microsegformer", class_names=tuple(f"c{i}" for i in range(19)))
    assert ModelConfig.from_dict(config.to_dict()) == config


# --- a naive reference forward, written straight from the paper -------------------------------------


def naive_forward(model: SegFormer, x: torch.Tensor) -> torch.Tensor:
    """Literal formulation: explicit q/k/v, matmul-softmax attention, token-space FFN, and for the
    micro decoder the classifier applied after the upsampling to full resolution."""
    cfg, sd = model.config, model.state_dict()
    full = x.shape[-2:]

    def ln(t, prefix, eps):
        return F.layer_norm(t, t.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)

    def lin(t, prefix):
        return t @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]

    feats = []
    for i in range(cfg.num_stages):
        pre = f"encoder.stages.{i}"
        k = cfg.patch_sizes[i]
        x = F.conv2d(x, sd[pre + ".patch_embed.proj.weight"], sd[pre + ".patch_embed.proj.bias"],
                     stride=cfg.strides[i], padding=k // 2)  # fmt: skip
        b, c, h, w = x.shape
        t = ln(x.flatten(2).transpose(1, 2), pre + ".patch_embed.norm", cfg.embed_norm_eps)
        for j in range(cfg.depths[i]):
            bp = f"{pre}.blocks.{j}"
            y = ln(t, bp + ".norm1", cfg.norm_eps)
            heads, d = cfg.num_heads[i], c // cfg.num_heads[i]
            q = lin(y, bp + ".attn.q")
            r = cfg.sr_ratios[i]
            if r > 1:
                m = y.transpose(1, 2).reshape(b, c, h, w)
                m = F.conv2d(m, sd[bp + ".attn.sr.weight"], sd[bp + ".attn.sr.bias"], stride=r)
                y = ln(m.flatten(2).transpose(1, 2), bp + ".attn.norm", cfg.embed_norm_eps)
            kv = lin(y, bp + ".attn.kv")
            kk, vv = kv[..., :c], kv[..., c:]
            qh, kh, vh = (z.reshape(b, -1, heads, d).transpose(1, 2) for z in (q, kk, vv))
            att = torch.softmax(qh @ kh.transpose(-1, -2) * d**-0.5, dim=-1)
            o = (att @ vh).transpose(1, 2).reshape(b, -1, c)
            t = t + lin(o, bp + ".attn.proj")
            y = lin(ln(t, bp + ".norm2", cfg.norm_eps), bp + ".mlp.fc1")
            if cfg.mix_ffn:
                e = y.shape[-1]
                y = F.conv2d(y.transpose(1, 2).reshape(b, e, h, w), sd[bp + ".mlp.dwconv.weight"],
                             sd[bp + ".mlp.dwconv.bias"], padding=1, groups=e)  # fmt: skip
                y = y.flatten(2).transpose(1, 2)
            t = t + lin(F.gelu(y), bp + ".mlp.fc2")
        t = ln(t, pre + ".norm", cfg.norm_eps)
        x = t.transpose(1, 2).reshape(b, c, h, w)
        feats.append(x)

    size = feats[0].shape[-2:]
    proj = []
    for i, f in enumerate(feats):
        t = lin(f.flatten(2).transpose(1, 2), f"decoder.linear_c.{i}")
        m = t.transpose(1, 2).reshape(f.shape[0], -1, *f.shape[-2:])
        proj.append(F.interpolate(m, size=size, mode="bilinear", align_corners=False))
    if cfg.decoder == "mlp":
        z = F.conv2d(torch.cat(proj[::-1], 1), sd["decoder.linear_fuse.weight"])
        z = F.batch_norm(z, sd["decoder.norm.running_mean"], sd["decoder.norm.running_var"],
                         sd["decoder.norm.weight"], sd["decoder.norm.bias"], eps=1e-5)  # fmt: skip
        z = F.conv2d(F.relu(z), sd["decoder.classifier.weight"], sd["decoder.classifier.bias"])
        return F.interpolate(z, size=full, mode="bilinear", align_corners=False)
    z = torch.cat(proj, 1)
    t = z.flatten(2).transpose(1, 2)
    t = lin(F.gelu(lin(t, "decoder.linear_fuse.fc1")), "decoder.linear_fuse.fc2")
    z = t.transpose(1, 2).reshape(z.shape[0], -1, *size)
    z = F.interpolate(z, size=full, mode="bilinear", align_corners=False)  # upsample, then classify
    return F.conv2d(z, sd["decoder.classifier.weight"], sd["decoder.classifier.bias"])


@pytest.mark.parametrize("decoder", ["mlp", "micro"])
@pytest.mark.parametrize("size", [(64, 64), (97, 131)])
def test_matches_a_naive_reference_implementation(decoder, size):
    model = randomize_norms(SegFormer(tiny_config(decoder)).eval())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = naive_forward(model, x)
        actual = model(x)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_public_api():
    assert segformer.create_model is create_model
    assert isinstance(segformer.__version__, str)
