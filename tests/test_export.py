"""ONNX export against onnxruntime, and the CE7454 submission run standalone in a clean folder."""

from __future__ import annotations

import ast
import inspect
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segformer import Predictor, SegformerError, create_model, load
from segformer.apps.bundle import standalone_source
from segformer.apps.export import CE7454_BUDGET, export_ce7454, run_py_source
from segformer.checkpoint import save_model
from segformer.cli import main
from segformer.data.io import load_mask
from segformer.data.labels import CELEBAMASK
from segformer.fileio import MANIFEST_NAME
from segformer.inference.onnx import OnnxRuntimeModel, export_onnx, min_input_size
from segformer.inference.ops import predict_batch
from segformer.models.segformer import SegFormer

from conftest import ROOT, run_solution, tiny_config

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = create_model(tiny_config("micro", num_classes=19))
    out = tmp_path_factory.mktemp("model") / "tiny"
    save_model(model, out, meta={"label_set": "celebamask", "image_size": 48})
    return out


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _equal_but_ties(a: np.ndarray, b: np.ndarray, probs: np.ndarray, gap: float = 1e-5) -> None:
    """Masks from two runtimes agree wherever the winning class leads by more than `gap`."""
    top2 = np.sort(probs, axis=0)[-2:]
    clear = top2[1] - top2[0] > gap
    np.testing.assert_array_equal(a[clear], b[clear])


@pytest.mark.parametrize("decoder", ["micro", "mlp"])
def test_onnx_matches_pytorch_at_any_size(decoder, tmp_path):
    torch.manual_seed(0)
    model = create_model(tiny_config(decoder)).eval()
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result["exporter"] == "torchscript" and set(result["max_abs_diff"]) == {"2x3x64x64", "1x3x97x131"}
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 64, 64), (1, 3, 97, 131), (3, 3, 40, 72)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape == (shape[0], 5, *shape[2:])
        assert np.abs(got - expected).max() <= 1e-4


def test_onnx_file_predicts_like_the_model(model_dir, tmp_path):
    export_onnx(model_dir, tmp_path / "m.onnx")
    torch_p, onnx_p = Predictor(model_dir, faces=False), Predictor(tmp_path / "m.onnx", faces=False)
    assert onnx_p.backend == "onnxruntime" and onnx_p.settings() == torch_p.settings()
    assert onnx_p.label_set == CELEBAMASK and onnx_p.image_size == (48, 48)
    image = _image(61, 83)
    ids, probs = torch_p(image, return_probs=True)
    _equal_but_ties(onnx_p(image), ids, probs)
    in_memory = Predictor(model_dir, backend="onnxruntime", faces=False)  # exported on the fly
    assert isinstance(in_memory.model, OnnxRuntimeModel)
    _equal_but_ties(in_memory(image), ids, probs)


def test_onnx_errors(model_dir, tmp_path, monkeypatch):
    runtime = OnnxRuntimeModel(export_onnx(model_dir, tmp_path / "m.onnx")["path"])
    side = min_input_size(runtime.config)
    # tiny_config: stage 3 has stride 16 and sr 2, so it needs a 2x2 map: more than 16 px
    assert side == 17 and min_input_size(create_model("microsegformer").config) == 29
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        expected = load(model_dir)(x)
    assert (runtime(x) - expected).abs().max() <= 1e-4
    with pytest.raises(SegformerError, match=f"smaller than the {side} px"):
        runtime(torch.zeros(1, 3, side - 1, 40))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(SegformerError, match=r"junk\.onnx: cannot load as an ONNX model"):
        Predictor(tmp_path / "junk.onnx", faces=False)
    bare = onnx.load(str(tmp_path / "m.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(SegformerError, match="no segformer metadata"):
        Predictor(tmp_path / "bare.onnx", faces=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    with pytest.raises(SegformerError, match=r"pip install segformer\[onnx\]"):
        Predictor(tmp_path / "m.onnx", faces=False)


@pytest.mark.slow
def test_dynamo_exporter(tmp_path):
    model = create_model(tiny_config("micro")).eval()
    result = export_onnx(model, tmp_path / "m.onnx", exporter="dynamo")
    assert max(result["max_abs_diff"].values()) <= 1e-4


# -- CE7454 --


def test_ce7454_package_runs_standalone_and_reproduces_predict(model_dir, tmp_path, monkeypatch, capsys):
    assert main(["export", str(model_dir), "--format", "ce7454", "--out", str(tmp_path / "sub")]) == 0
    solution = tmp_path / "sub" / "solution"
    # (and the output policy's record of what export wrote there)
    assert sorted(p.name for p in solution.iterdir()) == [
        MANIFEST_NAME,
        "ckpt.pth",
        "requirements.txt",
        "run.py",
    ]
    ckpt = torch.load(solution / "ckpt.pth", weights_only=True)
    assert set(ckpt) == {"state_dict", "config", "meta"} and isinstance(ckpt["config"], dict)
    assert ckpt["state_dict"].keys() == create_model(tiny_config("micro", num_classes=19)).state_dict().keys()
    pins = (solution / "requirements.txt").read_text().split()
    assert [p.split("==")[0] for p in pins] == ["torch", "numpy", "pillow"] and all("==" in p for p in pins)
    tree = ast.parse((solution / "run.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # the standard library (run.py follows the package's output policy: locks, manifest, atomic writes)
    # and the three pinned requirements, nothing else
    assert imported - set(sys.stdlib_module_names) == {"numpy", "torch", "PIL"}

    # An odd-sized RGB JPEG and an EXIF-rotated grey PNG, in a clean folder outside the repository.
    clean = tmp_path / "clean"
    shutil.copytree(solution, clean / "solution")
    assert ROOT not in clean.parents
    Image.fromarray(_image(77, 101)).save(clean / "odd.jpg", quality=90)
    grey = Image.fromarray(_image(41, 67)[..., 0], "L")
    exif = grey.getexif()
    exif[0x0112] = 6
    grey.save(clean / "rotated.png", exif=exif.tobytes())
    inputs = [str(clean / "odd.jpg"), str(clean / "rotated.png")]
    assert (
        main(
            ["predict", "--whole-image", str(model_dir), *inputs, "--out", str(tmp_path / "pred"), "--quiet"]
        )
        == 0
    )
    # A real standalone run (subprocess, no PYTHONPATH, segformer unimportable) for one image, and the
    # same file run in this process for the other input and for a missing one.
    argv = ["--input", str(clean / "rotated.png"), "--output", str(clean / "rotated.png.out.png")]
    proc = run_solution(clean / "solution", *argv)
    assert proc.returncode == 0, proc.stderr

    def run_in_process(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["run.py", *args, "--weights", str(clean / "solution" / "ckpt.pth")])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(clean / "solution" / "run.py"), run_name="__main__")
        return exit_.value.code

    assert run_in_process("--input", str(clean / "odd.jpg"), "--output", str(clean / "odd.jpg.out.png")) == 0
    for name, size in (("odd.jpg", (101, 77)), ("rotated.png", (41, 67))):
        stem = name.split(".")[0]
        ours, theirs = Image.open(tmp_path / "pred" / f"{stem}.png"), Image.open(clean / f"{name}.out.png")
        assert theirs.mode == "P" and theirs.size == size
        np.testing.assert_array_equal(np.asarray(theirs), np.asarray(ours))
        assert theirs.getpalette() == ours.getpalette()
        np.testing.assert_array_equal(load_mask(clean / f"{name}.out.png"), np.asarray(ours))
    assert run_in_process("--input", str(clean / "missing.jpg"), "--output", str(clean / "x.png")) == 1
    assert "missing.jpg: image not found" in capsys.readouterr().err


def test_run_py_is_generated_from_the_package_source():
    source = run_py_source(create_model(tiny_config("micro")))
    # the definitions are copied verbatim (with comments), not re-written: no second copy to drift
    for obj in (SegFormer, predict_batch):
        lines = inspect.getsource(obj).splitlines()
        assert "\n".join(line for line in lines if not line.startswith("@register")) in source
    assert "register_model" not in source and "@register_arch" not in source
    compile(source, "run.py", "exec")
    ruff = shutil.which("ruff")
    if ruff:  # undefined names, unused imports and import order, statically
        proc = subprocess.run(
            [ruff, "check", "--isolated", "--select", "F,I", "--stdin-filename", "run.py", "-"],
            input=source, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout
    with pytest.raises(SegformerError, match="not a top-level definition"):
        standalone_source([("segformer.inference.predictor", "no_such_function")])


def test_ce7454_parameter_budget(model_dir, tmp_path, monkeypatch):
    micro = create_model("microsegformer", num_classes=19)
    assert sum(p.numel() for p in micro.parameters()) == 1_721_939 < CE7454_BUDGET
    assert export_ce7454(micro, tmp_path / "micro", verify=False)["params"] == 1_721_939
    b0 = create_model("segformer-b0", num_classes=19)
    refused = r"3,719,027 parameters.*fewer than 1,821,085.*--no-budget-check"
    with pytest.raises(SegformerError, match=refused):
        export_ce7454(b0, tmp_path / "b0")
    assert not (tmp_path / "b0").exists()
    # the CLI flag, with a budget the tiny model (40,107 parameters) exceeds
    monkeypatch.setattr("segformer.cli.export.CE7454_BUDGET", 40_000)
    args = ["export", str(model_dir), "--format", "ce7454", "--out", str(tmp_path / "tiny")]
    assert main(args) == 1 and not (tmp_path / "tiny").exists()
    assert main([*args, "--no-budget-check"]) == 0
    assert (tmp_path / "tiny" / "solution" / "run.py").is_file()


def test_unet_exports_to_onnx_at_any_size(tmp_path):
    model = create_model("unet", num_classes=5, unet_width=4).eval()
    assert min_input_size(model.config) == 1
    export_onnx(model, tmp_path / "unet.onnx")
    runtime = OnnxRuntimeModel(tmp_path / "unet.onnx")
    for shape in [(1, 3, 33, 17), (2, 3, 48, 80)]:  # padded to multiples of 16 inside the graph
        x = torch.randn(*shape)
        with torch.no_grad():
            assert (runtime(x) - model(x)).abs().max() <= 1e-4


def test_ce7454_package_of_a_unet(tmp_path):
    # the parameter-matched U-Net baseline is a valid submission too (width 15: 1,707,844 parameters)
    model = create_model("unet", num_classes=19, unet_width=4)
    model.meta = {"image_size": 40}
    result = export_ce7454(model, tmp_path)  # verify=True: run.py must reproduce the Predictor
    source = (tmp_path / "solution" / "run.py").read_text()
    assert result["params"] < CE7454_BUDGET and "class UNet(nn.Module):" in source
