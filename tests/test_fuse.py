"""Exact rewrites: the fused inference model and the sum-of-projections decoder equal the literal
concatenating formulation, for every variant and with non-trivial norm statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segformer import Predictor, SegformerError, create_model, list_models
from segformer.inference.ops import predict_batch
from segformer.inference.settings import InferenceSettings
from segformer.models import SegFormer, get_config
from segformer.models.decoder import MicroDecoder, MLPDecoder
from segformer.models.fuse import FusedSegFormer, fuse, maybe_fuse
from segformer.models.summary import count_flops

from conftest import randomize_norms, tiny_config

SEGFORMERS = [n for n in list_models() if get_config(n).arch == "segformer"]


def concat_decoder(decoder: MLPDecoder | MicroDecoder, features: list[torch.Tensor]) -> torch.Tensor:
    """The decoder as the paper writes it: project, resize to stride 4, concatenate, fuse."""
    size = features[0].shape[-2:]
    maps = [
        F.interpolate(lin(f), size=size, mode="bilinear", align_corners=False)
        for lin, f in zip(decoder.linear_c, features, strict=True)
    ]
    if isinstance(decoder, MLPDecoder):
        x = decoder.linear_fuse(torch.cat(maps[::-1], 1))  # [c4, c3, c2, c1]
        return decoder.classifier(decoder.dropout(decoder.act(decoder.norm(x))))
    x = decoder.linear_fuse(torch.cat(maps, 1))  # [f1, f2, f3, f4]: fc1 -> GELU -> fc2
    return decoder.classifier(decoder.dropout(x))


def check_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert (actual - expected).abs().max() <= 1e-4
    assert torch.equal(actual.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("name", SEGFORMERS)
def test_fused_equals_unfused_for_every_registered_variant(name):
    model = randomize_norms(create_model(name, num_classes=7)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        check_close(fuse(model)(x), model(x))


@pytest.mark.parametrize("decoder", ["mlp", "micro"])
@pytest.mark.parametrize("size", [(64, 64), (97, 131), (33, 31)])
def test_fused_equals_the_literal_concatenating_decoder(decoder, size):
    model = randomize_norms(SegFormer(tiny_config(decoder))).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
        literal = F.interpolate(
            concat_decoder(model.decoder, feats), size=size, mode="bilinear", align_corners=False
        )
        fused = fuse(model)
        check_close(fused(x), literal)
        check_close(model(x), literal)
        check_close(fused.forward_logits(x), concat_decoder(model.decoder, feats))


@pytest.mark.parametrize("decoder", ["mlp", "micro"])
def test_sum_of_projections_matches_concat_in_training_with_gradients(decoder):
    """The default decoder forward is exact in training too: BatchNorm (batch statistics) and GELU
    come after the sum, and the folded products are differentiable in the original parameters."""
    torch.manual_seed(0)
    model = randomize_norms(SegFormer(tiny_config(decoder, decoder_dropout=0.0))).train()
    feats = [f.detach() for f in model.forward_features(torch.randn(2, 3, 64, 96))]
    ours = model.decoder(feats)
    grads_ours = torch.autograd.grad((ours * torch.linspace(-1, 1, ours.numel()).view_as(ours)).sum(),
                                     list(model.decoder.parameters()))  # fmt: skip
    ref = concat_decoder(model.decoder, feats)
    grads_ref = torch.autograd.grad((ref * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum(),
                                    list(model.decoder.parameters()))  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    # Float rounding relative to the gradients' scale (with batch statistics the projection biases
    # get exactly zero gradient in theory, so their computed values are pure rounding noise).
    scale = max(float(g.abs().max()) for g in grads_ref)
    for (name, _), a, b in zip(model.decoder.named_parameters(), grads_ours, grads_ref, strict=True):
        assert (a - b).abs().max() <= 1e-5 * scale, name


def test_micro_decoder_with_dropout_keeps_fc2_and_classifier_apart_in_training():
    model = SegFormer(tiny_config("micro", decoder_dropout=0.5)).train()
    feats = [f.detach() for f in model.forward_features(torch.randn(2, 3, 64, 64))]
    a, b = model.decoder(feats), model.decoder(feats)
    assert not torch.allclose(a, b)  # dropout acts between fc2 and the classifier
    model.eval()
    with torch.no_grad():
        check_close(model.decoder(feats), concat_decoder(model.decoder, feats))


def test_fused_decoder_costs_fewer_flops():
    for name in ("microsegformer", "segformer-b0"):
        model = create_model(name).eval()
        fused = fuse(model)
        assert count_flops(fused, 128)[""] < count_flops(model, 128)[""]
        assert count_flops(fused, 128)["decoder"] < 0.6 * count_flops(model, 128)["decoder"]


def test_fuse_refuses_training_mode_and_non_segformers():
    model = SegFormer(tiny_config())
    with pytest.raises(SegformerError, match="eval mode"):
        fuse(model.train())
    fused = fuse(model.eval())
    with pytest.raises(SegformerError, match="inference only"):
        fused.train()
    unet = create_model("unet", num_classes=3, unet_width=4).eval()
    with pytest.raises(SegformerError, match="SegFormer"):
        fuse(unet)
    assert maybe_fuse(unet) is unet
    assert maybe_fuse(model.train()) is model
    assert isinstance(maybe_fuse(model.eval()), FusedSegFormer)


def test_fuse_shares_the_encoder_and_leaves_the_model_alone():
    model = SegFormer(tiny_config()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    assert fused.encoder is model.encoder
    assert fused.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(p.requires_grad for p in fused.decoder.parameters())


def test_predictor_runs_the_fused_model_with_the_same_masks():
    model = randomize_norms(SegFormer(tiny_config())).eval()
    predictor = Predictor(model, image_size=64, faces=False, backend="torch")  # PyTorch runs the fused graph
    assert isinstance(predictor.net, FusedSegFormer)
    assert predictor.model is model
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    ids, probs = predictor(image, return_probs=True)
    with torch.inference_mode():
        expected = predict_batch(model, [image], InferenceSettings(image_size=64))[0]
    assert np.abs(probs - expected.numpy()).max() < 1e-5
    assert np.array_equal(ids, expected.argmax(0).numpy())
