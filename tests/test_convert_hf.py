"""HF transformers interop: random-weight SegformerForSemanticSegmentation in, identical logits, and back.

The reference is transformers itself (a test-only extra): models are built from configs with random
weights, never downloaded.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import segformer  # noqa: E402
from segformer import SegformerError  # noqa: E402
from segformer.cli import main  # noqa: E402
from segformer.convert import hf_to_native, native_to_hf  # noqa: E402

from conftest import tiny_config  # noqa: E402

SIZE = (97, 131)  # odd on purpose: every stage rounds differently
TOL = 1e-4

HF_TINY = dict(
    hidden_sizes=[8, 16, 24, 32],
    depths=[1, 2, 1, 1],
    num_attention_heads=[1, 2, 3, 4],
    sr_ratios=[4, 2, 2, 1],
    mlp_ratios=[2, 2, 2, 2],
    decoder_hidden_size=16,
)
HF_B0 = dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256)
HF_B2 = dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768)
NAMES = ("background", "sky", "road", "tree", "person")


def randomize_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Perturb what initialisation leaves trivial (norm weights, biases, BN running stats); the conv and
    linear weights are random already. Eval mode."""
    with torch.no_grad():
        for key, value in module.state_dict().items():
            if value.is_floating_point() and value.ndim <= 1:
                value.add_(torch.randn_like(value) * scale)
                if key.endswith("running_var"):
                    value.abs_().add_(0.5)
    return module.eval()


def scale_logits_(classifier: torch.nn.Module, logits, target: float = 10.0) -> None:
    """Scale the classifier so the largest logit is about `target`: random weights give logits near 0,
    where an absolute tolerance of 1e-4 would prove little."""
    with torch.no_grad():
        peak = logits(torch.randn(1, 3, 64, 64)).abs().max()
        classifier.weight.mul_(target / peak)
        classifier.bias.mul_(target / peak)


def hf_model(cls=None, labels=NAMES, **fields):
    cls = cls or transformers.SegformerForSemanticSegmentation
    config = transformers.SegformerConfig(
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}, **fields
    )
    model = randomize_(cls(config))
    if hasattr(model, "decode_head"):
        scale_logits_(model.decode_head.classifier, lambda x: model(pixel_values=x).logits)
    return model


def our_model(config, **fields):
    model = randomize_(segformer.create_model(config, **fields))
    scale_logits_(model.decoder.classifier, model)
    return model


def hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    """HF logits (stride 4) upsampled to the input, as our forward returns them."""
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def assert_same_logits(ours: torch.nn.Module, hf, x: torch.Tensor) -> None:
    with torch.no_grad():
        got = ours(x)
    want = hf_logits(hf, x)
    assert got.shape == want.shape
    diff = (got - want).abs().max().item()
    print(f"max |logit| {want.abs().max().item():.2f}, max abs difference {diff:.2g}")
    assert diff <= TOL, f"max abs logit difference {diff:.3g}"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(HF_TINY, id="tiny"),
        pytest.param(HF_B0, id="b0"),
        # 5-13 s on 2 shared CPU cores (building 27M parameters twice, first-call kernel setup)
        pytest.param(HF_B2, id="b2", marks=pytest.mark.slow),
    ],
)
def test_hf_directory_loads_with_identical_logits(tmp_path, fields):
    start = time.perf_counter()
    hf = hf_model(**fields)
    hf.save_pretrained(tmp_path / "hf")
    model = segformer.load(tmp_path / "hf")
    assert not model.training
    assert model.config.embed_dims == tuple(fields["hidden_sizes"])
    assert model.config.depths == tuple(fields["depths"])
    assert model.config.num_heads == tuple(hf.config.num_attention_heads)
    assert model.config.decoder_dim == fields["decoder_hidden_size"]
    assert model.config.class_names == NAMES
    # transformers builds every LayerNorm with the default eps, whatever layer_norm_eps says.
    assert hf.config.layer_norm_eps == 1e-6
    assert model.config.norm_eps == model.config.embed_norm_eps == 1e-5
    assert model.meta["source_format"] == "hf"
    assert_same_logits(model, hf, torch.randn(2, 3, *SIZE))
    print(f"HF {fields['hidden_sizes']} {fields['depths']}: {time.perf_counter() - start:.1f} s")


def test_save_pretrained_writes_the_legacy_layout_and_5x_names_load_too(tmp_path):
    """5.x renames the modules in memory but saves legacy keys; a directory with either must load."""
    hf = hf_model(**HF_TINY)
    hf.save_pretrained(tmp_path / "hf")
    on_disk = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert "segformer.encoder.block.0.0.attention.self.key.weight" in on_disk
    in_memory = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if "segformer.stages.0.blocks.0.attention.k_proj.weight" not in in_memory:
        pytest.skip("this transformers version has no renamed 5.x module names")
    save_file(in_memory, str(tmp_path / "hf" / "model.safetensors"))
    x = torch.randn(1, 3, *SIZE)
    assert_same_logits(segformer.load(tmp_path / "hf"), hf, x)


def test_pytorch_model_bin_and_sharded_checkpoints_load(tmp_path):
    hf = hf_model(**HF_TINY)
    hf.save_pretrained(tmp_path / "hf")
    legacy = load_file(str(tmp_path / "hf" / "model.safetensors"))
    # What transformers 4.x wrote with safe_serialization=False (5.x only writes safetensors).
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(legacy, tmp_path / "hf" / "pytorch_model.bin")
    x = torch.randn(1, 3, *SIZE)
    assert_same_logits(segformer.load(tmp_path / "hf"), hf, x)

    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert_same_logits(segformer.load(tmp_path / "sharded"), hf, x)


def test_our_model_saved_as_hf_loads_in_transformers(tmp_path):
    model = our_model("segformer-b0", num_classes=5, norm_eps=1e-5, embed_norm_eps=1e-5, class_names=NAMES)
    segformer.save(model, tmp_path / "hf", format="hf")
    hf, info = transformers.SegformerForSemanticSegmentation.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.id2label == dict(enumerate(NAMES))
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in model.parameters())
    assert_same_logits(model, hf.eval(), torch.randn(1, 3, *SIZE))
    # ... and back: the same model, config and class names.
    again = segformer.load(tmp_path / "hf")
    assert again.config.replace(drop_path_rate=model.config.drop_path_rate) == model.config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)


def test_models_without_qkv_bias_are_saved_with_zero_biases(tmp_path):
    model = our_model(tiny_config(qkv_bias=False, norm_eps=1e-5, embed_norm_eps=1e-5))
    segformer.save(model, tmp_path / "hf", format="hf")
    hf = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path / "hf").eval()
    assert hf.segformer.stages[0].blocks[0].attention.q_proj.bias.abs().max() == 0
    assert_same_logits(model, hf, torch.randn(1, 3, *SIZE))


def test_eps_that_transformers_cannot_express_is_warned_about(tmp_path):
    model = segformer.create_model(tiny_config())  # norm_eps 1e-6, as the original code
    with pytest.warns(UserWarning, match=r"eps 1e-5 everywhere.*norm_eps=1e-06"):
        segformer.save(model, tmp_path / "hf", format="hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["layer_norm_eps"] == 1e-6


@pytest.mark.parametrize(
    ("config", "what"),
    [
        (tiny_config("micro"), "decoder 'micro'"),
        (tiny_config(mix_ffn=False), "mix_ffn=False"),
        (tiny_config(mlp_ratios=(1.5, 2, 2, 2)), r"mlp_ratios \(1\.5, 2\.0, 2\.0, 2\.0\) are not integers"),
    ],
)
def test_models_with_no_hf_equivalent_are_refused(tmp_path, config, what):
    with pytest.raises(SegformerError, match=f"cannot save as HF transformers: {what}"):
        segformer.save(segformer.create_model(config), tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()


def test_encoder_only_image_classification_checkpoint(tmp_path):
    """nvidia/mit-bX: SegformerForImageClassification (encoder + ImageNet head) -> encoder + fresh decoder."""
    hf = hf_model(transformers.SegformerForImageClassification, labels=("cat", "dog"), **HF_TINY)
    hf.save_pretrained(tmp_path / "mit")
    assert "classifier.weight" in load_file(str(tmp_path / "mit" / "model.safetensors"))
    with pytest.raises(SegformerError, match=r"encoder-only checkpoint.*pass num_classes"):
        segformer.load(tmp_path / "mit")
    model = segformer.load(tmp_path / "mit", num_classes=3)
    assert model.config.num_classes == 3 and model.config.class_names == ()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        ours = model.forward_features(x)
        theirs = hf(pixel_values=x, output_hidden_states=True).hidden_states
        assert model(x).shape == (1, 3, *SIZE)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max().item() <= TOL


def test_a_different_num_classes_reinitialises_only_the_classifier(tmp_path):
    hf = hf_model(**HF_TINY)
    hf.save_pretrained(tmp_path / "hf")
    model = segformer.load(tmp_path / "hf", num_classes=2)
    same = segformer.load(tmp_path / "hf")
    assert model.config.num_classes == 2 and model.config.class_names == ()
    assert model.decoder.classifier.weight.shape[0] == 2
    for key, value in same.state_dict().items():
        if not key.startswith("decoder.classifier."):
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_hf_converters_are_idempotent_and_invertible(tmp_path):
    hf = hf_model(**HF_TINY)
    hf.save_pretrained(tmp_path / "hf")
    legacy = load_file(str(tmp_path / "hf" / "model.safetensors"))
    native = hf_to_native(legacy)
    assert hf_to_native(native) == native  # already converted: a no-op
    assert hf_to_native(hf.state_dict()).keys() == native.keys()  # 5.x names give the same keys
    back = native_to_hf(native)
    assert native_to_hf(back) == back
    assert back.keys() == legacy.keys()
    for key, value in legacy.items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)
    # The k/v split: our kv rows are [keys; values].
    kv = native["encoder.stages.1.blocks.0.attn.kv.weight"]
    torch.testing.assert_close(kv[:16], legacy["segformer.encoder.block.1.0.attention.self.key.weight"])
    torch.testing.assert_close(kv[16:], legacy["segformer.encoder.block.1.0.attention.self.value.weight"])


def test_unmapped_and_missing_hf_keys_are_named(tmp_path):
    hf = hf_model(**HF_TINY)
    hf.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    legacy = load_file(str(weights))

    extra = {**legacy, "segformer.encoder.block.0.0.attention.self.rotary.weight": torch.zeros(1)}
    with pytest.raises(
        SegformerError, match=r"unmapped key 'segformer\.encoder\.block\.0\.0\.attention\.self\.rotary"
    ):
        hf_to_native(extra)

    half = dict(legacy)
    del half["segformer.encoder.block.1.0.attention.self.value.bias"]
    with pytest.raises(
        SegformerError, match=r"missing key 'segformer\.encoder\.block\.1\.0\.attention\.self\.value\.bias'"
    ):
        hf_to_native(half)

    gone = dict(legacy)
    del gone["segformer.encoder.block.2.0.layer_norm_1.weight"]
    save_file(gone, str(weights))
    with pytest.raises(
        SegformerError, match=r"missing key 'segformer\.encoder\.block\.2\.0\.layer_norm_1\.weight'"
    ):
        segformer.load(tmp_path / "hf")

    with pytest.raises(SegformerError, match="no counterpart in the HF"):
        native_to_hf(segformer.create_model(tiny_config("micro")).state_dict())


def test_bad_hf_directories_are_reported_by_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SegformerError, match=r"config\.json: model_type is 'bert'"):
        segformer.load(tmp_path)
    transformers.SegformerConfig(**HF_TINY).save_pretrained(tmp_path)
    with pytest.raises(SegformerError, match="no PyTorch weights"):
        segformer.load(tmp_path)
    with pytest.raises(SegformerError, match="no such file or directory"):
        segformer.load(tmp_path / "nope")


def test_convert_cli_round_trips_through_native_and_hf(tmp_path, capsys):
    hf = hf_model(**HF_TINY)
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "native")]) == 0
    assert "wrote" in capsys.readouterr().out
    native = segformer.load(tmp_path / "native")
    assert native.config.class_names == NAMES
    x = torch.randn(1, 3, *SIZE)
    assert_same_logits(native, hf, x)

    assert main(["convert", str(tmp_path / "native"), "--out", str(tmp_path / "hf2"), "--to", "hf"]) == 0
    hf2 = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path / "hf2").eval()
    torch.testing.assert_close(hf_logits(hf2, x), hf_logits(hf, x), rtol=0, atol=TOL)

    segformer.save(segformer.create_model(tiny_config("micro")), tmp_path / "micro")
    assert main(["convert", str(tmp_path / "micro"), "--out", str(tmp_path / "bad"), "--to", "hf"]) == 1
    err = capsys.readouterr().err
    assert "error: cannot save as HF transformers" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
