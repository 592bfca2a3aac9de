"""The U-Net baseline: parameter count by hand, a naive reference forward, any input size, gradients,
config fields, the parameter-matched width, the info breakdown and save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segformer
from segformer import SegformerError, create_model, list_models
from segformer.apps.experiments import MICROSEGFORMER_PARAMS, matched_unet_width, unet_params
from segformer.models import UNet
from segformer.models.summary import count_flops, summarize


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def params_by_hand(w: int, k: int, c: int = 3) -> int:
    """Two 3x3 convs (no bias) + 2 BatchNorms (weight, bias) per level, 2x2 transposed convs (with bias)
    halving the channels, a 1x1 classifier with bias."""

    def double(i: int, o: int) -> int:
        return 9 * i * o + 9 * o * o + 4 * o

    widths = [w * 2**i for i in range(5)]
    total = double(c, widths[0]) + sum(double(widths[i - 1], widths[i]) for i in range(1, 5))
    total += sum(
        4 * widths[i] * widths[i - 1] + widths[i - 1] + double(2 * widths[i - 1], widths[i - 1])
        for i in range(1, 5)
    )
    return total + widths[0] * k + k


@pytest.mark.parametrize("width, classes", [(64, 19), (64, 2), (15, 19), (4, 5)])
def test_parameter_count_matches_the_hand_count(width, classes):
    with torch.device("meta"):
        model = create_model("unet", num_classes=classes, unet_width=width)
    assert n_params(model) == params_by_hand(width, classes)


def test_standard_unet_is_about_31m_parameters():
    # The seed's baseline: "standard 4-level, base width 64, about 31M parameters".
    assert params_by_hand(64, 19) == 31_038_803
    assert "unet" in list_models()
    config = segformer.models.get_config("unet")
    assert config.arch == "unet" and config.unet_width == 64


def test_parameter_matched_width_is_the_closest_to_microsegformer():
    width = matched_unet_width()
    assert width == 15
    assert unet_params(15) == params_by_hand(15, 19) == 1_707_844
    gaps = {w: abs(params_by_hand(w, 19) - MICROSEGFORMER_PARAMS) for w in range(1, 65)}
    assert min(gaps, key=gaps.get) == width
    assert n_params(create_model("microsegformer")) == MICROSEGFORMER_PARAMS


def naive_unet(model: UNet, x: torch.Tensor) -> torch.Tensor:
    """The U-Net straight from the paper's figure, written with functional ops on the state dict (eval
    mode BatchNorm), for inputs whose sides are multiples of 16."""
    sd = model.state_dict()

    def double(t, prefix):
        for conv, bn in ((0, 1), (3, 4)):
            t = F.conv2d(t, sd[f"{prefix}.{conv}.weight"], padding=1)
            t = F.batch_norm(t, sd[f"{prefix}.{bn}.running_mean"], sd[f"{prefix}.{bn}.running_var"],
                             sd[f"{prefix}.{bn}.weight"], sd[f"{prefix}.{bn}.bias"], eps=1e-5)  # fmt: skip
            t = F.relu(t)
        return t

    skips = [double(x, "encoder.levels.0")]
    for i in range(1, 5):
        skips.append(double(F.max_pool2d(skips[-1], 2), f"encoder.levels.{i}.1"))
    t = skips[-1]
    for j, skip in enumerate(reversed(skips[:-1])):
        p = f"decoder.levels.{j}"
        t = F.conv_transpose2d(t, sd[p + ".up.weight"], sd[p + ".up.bias"], stride=2)
        assert t.shape[1] == skip.shape[1]  # the up-convolution halves the channels
        t = double(torch.cat([skip, t], 1), p + ".conv")
    return F.conv2d(t, sd["classifier.weight"], sd["classifier.bias"])


def test_matches_a_naive_reference_forward():
    model = UNet(segformer.models.get_config("unet", num_classes=5, unet_width=4)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), naive_unet(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (17, 200), (64, 48), (15, 16)])
def test_any_input_size_gives_logits_at_that_size(size):
    model = create_model("unet", num_classes=6, unet_width=4).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 6, *size)
    assert torch.isfinite(y).all()


def test_odd_sizes_are_padded_by_edge_replication_then_cropped():
    model = create_model("unet", num_classes=3, unet_width=4).eval()
    x = torch.randn(1, 3, 37, 21)
    padded = F.pad(x, (0, 11, 0, 11), mode="replicate")  # 48 x 32
    with torch.no_grad():
        torch.testing.assert_close(model(x), naive_unet(model, padded)[..., :37, :21])


def test_every_parameter_receives_a_gradient():
    model = create_model("unet", num_classes=5, unet_width=4).train()
    x = torch.randn(2, 3, 35, 29)
    F.cross_entropy(model(x), torch.randint(0, 5, (2, 35, 29))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("field, value", [("unet_width", 6), ("num_classes", 7), ("in_channels", 1)])
def test_each_unet_field_changes_the_built_model(field, value):
    base = segformer.models.get_config("unet", num_classes=5, unet_width=4)
    a, b = UNet(base), UNet(base.replace(**{field: value}))
    shapes = lambda m: [tuple(t.shape) for t in m.state_dict().values()]  # noqa: E731
    assert shapes(a) != shapes(b)
    y = b.eval()(torch.randn(1, b.config.in_channels, 20, 20))
    assert y.shape == (1, b.config.num_classes, 20, 20)
    if field == "unet_width":
        assert b.encoder.levels[0][0].out_channels == 6 and b.encoder.levels[4][1][0].out_channels == 6 * 16


def test_info_breaks_the_unet_down_by_level():
    model = create_model("unet", num_classes=19, unet_width=4)
    rows = summarize(model, 64)
    by = {r.component: r for r in rows}
    assert [r.component for r in rows if r.section == "encoder"] == [
        f"encoder level {i}" for i in range(1, 6)
    ]
    assert [r.component for r in rows if r.section == "decoder"] == [
        f"decoder up-step {i}" for i in range(1, 5)
    ]
    assert by["total"].params == n_params(model)
    assert by["encoder"].params + by["decoder"].params + by["classifier"].params == n_params(model)
    # 1x1 classifier 4 -> 19 channels over 64 x 64 pixels, 2 FLOPs per multiply-add
    assert by["classifier"].flops == 2 * 64 * 64 * 4 * 19 == count_flops(model, 64)["classifier"]
    assert by["encoder"].flops + by["decoder"].flops + by["classifier"].flops == by["total"].flops


def test_save_and_load_round_trip(tmp_path):
    model = create_model("unet", num_classes=5, unet_width=4).eval()
    segformer.save(model, tmp_path / "unet")
    loaded = segformer.load(tmp_path / "unet")
    assert isinstance(loaded, UNet) and loaded.config == model.config
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(SegformerError):
        segformer.save(model, tmp_path / "hf", format="hf")  # no transformers equivalent
