"""ONNX: export a model's graph, and run an exported one with ONNX Runtime.

`export_onnx` writes the model's ``forward`` (normalised ``(B, 3, H, W)`` images -> ``(B, K, H, W)``
logits at the input size) with dynamic batch, height and width, checked with the ONNX checker and
against onnxruntime at two input sizes. Preprocessing, TTA and argmax stay outside the graph; the
model's `InferenceSettings` and `ModelConfig` travel in the file's metadata, so
``Predictor("model.onnx")`` / ``segformer predict model.onnx`` give the masks the torch model gives.
The default exporter is PyTorch's TorchScript-based one (``dynamo=False``, deprecated but supported
in torch 2.x): 2-3 s for MicroSegFormer on a 2-core CPU against about 25 s for the torch.export-based
exporter (``exporter="dynamo"``), which gives the same logits (both within 3e-7 of PyTorch).

onnx and onnxruntime are an extra (``pip install segformer[onnx]``), imported only here, when needed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import mmap
import os
import types
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load, unwrap
from ..config import ModelConfig
from ..errors import SegformerError
from ..fileio import OutputFolder, atomic_path
from ..models.fuse import maybe_fuse
from .settings import InferenceSettings, model_settings

ONNX_METADATA_KEY = "segformer"
EXPORTERS = ("torchscript", "dynamo")
CHECK_SIZES = ((2, 64, 64), (1, 97, 131))  # (batch, height, width): square and odd, to prove dynamic axes


def _require(module: str) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SegformerError(
            f"{module} is not installed: ONNX export and inference need `pip install segformer[onnx]`"
        ) from None


def min_input_size(config: ModelConfig) -> int:
    """Smallest input side the exported graph runs on.

    A sequence-reduction convolution needs a map of at least sr x sr; the model pads smaller maps, but
    that branch is a Python `if` on the shape, fixed when the graph is traced for larger inputs.
    The U-Net pads every input in the graph and takes any size.
    """
    if config.arch != "segformer":
        return 1
    side = 1
    while True:
        n, fits = side, True
        for k, s, r in zip(config.patch_sizes, config.strides, config.sr_ratios, strict=True):
            n = (n + 2 * (k // 2) - k) // s + 1  # the patch embedding's output size
            fits = fits and (r == 1 or n >= r)
        if fits:
            return side
        side += 1


def onnx_bytes(
    model: nn.Module, metadata: dict[str, Any] | None = None, exporter: str = "torchscript", opset: int = 18
) -> bytes:
    """The serialised ONNX graph of `model` with dynamic batch/height/width (and `metadata` as JSON)."""
    onnx = _require("onnx")
    if exporter not in EXPORTERS:
        raise SegformerError(f"unknown ONNX exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    model = maybe_fuse(unwrap(model).eval())  # the exactly equivalent, cheaper graph
    side = max(64, min_input_size(model.config))
    param = next(model.parameters(), None)
    x = torch.randn(2, 3, side, side, device=param.device if param is not None else "cpu")
    names = {"input_names": ["image"], "output_names": ["logits"], "opset_version": opset}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated (still supported in torch 2.x) and warns about the
        # model's shape-dependent Python branches, which take the same path for every input of at
        # least `min_input_size` (the padding of tiny maps, the no-op resize of the stride-4 map).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if exporter == "torchscript":
            buffer = io.BytesIO()
            axes = {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(
                model, (x,), buffer, dynamo=False, dynamic_axes={"image": axes, "logits": axes}, **names
            )
            proto = onnx.load_from_string(buffer.getvalue())
        else:
            dim = torch.export.Dim.DYNAMIC
            program = torch.onnx.export(
                model, (x,), dynamo=True, dynamic_shapes=({0: dim, 2: dim, 3: dim},), verbose=False, **names
            )
            proto = program.model_proto
    if metadata is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(metadata)
    return proto.SerializeToString()


class OnnxRuntimeModel:
    """An exported model run by onnxruntime, called like the torch model: ``(B, 3, H, W)`` normalised
    images -> ``(B, K, H, W)`` logits. ``config`` and ``settings`` (``meta``: their plain form) come
    from the file's segformer metadata."""

    def __init__(self, source: str | Path | bytes, device: str = "cpu") -> None:
        ort = _require("onnxruntime")
        self.source = "<in-memory ONNX model>" if isinstance(source, bytes) else str(source)
        self.data = source if isinstance(source, bytes) else None
        """The serialised graph, when given as bytes."""
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise SegformerError(f"{source}: no such file")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # what --threads chose, as PyTorch uses
        try:
            self.session = ort.InferenceSession(
                source if isinstance(source, bytes) else str(source), options, providers=providers
            )
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise SegformerError(f"{self.source}: cannot load as an ONNX model ({err})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        if raw is None:
            raise SegformerError(
                f"{self.source}: no segformer metadata (export it with `segformer export --format onnx`)"
            )
        where = f"{self.source} (segformer metadata)"
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise SegformerError(f"{where}: invalid JSON ({err})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise SegformerError(f'{where}: expected {{"config": {{...}}, "meta": {{...}}}}')
        try:
            self.config = ModelConfig.from_dict(doc["config"])
        except SegformerError as err:
            raise SegformerError(f"{where}: {err}") from None
        self.settings = InferenceSettings.from_dict(doc.get("meta") or {}, where)
        self.meta: dict[str, Any] = self.settings.to_dict()
        self.min_size = min_input_size(self.config)
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        device: str = "cpu",
        exporter: str = "torchscript",
        settings: InferenceSettings | None = None,
    ) -> OnnxRuntimeModel:
        """Export `model` in memory and load it, with `settings` (default: the model's own)."""
        model = unwrap(model)
        settings = settings or model_settings(model)
        metadata = {"config": model.config.to_dict(), "meta": settings.to_dict()}
        return cls(onnx_bytes(model, metadata, exporter), device)

    def eval(self) -> OnnxRuntimeModel:
        return self

    def __call__(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise SegformerError(
                f"{self.source}: input {tuple(x.shape[-2:])} is smaller than the {self.min_size} px the "
                "exported graph supports; use the torch backend for tiny inputs"
            )
        try:
            out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        except Exception as err:  # onnxruntime's own exception types
            message = str(err).strip().splitlines()[-1]
            raise SegformerError(
                f"{self.source}: ONNX Runtime failed on input {tuple(x.shape)}: {message}"
            ) from None
        return torch.from_numpy(out).to(x.device)


def cache_dir() -> Path:
    """Where segformer keeps what it can make again: ``SEGFORMER_CACHE``, else
    ``XDG_CACHE_HOME/segformer``, else ``~/.cache/segformer``."""
    if os.environ.get("SEGFORMER_CACHE"):
        return Path(os.environ["SEGFORMER_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "segformer"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cache_key(model: nn.Module, metadata: dict[str, Any]) -> str:
    """A digest of everything the exported graph depends on: the weights, the metadata, the versions."""
    versions = [torch.__version__, *(_version(m) for m in ("onnx", "onnxruntime"))]
    digest = hashlib.sha256(json.dumps([metadata, versions]).encode())
    for name, tensor in unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def cached_runtime(model: nn.Module, settings: InferenceSettings, check: Any = None) -> OnnxRuntimeModel:
    """`OnnxRuntimeModel.from_model`, through a cache of exported graphs (`cache_dir` ``/onnx``): a model
    exported once loads in a fraction of a second in later processes instead of being exported
    again (1-2 s: the exporter and the onnx package). `check(runtime)` runs on every graph, loaded or
    new, and raises for one that must not be used; a new graph is kept only once it passed. A cache
    that cannot be written is not used."""
    metadata = {"config": unwrap(model).config.to_dict(), "meta": settings.to_dict()}
    path = cache_dir() / "onnx" / f"{_cache_key(model, metadata)}.onnx"
    if path.is_file():
        try:
            runtime = OnnxRuntimeModel(path)
            if check is not None:
                check(runtime)
            return runtime
        except SegformerError:  # a damaged entry: made again below
            pass
    runtime = OnnxRuntimeModel.from_model(model, "cpu", settings=settings)
    if check is not None:
        check(runtime)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(runtime.data or b"")
    except (OSError, SegformerError):
        pass
    runtime.data = None
    return runtime


class AutoRuntime:
    """``backend="auto"``: a CPU model run by ONNX Runtime where it can be, by PyTorch otherwise.

    At the first call the model is exported (dynamic batch, height and width: every size that TTA
    scales produce; kept in `cache_dir` for later processes, `cached_runtime`) and its logits are
    checked against PyTorch's (`compare_logits`); the session is kept for the calls that follow.
    PyTorch (`net`) runs instead, for good, when onnx or onnxruntime is not installed (silently), or
    when the export or its check fails (with a warning); and for inputs smaller than the graph
    supports (`min_input_size`). `backend` says which runs and `reason` why PyTorch does. The export
    is a snapshot, like `segformer.models.fuse`: build another Predictor after changing the weights.
    """

    def __init__(self, model: nn.Module, net: nn.Module, settings: InferenceSettings) -> None:
        self.model, self.net, self.settings = model, net, settings
        self.onnx: OnnxRuntimeModel | None = None
        self.reason: str | None = None
        self._tried = False

    @property
    def backend(self) -> str:
        """``onnxruntime`` or ``torch`` (exports the model if that has not been tried yet)."""
        self._export()
        return "torch" if self.onnx is None else "onnxruntime"

    def _export(self) -> None:
        if self._tried:
            return
        self._tried = True
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            self.reason = f"{' and '.join(missing)} not installed (pip install segformer[onnx])"
            return
        try:
            with torch.inference_mode(False), torch.no_grad():  # tracing cannot run on inference tensors
                # the graph does not depend on the predictor's settings: one cache entry per model
                runtime = cached_runtime(
                    self.model, model_settings(self.model), check=lambda r: compare_logits(r, self.net)
                )
        except Exception as err:  # any exporter or onnxruntime failure: PyTorch computes the same
            lines = str(err).strip().splitlines() or [type(err).__name__]
            self.reason = f"the model does not run on ONNX Runtime ({lines[0]})"
            warnings.warn(f"backend auto: {self.reason}; running it with PyTorch", stacklevel=2)
            return
        self.onnx = runtime

    def eval(self) -> AutoRuntime:
        return self

    def __call__(self, x: Tensor) -> Tensor:
        self._export()
        if self.onnx is not None and min(x.shape[-2:]) >= self.onnx.min_size:
            return self.onnx(x)
        return self.net(x)


def check_onnx(
    data: bytes, model: nn.Module, sizes: Sequence[tuple[int, int, int]] = CHECK_SIZES, atol: float = 1e-4
) -> dict[str, float]:
    """Run the ONNX checker on `data` and compare onnxruntime's logits with `model`'s on random inputs of
    each ``(batch, height, width)`` in `sizes` (`compare_logits`); returns the max abs difference per
    size."""
    onnx = _require("onnx")
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except onnx.checker.ValidationError as err:
        raise SegformerError(f"the exported ONNX graph is invalid: {str(err).splitlines()[0]}") from None
    return compare_logits(OnnxRuntimeModel(data), model, sizes, atol)


def compare_logits(
    runtime: OnnxRuntimeModel,
    model: nn.Module,
    sizes: Sequence[tuple[int, int, int]] = CHECK_SIZES,
    atol: float = 1e-4,
) -> dict[str, float]:
    """The max abs difference of `runtime`'s logits from `model`'s on random inputs of each
    ``(batch, height, width)`` in `sizes` (raised to the graph's smallest side); a `SegformerError`
    when the shapes differ or a difference exceeds `atol`."""
    model = unwrap(model).eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    diffs: dict[str, float] = {}
    for b, h, w in sizes:
        h, w = max(h, runtime.min_size), max(w, runtime.min_size)
        x = torch.randn(b, 3, h, w, generator=generator)
        with torch.inference_mode():
            expected = model(x.to(device)).float().cpu()
        got = runtime(x)
        if got.shape != expected.shape:
            raise SegformerError(
                f"ONNX output {tuple(got.shape)} for input {tuple(x.shape)}, expected {tuple(expected.shape)}"
            )
        diffs[f"{b}x3x{h}x{w}"] = diff = float((got - expected).abs().max())
        if not diff <= atol:
            raise SegformerError(
                f"ONNX Runtime logits differ from PyTorch by {diff:.3g} (> {atol:g}) at input {b}x3x{h}x{w}"
            )
    return diffs


def is_segformer_onnx(path: str | Path) -> bool:
    """Whether `path` is an ONNX file carrying our metadata (an export that may be replaced)."""
    # The metadata entry is a protobuf StringStringEntryProto: field 1 (key) = ONNX_METADATA_KEY.
    key = ONNX_METADATA_KEY.encode()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(b"\n" + bytes([len(key)]) + key + b"\x12") >= 0


def export_onnx(
    model: nn.Module | str | Path,
    path: str | Path,
    *,
    settings: InferenceSettings | None = None,
    exporter: str = "torchscript",
    opset: int = 18,
    check: bool = True,
    inputs: Sequence[str | Path] = (),
    quantize: str | None = None,
    calibration: str | Path | None = None,
    min_agreement: float | None = None,
) -> dict[str, Any]:
    """Write `model` (a module, or anything `segformer.load` reads) as an ONNX file with dynamic
    batch/height/width and its `settings` (default: the model's own) in the metadata; with `check`,
    verify it first (`check_onnx`). Returns what was written and checked. The file follows the output
    policy (`segformer.fileio.OutputFolder.for_file`): only an ONNX file that segformer export wrote
    there is replaced, never the model read (`model`, `inputs`).

    ``quantize="int8"`` writes the statically quantized graph instead (`segformer.inference.quantize`),
    calibrated on the images of folder `calibration` (default: synthetic faces) and refused when its
    classes agree with the float graph's on less than `min_agreement` (0.98) of their pixels."""
    if quantize not in (None, "int8"):
        raise SegformerError(f"unknown quantization {quantize!r}; choose from int8")
    inputs = [*inputs, *([model] if isinstance(model, (str, Path)) else [])]
    with OutputFolder.for_file(
        path, "export", inputs, overwrite=True, what="ONNX file"
    ) as out:  # before the work
        torch_model = unwrap(load(model) if isinstance(model, (str, Path)) else model)
        settings = settings or model_settings(torch_model)
        metadata = {"config": torch_model.config.to_dict(), "meta": settings.to_dict()}
        data = onnx_bytes(torch_model, metadata, exporter, opset)
        diffs = check_onnx(data, torch_model) if check else {}
        quantized: dict[str, Any] = {}
        if quantize:
            from .quantize import MIN_AGREEMENT, quantize_onnx

            floor = MIN_AGREEMENT if min_agreement is None else min_agreement
            data, quantized = quantize_onnx(data, settings, calibration, floor)
        out.write_bytes(path, data)
    return {
        "path": str(path),
        "exporter": exporter,
        "opset": opset,
        "bytes": len(data),
        "max_abs_diff": diffs,
        **quantized,
    }


__all__ = [
    "EXPORTERS",
    "AutoRuntime",
    "OnnxRuntimeModel",
    "check_onnx",
    "compare_logits",
    "export_onnx",
    "min_input_size",
    "onnx_bytes",
]
