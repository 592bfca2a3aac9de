"""int8 ONNX export: ONNX Runtime's static quantization, calibrated on images, checked against float."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import segformer
from segformer.cli import main
from segformer.models import build_model

from conftest import SHARED_DATA, tiny_config

pytest.importorskip("onnxruntime.quantization")
onnx = pytest.importorskip("onnx")
pytestmark = pytest.mark.export

from segformer.inference.onnx import OnnxRuntimeModel, onnx_bytes  # noqa: E402
from segformer.inference.quantize import calibration_inputs, quantize_onnx  # noqa: E402
from segformer.inference.settings import model_settings  # noqa: E402

AGREEMENT = re.compile(r"agree with the float model's on (\d+\.\d+)% of the pixels of (.+) \(")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=19)).eval()
    out = tmp_path_factory.mktemp("int8") / "tiny"
    segformer.save(model, out, meta={"image_size": 48, "label_set": "celebamask"})
    return out


@pytest.fixture(scope="module")
def int8(model_dir, tmp_path_factory):
    """``segformer export --quantize int8`` of the tiny model, calibrated on synthetic faces: (path,
    the command's output)."""
    path = tmp_path_factory.mktemp("int8-out") / "tiny-int8.onnx"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["export", str(model_dir), "--format", "onnx", "--out", str(path), "--quantize", "int8",
             "--min-agreement", "0.5"]
        )  # fmt: skip
    assert code == 0
    return path, out.getvalue()


def test_int8_export_is_quantized_carries_the_settings_and_predicts(int8, model_dir):
    path, printed = int8
    graph = onnx.load(str(path))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    runtime = OnnxRuntimeModel(path)
    assert runtime.settings.image_size == (48, 48) and runtime.config.num_classes == 19
    mask = segformer.Predictor(path, faces=False).predict(np.zeros((50, 40, 3), np.uint8))
    assert mask.shape == (50, 40)
    # The printed agreement is measured: recomputed here from the float and int8 graphs' class ids.
    match = AGREEMENT.search(printed)
    assert match and match[2] == "16 synthetic faces", printed
    model = segformer.load(model_dir)
    settings = model_settings(model)
    inputs, _ = calibration_inputs(settings)
    float_graph = OnnxRuntimeModel(onnx_bytes(model, {"config": model.config.to_dict(), "meta": {}}))
    agree = np.mean(
        [
            (runtime(torch.from_numpy(x)).argmax(1) == float_graph(torch.from_numpy(x)).argmax(1))
            .float()
            .mean()
            for x in inputs
        ]
    )
    assert float(match[1]) == pytest.approx(100 * float(agree), abs=0.01)


def test_int8_below_the_threshold_is_refused_in_one_line(model_dir, tmp_path, capsys):
    path = tmp_path / "refused.onnx"
    argv = ["export", str(model_dir), "--out", str(path), "--quantize", "int8", "--min-agreement", "1.01"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int8 graph refused" in err[0] and "below --min-agreement 101.00%" in err[0]
    assert not path.exists()


def test_calibration_folder_and_option_errors(model_dir, tmp_path, capsys):
    from PIL import Image

    from segformer.data.synthetic import generate_face

    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(generate_face(rng, 64)[0]).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    model = segformer.load(model_dir)
    settings = model_settings(model)
    data = onnx_bytes(model, {"config": model.config.to_dict(), "meta": settings.to_dict()})
    _, report = quantize_onnx(data, settings, folder, min_agreement=0.0)
    assert report["calibration"] == f"3 images of {folder}" and 0 <= report["agreement"] <= 1
    (tmp_path / "empty").mkdir()
    for argv, says in (
        (["--quantize", "int8", "--calibration", str(tmp_path / "empty")], "no images"),
        (["--calibration", str(folder)], "go with --quantize int8"),
        (["--format", "pretrained", "--quantize", "int8"], "--quantize is for --format onnx"),
    ):
        assert main(["export", str(model_dir), "--out", str(tmp_path / "x.onnx"), *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "train" / "images").is_dir(), reason="needs celebamask-mini")
def test_shipped_model_int8_agrees_on_real_faces():
    """The acceptance figure: >= 98% pixel agreement with float on real CelebAMask-HQ faces."""
    model = segformer.load("microsegformer-celebamask")
    settings = model_settings(model)
    data = onnx_bytes(model, {"config": model.config.to_dict(), "meta": settings.to_dict()})
    _, report = quantize_onnx(data, settings, SHARED_DATA / "train" / "images")
    assert report["agreement"] >= 0.98


def test_bench_sets_int8_against_the_float_graph(monkeypatch):
    from segformer.bench import bench_inference

    monkeypatch.setattr("segformer.inference.quantize.CALIBRATION_IMAGES", 2)  # calibrated at 512 px
    tiny = {k: v for k, v in tiny_config().to_dict().items() if k in ("embed_dims", "depths", "num_heads",
            "sr_ratios", "mlp_ratios", "decoder_dim")}  # fmt: skip
    report = bench_inference(
        "segformer-b0", 64, num_classes=5, backend="onnxruntime", compare="int8", rounds=2, warmup=1,
        memory=False, overrides=tiny,
    )  # fmt: skip
    assert [r.side for r in report.rows] == ["ours (onnxruntime)", "onnxruntime int8"]
    text = report.format()
    assert "ours / onnxruntime int8:" in text
    assert re.search(r"ONNX file: int8 \d+\.\d\d MiB, float \d+\.\d\d MiB .* of 2 synthetic faces", text), (
        text
    )
