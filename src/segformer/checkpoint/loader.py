"""Load SegFormer weights from any layout people have them in, and save them back.

`load` reads, with the architecture taken from the checkpoint itself:

- our native model directories (``config.json`` with ``"format": "segformer"`` + ``model.safetensors``);
- HF transformers directories (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, sharded
  or not, legacy or 5.x key names): SegformerForSemanticSegmentation
  (``nvidia/segformer-b0-finetuned-ade-512-512`` ...) and the encoder-only
  SegformerForImageClassification (``nvidia/mit-b0`` ...);
- any of these on the Hugging Face Hub, named ``org/name`` or ``org/name@revision`` (`hub.snapshot`:
  fetched into huggingface_hub's cache, ``HF_HUB_OFFLINE`` honoured);
- NVlabs/mmseg ``.pth`` files: whole segmentation checkpoints (``{"meta": ..., "state_dict": ...}``) and
  ImageNet ``mit_bX.pth`` encoders; the architecture is inferred from the tensor shapes
  (`original.infer_config`). A ``.pth``/``.bin`` holding our own key names loads the same way.

Encoder-only checkpoints initialise the encoder for fine-tuning; the decoder is freshly initialised and
`num_classes` is required. Loading never executes pickled code: safetensors, or
``torch.load(weights_only=True)``, and a file that needs more is refused.

`save` writes a native directory or an HF transformers directory that
``SegformerForSemanticSegmentation.from_pretrained`` loads. The key mappings are the pure
state_dict -> state_dict functions of `segformer.convert`. transformers itself is never imported.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..config import ModelConfig
from ..convert.hf import HF, config_from_hf, config_to_hf, hf_to_native, native_to_hf
from ..convert.keymap import KeyMap
from ..convert.original import ORIGINAL, infer_config, is_encoder_only
from ..devices import resolve_device
from ..errors import SegformerError
from ..fileio import staged_output
from ..models import build_model
from ..pretrained import is_pretrained_file, is_tag, pretrained_path, read_pretrained
from .hub import is_hub_id, snapshot
from .native import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    is_model_dir,
    load_model,
    load_state_dict_strict,
    plain_state_dict,
    save_model,
    unwrap,
    write_safetensors,
)

FORMATS = ("native", "hf")
HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HF_PROCESSOR_FILE = "preprocessor_config.json"
# The names a model folder of either format has: a file of the user's at one of them is never replaced.
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, HF_PROCESSOR_FILE)


# -- reading files safely --


def torch_load_safe(path: str | Path) -> Any:
    """`torch.load` that only accepts tensors and plain containers (never runs pickled code)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        detail_text = detail.group(1).strip() if detail else str(err).splitlines()[0]
        if "Unsupported operand" in detail_text:  # not a pickle stream at all
            raise SegformerError(f"{path}: cannot read as a PyTorch checkpoint ({detail_text})") from None
        culprit = re.search(r"Unsupported global: GLOBAL (\S+)", detail_text)
        what = (
            f"the object {culprit.group(1)}"
            if culprit
            else f"objects other than tensors and plain containers ({detail_text})"
        )
        raise SegformerError(
            f"{path}: refused: unpickling it needs {what}, i.e. arbitrary code execution, which segformer "
            "never allows (torch.load weights_only=True); re-save its state_dict from code you trust"
        ) from None
    except FileNotFoundError:
        raise SegformerError(f"{path}: no such file") from None
    except Exception as err:  # torch.load raises many types for files that are not checkpoints
        raise SegformerError(
            f"{path}: cannot read as a PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from None


def _safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise SegformerError(f"{path}: cannot read weights ({err})") from None


def _state_dict_of(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict and mmseg meta inside a loaded ``.pth`` (plain, or wrapped in state_dict/model)."""
    meta: dict[str, Any] = {}
    if isinstance(obj, dict):
        if isinstance(obj.get("meta"), dict):
            meta = obj["meta"]
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise SegformerError(
            f"{path}: no state dict found (expected a dict of tensors or {{'state_dict': ...}})"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise SegformerError(f"{path}: {bad[0]!r} is not a tensor; not a state dict")
    state = dict(obj)
    # Checkpoints saved from a DDP / torch.compile wrapper carry these prefixes on every key.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state, meta


def _hf_weights(directory: Path) -> dict[str, Tensor]:
    """All tensors of an HF model directory (safetensors preferred; sharded checkpoints via their index)."""
    for name in HF_WEIGHTS:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return (
                _safetensors(path)
                if name.endswith(".safetensors")
                else _state_dict_of(torch_load_safe(path), path)[0]
            )
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise SegformerError(f"{path}: invalid shard index ({err})") from None
        state: dict[str, Tensor] = {}
        for shard in shards:
            file = directory / shard
            part = (
                _safetensors(file)
                if shard.endswith(".safetensors")
                else _state_dict_of(torch_load_safe(file), file)[0]
            )
            state.update(part)
        return state
    raise SegformerError(f"{directory}: no PyTorch weights (expected one of {', '.join(HF_WEIGHTS)})")


def _foreign_layout(state: Mapping[str, Tensor]) -> KeyMap | None:
    """The foreign layout most keys are spelled in (None when they are all ours)."""
    counts = [(sum(m.recognises(k) for k in state), m) for m in (HF, ORIGINAL)]
    best = max(counts, key=lambda c: c[0])
    return best[1] if best[0] else None


# -- naming a model --


def resolve_model(model: str | Path) -> Path:
    """The local file or folder a model argument names: an existing path first, then a pretrained
    tag (its weights file), then a Hugging Face Hub id (``org/name[@revision]``: its snapshot in the
    cache, downloaded unless offline). Every command reaches its model through here (`load`).

    Strict: an id that does not resolve is a `SegformerError`, never another model.
    """
    if is_tag(model):
        return pretrained_path(str(model))
    if is_hub_id(model):
        return snapshot(str(model))
    return Path(model)


# -- building the model --


def _build(
    config: ModelConfig,
    state: dict[str, Tensor],
    source: str,
    layout: KeyMap | None,
    num_classes: int | None,
    overrides: Mapping[str, Any],
) -> nn.Module:
    """Build `config` (with `num_classes` / `overrides`) and load `state` strictly into it.

    An encoder-only `state` gets a freshly initialised decoder; a different `num_classes` from the
    checkpoint's gets a freshly initialised classifier (the rest of the decoder is kept).
    """
    fresh: tuple[str, ...] = ()
    if is_encoder_only(state):
        if num_classes is None:
            raise SegformerError(
                f"{source}: encoder-only checkpoint (no decoder weights): pass num_classes to build a "
                "freshly initialised decoder"
            )
        fresh = ("decoder.",)
    elif num_classes is not None and num_classes != config.num_classes:
        fresh = ("decoder.classifier.",)
    if fresh:
        config = config.replace(num_classes=num_classes, class_names=())
    if overrides:
        config = config.replace(**overrides)
    model = build_model(config)
    own = model.state_dict()
    state = {**state, **{k: v for k, v in own.items() if k.startswith(fresh)}} if fresh else dict(state)
    # Checkpoints older than PyTorch 0.4.1 have no BatchNorm step counter; it only matters for
    # momentum=None, and 0 is what a fresh BatchNorm holds.
    for key, value in own.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in own if k not in state]
    if missing and layout is not None:
        theirs = layout.their_names(missing[0])
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise SegformerError(
            f"{source}: missing key {' / '.join(theirs) or missing[0]!r} ({missing[0]} here){more}"
        )
    load_state_dict_strict(model, state, source)
    return model


def load(
    path: str | Path,
    num_classes: int | None = None,
    *,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> nn.Module:
    """Load a model from a pretrained tag (``"microsegformer-celebamask"``: weights shipped inside the
    package, `segformer.pretrained`), a native directory, an HF transformers directory, an
    NVlabs/mmseg ``.pth``, or a Hub id ``org/name[@revision]`` holding one of the directories
    (`resolve_model`: local paths win over tags, tags over ids).

    Returns the model in eval mode with ``model.config`` (class names from ``id2label`` or the mmseg
    ``CLASSES`` where present) and ``model.meta``. `num_classes` is required for encoder-only checkpoints
    (ImageNet MiT weights: the decoder is freshly initialised); for a segmentation checkpoint with a
    different number of classes it re-initialises the classifier. `overrides` set config fields the
    weights do not determine (``drop_path_rate=0.1``, ``num_heads=(...)`` for a custom ``.pth``).

    >>> model = segformer.load("segformer-b0-finetuned-ade-512-512/")   # HF directory
    >>> model = segformer.load("mit_b2.pth", num_classes=19)            # ImageNet encoder
    >>> model = segformer.load("microsegformer-celebamask")            # shipped face parser
    >>> model = segformer.load("nvidia/segformer-b0-finetuned-ade-512-512")  # Hub id
    """
    device = resolve_device(device)
    name = str(path)
    path = resolve_model(path)
    source = name if is_hub_id(name) else str(path)  # errors name the id, not the cache folder
    if is_pretrained_file(path):
        config, meta, state = read_pretrained(path)
        layout = None
    elif path.is_dir():
        if is_model_dir(path):
            model = load_model(path)
            if num_classes is None and not overrides:
                return model.to(device).eval()
            state, config, meta, layout = plain_state_dict(model), model.config, model.meta, None
        elif (path / CONFIG_FILE).is_file():
            cfg_path = path / CONFIG_FILE
            try:
                doc = json.loads(cfg_path.read_text())
            except (OSError, ValueError) as err:
                raise SegformerError(f"{cfg_path}: cannot read JSON ({err})") from None
            if not isinstance(doc, dict):
                raise SegformerError(f"{cfg_path}: expected a JSON object")
            config = config_from_hf(doc, str(cfg_path))
            state = hf_to_native(_hf_weights(path), source)
            if is_encoder_only(state):
                config = config.replace(class_names=())  # id2label of an encoder checkpoint is ImageNet's
            layout, meta = HF, {"source": source, "source_format": "hf"}
        else:
            runs = [path / name for name in ("best", "last") if is_model_dir(path / name)]
            if runs:  # a training run folder holds its model directories
                raise SegformerError(
                    f"{path}: a training run folder, not a model directory; did you mean {runs[0]}?"
                )
            raise SegformerError(
                f"{path}: neither a segformer model directory nor an HF directory (no config.json)"
            )
    elif path.is_file():
        if path.suffix == ".safetensors":
            raw, mmseg_meta = _safetensors(path), {}
        else:
            raw, mmseg_meta = _state_dict_of(torch_load_safe(path), path)
        layout = _foreign_layout(raw)
        state = layout.to_ours(raw, source) if layout is not None else raw
        fields = {k: overrides.pop(k) for k in ("num_heads", "strides") if k in overrides}
        config, _ = infer_config(state, num_classes, source, **fields)
        classes = mmseg_meta.get("CLASSES")
        if (
            not is_encoder_only(state)
            and isinstance(classes, (list, tuple))
            and len(classes) == config.num_classes
        ):
            config = config.replace(class_names=tuple(str(c) for c in classes))
        meta = {"source": source, "source_format": {HF: "hf", ORIGINAL: "original", None: "native"}[layout]}
    else:
        raise SegformerError(f"{path}: no such file or directory")
    model = _build(config, state, source, layout, num_classes, overrides)
    model.meta = meta
    return model.to(device).eval()


def save(
    model: nn.Module,
    directory: str | Path,
    format: str = "native",
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a native model directory or, with ``format="hf"``, an HF transformers directory.

    The HF directory (``config.json`` + ``model.safetensors``, legacy key names, and the
    ``preprocessor_config.json`` of the model's settings) loads with
    ``SegformerForSemanticSegmentation.from_pretrained`` and ``pipeline("image-segmentation")``; class
    names go to ``id2label``. Only SegFormer
    models (MiT with Mix-FFN + All-MLP decoder) have an HF equivalent; others raise `SegformerError`.

    `directory` is written under the output policy (`segformer.fileio.staged_output`, command "save"):
    a model an earlier `save` wrote there (its manifest says so) is replaced without asking, in either
    format; a file of the user's named like one of ours (config.json ...) is refused in one line, even
    with `overwrite`; any other non-empty `directory` is refused unless `overwrite`, and then the model
    is written next to the files there, which are kept.
    """
    if format not in FORMATS:
        raise SegformerError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    with staged_output(
        directory, "save", (), overwrite, replace=True, names=MODEL_FILES, what="a model"
    ) as tmp:
        _write_model(model, tmp, format, meta)
    return Path(directory)


def _write_model(model: nn.Module, directory: Path, format: str, meta: dict[str, Any] | None) -> None:
    """`model` written into the empty (staging) folder `directory` in `format`."""
    if format == "native":
        save_model(model, directory, meta, overwrite=True)
        return
    model = unwrap(model)
    config: ModelConfig = model.config
    doc = config_to_hf(config)
    state = plain_state_dict(model)
    if not config.qkv_bias:
        # transformers' projections always have a bias; zeros compute the same function.
        for key, value in list(state.items()):
            if key.endswith((".attn.q.weight", ".attn.kv.weight")):
                state[key.removesuffix("weight") + "bias"] = value.new_zeros(value.shape[0])
    weights = native_to_hf(state)
    write_safetensors(directory / WEIGHTS_FILE, weights)
    (directory / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    processor = hf_image_processor({**getattr(model, "meta", {}), **(meta or {})})
    (directory / HF_PROCESSOR_FILE).write_text(json.dumps(processor, indent=2) + "\n")


def hf_image_processor(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``preprocessor_config.json`` of an HF directory: transformers' SegformerImageProcessor set
    to the model's working size and normalisation (`InferenceSettings`), which
    ``pipeline("image-segmentation")`` and ``AutoImageProcessor`` need to use the directory."""
    from ..inference.settings import InferenceSettings  # above this package: imported when used

    settings = InferenceSettings.from_meta(meta)
    h, w = settings.image_size
    return {
        "image_processor_type": "SegformerImageProcessor",
        "do_resize": True,
        "size": {"height": h, "width": w},
        "resample": 2,  # bilinear, as `Predictor` resizes
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(settings.mean),
        "image_std": list(settings.std),
        "do_reduce_labels": False,
    }


def convert(
    src: str | Path,
    out: str | Path,
    to: str = "native",
    num_classes: int | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> nn.Module:
    """`load` `src` and `save` it to `out` in format `to`; returns the model.

    `out` is written under the output policy as `save` writes it, with command "convert" and `src` as
    the input (never written, nor a folder inside it); the checks come before the (possibly long) load.
    """
    if to not in FORMATS:
        raise SegformerError(f"unknown format {to!r}; expected one of {', '.join(FORMATS)}")
    with staged_output(
        out, "convert", [src], overwrite, replace=True, names=MODEL_FILES, what="a model"
    ) as tmp:
        model = load(src, num_classes, **overrides)
        _write_model(model, tmp, to, None)
    return model


__all__ = ["FORMATS", "convert", "load", "resolve_model", "save", "torch_load_safe"]
