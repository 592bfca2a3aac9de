"""`segformer info` and the parameter / FLOP breakdown behind it."""

from __future__ import annotations

import json

import pytest
import torch

from segformer.checkpoint import save_model
from segformer.cli import main
from segformer.models import SegFormer, create_model
from segformer.models.summary import count_flops, summarize

from conftest import run_cli, tiny_config


def run_json(capsys, *argv) -> dict:
    assert main(["info", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_for_microsegformer(capsys):
    out = run_json(capsys, "microsegformer", "--size", "64")
    assert out["params"] == 1_721_939
    assert isinstance(out["params"], int) and isinstance(out["gflops"], float)
    leaves = [c for c in out["components"] if c["component"] not in ("encoder", "decoder", "total")]
    assert sum(c["params"] for c in leaves) == out["params"]
    names = [c["component"] for c in out["components"]]
    assert names[:2] == ["stage 1 patch embedding", "stage 1 blocks"]
    assert {"stage norms", "decoder projections", "decoder fuse", "classifier"} <= set(names)


def test_flops_grow_with_resolution(capsys):
    small = run_json(capsys, "microsegformer", "--size", "64")["gflops"]
    large = run_json(capsys, "microsegformer", "--size", "128")["gflops"]
    # Everything but stage-1/2 attention (which has fixed-size reduced keys per query) scales with
    # the pixel count: between 4x and 16x.
    assert 4 * small <= large <= 16 * small


def test_segformer_b0_matches_the_papers_8_4_gflops_at_512(capsys):
    # The paper's "8.4 GFLOPs" for SegFormer-B0 (ADE20K, 512x512) counts multiply-adds.
    out = run_json(capsys, "segformer-b0", "--num-classes", "150", "--size", "512")
    assert out["params"] == 3_752_694
    assert out["gmacs"] == pytest.approx(8.4, abs=0.05)


def test_patch_embedding_flops_by_hand():
    model = SegFormer(tiny_config())
    flops = count_flops(model, 64)
    # Conv2d(3, 8, 7, stride 4, padding 3) on 64x64 -> 16x16 outputs, 2 FLOPs per multiply-add.
    assert flops["encoder.stages.0.patch_embed"] == 2 * 16 * 16 * 8 * 3 * 7 * 7
    # classifier: 1x1 conv 16 -> 5 at stride 4
    assert flops["decoder.classifier"] == 2 * 16 * 16 * 5 * 16


def test_component_flops_add_up_to_section_and_total():
    rows = summarize(create_model("segformer-b0"), 128)
    by = {r.component: r for r in rows}
    encoder_parts = [r for r in rows if r.section == "encoder"]
    decoder_parts = [r for r in rows if r.section == "decoder"]
    assert sum(r.flops or 0 for r in encoder_parts) == by["encoder"].flops
    assert sum(r.flops or 0 for r in decoder_parts) == by["decoder"].flops
    assert by["encoder"].flops + by["decoder"].flops == by["total"].flops


def test_summary_restores_training_mode():
    model = create_model("microsegformer").train()
    summarize(model, 32)
    assert model.training


def test_info_table_and_overrides(capsys):
    assert main(["info", "microsegformer", "--size", "64", "--set", "depths=[1,1,1,1]"]) == 0
    text = capsys.readouterr().out
    assert "total" in text and "GFLOPs" in text
    fewer = sum(p.numel() for p in create_model("microsegformer", depths=(1, 1, 1, 1)).parameters())
    assert f"{fewer:,}" in text


def test_info_num_classes(capsys):
    out = run_json(capsys, "segformer-b2", "--num-classes", "150", "--size", "64")
    assert out["params"] == 27_461_974


def test_unknown_model_is_a_one_line_error_without_traceback():
    proc = run_cli("info", "nosuchmodel")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown model 'nosuchmodel'" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_models():
    proc = run_cli("info", "--help")
    assert proc.returncode == 0 and "microsegformer" in proc.stdout


def test_count_flops_leaves_no_grad_state():
    model = create_model("microsegformer")
    count_flops(model, 32)
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


def test_info_on_a_model_directory_and_an_onnx_file(tmp_path, capsys):
    model = create_model(tiny_config("micro", num_classes=19))
    save_model(model, tmp_path / "m", meta={"label_set": "celebamask", "image_size": 48, "epoch": 7})
    params = sum(p.numel() for p in model.parameters())
    out = run_json(capsys, str(tmp_path / "m"), "--size", "64")
    assert out["params"] == params and out["config"] == model.config.to_dict()
    assert out["settings"]["image_size"] == 48 and out["settings"]["label_set"] == "celebamask"
    assert out["meta"] == {"epoch": 7}
    assert main(["info", str(tmp_path / "m"), "--size", "64"]) == 0
    text = capsys.readouterr().out
    assert f"{params:,}" in text and "48x48 px" in text and "label set celebamask" in text
    pytest.importorskip("onnxruntime")
    from segformer.inference.onnx import export_onnx

    export_onnx(tmp_path / "m", tmp_path / "m.onnx", check=False)
    onnx_out = run_json(capsys, str(tmp_path / "m.onnx"), "--size", "64")
    assert onnx_out["params"] == params and onnx_out["settings"] == out["settings"]
    assert (
        onnx_out["onnx"]["inputs"][0]["name"] == "image"
        and onnx_out["onnx"]["outputs"][0]["name"] == "logits"
    )
    assert onnx_out["onnx"]["inputs"][0]["shape"][1] == 3


def test_info_on_a_run_folder_suggests_its_best_model(tmp_path):
    save_model(create_model(tiny_config()), tmp_path / "run" / "best")
    proc = run_cli("info", str(tmp_path / "run"))
    assert (
        proc.returncode == 1
        and "did you mean" in proc.stderr
        and str(tmp_path / "run" / "best") in proc.stderr
    )
