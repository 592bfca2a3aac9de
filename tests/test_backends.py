"""backend="auto": ONNX Runtime runs a CPU model where it is installed, with the class ids of the PyTorch
path (>= 99.9% of pixels, every TTA mode and odd sizes), one export per Predictor, onnxruntime's threads
as PyTorch's, and PyTorch with the reason when it cannot."""

from __future__ import annotations

import copy
import importlib.util
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segformer import Predictor, create_model
from segformer.config import TTA_MODES
from segformer.inference import onnx as onnx_module
from segformer.models.fuse import FusedSegFormer

from conftest import randomize_norms, tiny_config

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(3)
    m = randomize_norms(create_model(tiny_config("micro", num_classes=19))).eval()
    m.meta = {"label_set": "celebamask", "image_size": 48}  # flip TTA swaps the face's left/right classes
    return m


def _image(h: int, w: int, seed: int) -> np.ndarray:
    # Smooth blobs: classes vary over the image and resizing matters.
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


@pytest.mark.parametrize("tta", TTA_MODES)
def test_onnxruntime_class_ids_are_torchs_on_999_in_1000_pixels(model, tta):
    images = [_image(64, 64, 0), _image(57, 83, 1), _image(40, 31, 2)]
    auto = Predictor(model, tta=tta, faces=False)  # the default backend
    torch_p = Predictor(model, tta=tta, faces=False, backend="torch")
    got, expected = auto(images), torch_p(images)
    assert auto.backend == "onnxruntime" and auto.backend_reason is None
    assert torch_p.backend == "torch" and isinstance(torch_p.net, FusedSegFormer)
    assert len(np.unique(np.concatenate([e.ravel() for e in expected]))) > 2  # masks worth comparing
    same = sum(int((g == e).sum()) for g, e in zip(got, expected, strict=True))
    agree = same / sum(e.size for e in expected)
    assert agree >= 0.999, f"{tta}: {agree:.5f}"


def test_sliding_windows_on_onnxruntime_match_torch(model):
    image = _image(90, 70, 4)
    got = Predictor(model, eval_mode="slide", image_size=32, faces=False)(image)
    expected = Predictor(model, eval_mode="slide", image_size=32, faces=False, backend="torch")(image)
    assert (got == expected).mean() >= 0.999


@pytest.fixture
def exports(monkeypatch) -> list[int]:
    """One entry per export of a model to ONNX (`OnnxRuntimeModel.from_model`)."""
    calls: list[int] = []
    real = onnx_module.OnnxRuntimeModel.from_model
    monkeypatch.setattr(
        onnx_module.OnnxRuntimeModel,
        "from_model",
        classmethod(lambda cls, *a, **k: calls.append(1) or real(*a, **k)),
    )
    return calls


def test_the_graph_is_exported_once_per_predictor_with_torchs_threads(model, exports):
    predictor = Predictor(model, tta="flip+scales", faces=False)
    assert exports == []  # lazily: a Predictor that never predicts never exports
    for h, w in ((48, 48), (61, 37), (80, 96)):  # sizes and scales the dynamic axes must take
        predictor(_image(h, w, h))
    assert exports == [1] and predictor.backend == "onnxruntime"
    options = predictor.net.onnx.session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()


def test_torch_runs_silently_when_onnxruntime_is_missing(model, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    predictor = Predictor(model, faces=False)
    image = _image(50, 50, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = predictor(image)
    assert predictor.backend == "torch"
    assert "onnxruntime not installed" in predictor.backend_reason
    np.testing.assert_array_equal(ids, Predictor(model, faces=False, backend="torch")(image))


class ShapeBakedModel(nn.Module):
    """Logits from a constant the TorchScript tracer bakes in at the export's input size: the graph
    fails at any other size, which the check against PyTorch catches."""

    def __init__(self) -> None:
        super().__init__()
        self.config = tiny_config("micro", num_classes=19)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        out = torch.zeros(b, 19, int(h), int(w)) * self.scale
        out[:, 1] = x[:, 0]
        return out.reshape(b, 19, int(h), int(w))


def test_a_model_that_does_not_export_runs_on_torch_with_a_warning():
    model = ShapeBakedModel()
    predictor = Predictor(model, image_size=32, faces=False)
    image = _image(40, 40, 6)
    with pytest.warns(UserWarning, match="backend auto: the model does not run on ONNX Runtime"):
        ids = predictor(image)
    assert predictor.backend == "torch" and "ONNX Runtime" in predictor.backend_reason
    np.testing.assert_array_equal(ids, Predictor(model, image_size=32, faces=False, backend="torch")(image))


def test_backend_torch_and_onnxruntime_force_one(model):
    assert Predictor(model, faces=False, backend="torch").backend == "torch"
    forced = Predictor(model, faces=False, backend="onnxruntime")
    assert forced.backend == "onnxruntime" and forced.backend_reason is None


def test_a_graph_exported_once_loads_from_the_cache_later(model, exports, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEGFORMER_CACHE", str(cache))
    image = _image(48, 48, 7)
    first = Predictor(model, faces=False)(image)
    (entry,) = (cache / "onnx").iterdir()
    second = Predictor(model, faces=False)
    np.testing.assert_array_equal(second(image), first)
    assert exports == [1] and second.backend == "onnxruntime"  # the second loaded the cached graph
    assert second.net.onnx.source == str(entry)
    Predictor(model, faces=False, tta="flip")(image)  # other settings, the same graph
    assert exports == [1]
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.1)
    Predictor(other, faces=False)(image)  # other weights: another graph
    assert exports == [1, 1] and len(list((cache / "onnx").iterdir())) == 2
    entry.write_bytes(b"not a graph")  # a damaged entry is made again
    np.testing.assert_array_equal(Predictor(model, faces=False)(image), first)
    assert exports == [1, 1, 1] and entry.stat().st_size > 1000


def test_an_unwritable_cache_is_not_used(model, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SEGFORMER_CACHE", str(blocker))  # a file: no folder can be made under it
    image = _image(48, 48, 8)
    predictor = Predictor(model, faces=False)
    expected = Predictor(model, faces=False, backend="torch")(image)
    assert (predictor(image) == expected).mean() >= 0.999
    assert predictor.backend == "onnxruntime" and blocker.read_text() == ""


def test_a_graph_that_fails_its_check_is_not_cached(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEGFORMER_CACHE", str(cache))
    for _ in range(2):  # and the second predictor exports (and refuses) it again
        predictor = Predictor(ShapeBakedModel(), image_size=32, faces=False)
        with pytest.warns(UserWarning, match="backend auto: the model does not run on ONNX Runtime"):
            predictor(_image(40, 40, 9))
        assert predictor.backend == "torch"
        assert not any(cache.rglob("*.onnx"))
