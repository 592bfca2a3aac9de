"""int8 ONNX: static quantization by ONNX Runtime, calibrated on images, checked against the float graph.

`quantize_onnx` turns the float graph `export_onnx` writes into a QDQ int8 graph
(`onnxruntime.quantization.quantize_static`): activation ranges are calibrated (min/max) on the user's
images (``--calibration DIR``: crops like the model's training images) or on synthetic faces
(`segformer.data.synthetic.generate_face`), then the int8 graph's class ids are compared with the float
graph's on those images: the share of pixels that agree is reported, and a graph below `min_agreement`
is refused.

What is quantized was measured on the shipped face parser (256 px; 2-core CPU with AVX-512 VNNI, shared
and loaded): every variant tried (per-tensor or per-channel weights, int8 or uint8 activations, with or
without the classifier, all quantizable op types) agreed with float on 99.0-99.8% of the pixels of 64
CelebAMask-HQ faces, and none was faster than the float graph (0.75-1.1x): the model's time goes to what
stays float (LayerNorm, softmax, GELU, resizes) and to the conversions around each int8 layer. Chosen:
weights int8 per output channel, activations uint8 (the U8S8 pairing ONNX Runtime's x86 kernels prefer),
Conv and MatMul layers with weights only; attention's activation x activation products and the
classifier stay float. `segformer export microsegformer-celebamask --format onnx --out f.onnx --quantize
int8 --calibration celebamask-mini/train/images`: 6.4 -> 1.9 MiB, 99.58% agreement on its 64
calibration faces, 99.62% on 64 others; calibrated on synthetic faces instead, 98.57% on those and
99.62% on the real ones.

onnxruntime is the ``onnx`` extra, imported only here, when needed.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import IMAGE_EXTENSIONS, load_image
from ..data.synthetic import generate_face
from ..errors import SegformerError
from .ops import preprocess
from .settings import InferenceSettings

QUANTIZE_FORMATS = ("int8",)
MIN_AGREEMENT = 0.98
"""The smallest share of calibration pixels whose class the int8 graph must give as the float one does."""
CALIBRATION_IMAGES = 16
"""Synthetic faces calibrated on without ``--calibration``, and the most images read from a folder
(the first, by name): min/max ranges settle within a few dozen images."""
MAX_CALIBRATION_IMAGES = 64


def calibration_inputs(
    settings: InferenceSettings, directory: str | Path | None = None
) -> tuple[list[np.ndarray], str]:
    """The model inputs (``(1, 3, h, w)`` float32, normalised, at the working size) of the calibration
    images, and what they are in words: the first `MAX_CALIBRATION_IMAGES` images of `directory` by
    name, or `CALIBRATION_IMAGES` synthetic faces."""
    size = settings.image_size  # sliding windows: the window size
    if directory is None:
        rng = np.random.default_rng(0)
        images = [generate_face(rng, max(size))[0] for _ in range(CALIBRATION_IMAGES)]
        what = f"{len(images)} synthetic faces"
    else:
        directory = Path(directory)
        if not directory.is_dir():
            raise SegformerError(f"--calibration {directory}: not a folder of images")
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SegformerError(f"--calibration {directory}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        files = files[:MAX_CALIBRATION_IMAGES]
        images = [load_image(p) for p in files]
        what = f"{len(images)} images of {directory}"
    inputs = [preprocess(im, size, settings.mean, settings.std)[None].numpy() for im in images]
    return inputs, what


class _Reader:
    """`onnxruntime.quantization.CalibrationDataReader`: the calibration inputs, one at a time."""

    def __init__(self, name: str, inputs: Sequence[np.ndarray]) -> None:
        self._items: Iterator[np.ndarray] = iter(inputs)
        self._name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._items, None)
        return None if x is None else {self._name: x}

    def rewind(self) -> None:  # part of the interface; one pass is all min/max needs
        pass


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs each tensor it skips through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _float_only_nodes(model: Any) -> list[str]:
    """Nodes left in float: MatMuls of two activations (attention's scores and weighted sum) and the
    classifier (the graph's last Conv)."""
    weights = {t.name for t in model.graph.initializer}
    products = [
        n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)
    ]
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    return products + convs[-1:]


def _class_ids(data: bytes, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The class ids ONNX Runtime computes with graph `data` for each of `inputs`."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as `OnnxRuntimeModel` runs it
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0].argmax(1) for x in inputs]


def quantize_onnx(
    data: bytes,
    settings: InferenceSettings,
    calibration: str | Path | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> tuple[bytes, dict[str, Any]]:
    """The int8 QDQ graph of float ONNX graph `data` (with `data`'s metadata: settings, config), calibrated
    on `calibration` (a folder of images; None: synthetic faces) at `settings`' working size and
    normalisation, and what was measured: ``agreement``, the share of the calibration images' pixels
    whose class the int8 graph gives as the float graph does; below `min_agreement` it is refused."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise SegformerError(
            f"{err.name} is not installed: int8 export needs `pip install segformer[onnx]`"
        ) from None

    inputs, what = calibration_inputs(settings, calibration)
    name = onnx.load_from_string(data).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="segformer-int8-") as tmp, _quiet():
        src, prepared, out = (Path(tmp) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        src.write_bytes(data)
        # Shapes inferred and constants folded first, as onnxruntime recommends before quantizing.
        quant_pre_process(str(src), str(prepared))
        graph = onnx.load(str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            _Reader(name, inputs),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["Conv", "MatMul"],
            nodes_to_exclude=_float_only_nodes(graph),
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(str(out))
    # The settings and config travel with the graph, as in the float file.
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(onnx.load_from_string(data).metadata_props)
    int8 = quantized.SerializeToString()
    expected, got = _class_ids(data, inputs), _class_ids(int8, inputs)
    agreement = float(np.mean([(a == b).mean() for a, b in zip(got, expected, strict=True)]))
    if not agreement >= min_agreement:
        raise SegformerError(
            f"int8 graph refused: its classes agree with the float model's on {agreement:.2%} of the "
            f"pixels of {what}, below --min-agreement {min_agreement:.2%} (export it in float, or calibrate "
            "on images like the model's with --calibration DIR)"
        )
    report = {
        "quantize": "int8",
        "agreement": agreement,
        "calibration": what,
        "float_bytes": len(data),
        "min_agreement": min_agreement,
    }
    return int8, report


__all__ = [
    "CALIBRATION_IMAGES",
    "MAX_CALIBRATION_IMAGES",
    "MIN_AGREEMENT",
    "QUANTIZE_FORMATS",
    "calibration_inputs",
    "quantize_onnx",
]
