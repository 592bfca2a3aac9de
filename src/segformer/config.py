"""Configuration dataclasses and dotted `key=value` overrides. No torch in here.

`ModelConfig` describes every model the package builds: the MiT/SegFormer variants, MicroSegFormer
and the architecture-search variants of the seed are all values of this one dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import SegformerError

_STAGE_FIELDS = (
    "embed_dims",
    "depths",
    "num_heads",
    "sr_ratios",
    "mlp_ratios",
    "patch_sizes",
    "strides",
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a segmentation model.

    Per-stage fields are tuples with one entry per encoder stage (four for every shipped variant).
    """

    arch: str = "segformer"
    """Model family: ``"segformer"`` (MiT encoder + decoder) or ``"unet"``."""
    num_classes: int = 19
    """Number of output classes K (logits are ``(B, K, H, W)``)."""
    in_channels: int = 3
    """Channels of the input image."""

    # -- encoder (MiT) --
    embed_dims: tuple[int, ...] = (32, 64, 160, 256)
    """Channels C_i of each stage."""
    depths: tuple[int, ...] = (2, 2, 2, 2)
    """Transformer blocks per stage."""
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    """Attention heads per stage; must divide the stage's channels."""
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    """Sequence-reduction ratio per stage: keys/values come from a stride-sr conv (N -> N / sr^2)."""
    mlp_ratios: tuple[float, ...] = (4, 4, 4, 4)
    """Hidden width of the feed-forward network as a multiple of C_i."""
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    """Kernel of each overlapping patch embedding (padding = kernel // 2)."""
    strides: tuple[int, ...] = (4, 2, 2, 2)
    """Stride of each overlapping patch embedding."""
    mix_ffn: bool = True
    """Mix-FFN (3x3 depthwise conv between fc1 and GELU); False gives a plain MLP."""
    qkv_bias: bool = True
    """Bias in the query and key/value projections."""
    drop_rate: float = 0.0
    """Dropout after attention output and inside the FFN."""
    attn_drop_rate: float = 0.0
    """Dropout on attention probabilities."""
    drop_path_rate: float = 0.1
    """Stochastic depth: rises linearly over all blocks from 0 to this value."""
    norm_eps: float = 1e-6
    """LayerNorm eps of the block norms and stage norms (1e-6 in the original, 1e-5 in HF)."""
    embed_norm_eps: float = 1e-5
    """LayerNorm eps of the patch-embedding and sequence-reduction norms."""

    # -- decoder --
    decoder: str = "mlp"
    """``"mlp"``: SegFormer All-MLP head (concat [c4..c1], 1x1 conv + BN + ReLU); ``"micro"``:
    MicroSegFormer head (concat [f1..f4], Linear-GELU-Linear fusion)."""
    decoder_dim: int = 256
    """Width D of the decoder."""
    decoder_dropout: float = 0.1
    """Dropout before the classifier."""

    # -- U-Net baseline --
    unet_width: int = 64
    """Channels of the first U-Net level; doubled at each of the four downsamplings."""

    # -- metadata (does not change the architecture) --
    class_names: tuple[str, ...] = ()
    """Optional class names, index = class id (kept through save/load and conversion)."""

    def __post_init__(self) -> None:
        for name in _STAGE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if not isinstance(self.class_names, tuple):
            object.__setattr__(self, "class_names", tuple(self.class_names))
        self.validate()

    @property
    def num_stages(self) -> int:
        return len(self.embed_dims)

    def validate(self) -> None:
        """Raise `SegformerError` when fields contradict each other."""
        if self.arch not in ("segformer", "unet"):
            raise SegformerError(f"model config: unknown arch {self.arch!r} (expected 'segformer' or 'unet')")
        if self.num_classes < 1 or self.in_channels < 1:
            raise SegformerError("model config: num_classes and in_channels must be positive")
        lengths = {name: len(getattr(self, name)) for name in _STAGE_FIELDS}
        if len(set(lengths.values())) != 1 or self.num_stages == 0:
            raise SegformerError(
                f"model config: per-stage fields must have the same non-zero length, got {lengths}"
            )
        for stage, (dim, heads) in enumerate(zip(self.embed_dims, self.num_heads, strict=True)):
            if heads < 1 or dim % heads:
                raise SegformerError(
                    f"model config: stage {stage + 1} has {dim} channels, not divisible by {heads} heads"
                )
        if any(d < 0 for d in self.depths) or any(s < 1 for s in self.sr_ratios + self.strides):
            raise SegformerError("model config: depths must be >= 0 and sr_ratios/strides >= 1")
        if self.decoder not in ("mlp", "micro"):
            raise SegformerError(
                f"model config: unknown decoder {self.decoder!r} (expected 'mlp' or 'micro')"
            )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise SegformerError(
                f"model config: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate", "decoder_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SegformerError(f"model config: {name} must lie in [0, 1)")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` applied; unknown field names raise `SegformerError`."""
        return replace_fields(self, changes)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        return from_plain(cls, data)


def to_plain(config: Any) -> dict[str, Any]:
    """A dataclass as a JSON/YAML-friendly dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_plain(cls: type, data: Mapping[str, Any]) -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys by name."""
    return replace_fields(cls(), data)


def replace_fields(config: Any, changes: Mapping[str, Any]) -> Any:
    """`dataclasses.replace` with unknown keys reported by name and values coerced to field types."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise SegformerError(
            f"{type(config).__name__}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(type(config))
    coerced = {name: _coerce(name, value, hints[name]) for name, value in changes.items()}
    return dataclasses.replace(config, **coerced)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Make YAML/CLI values fit the annotated type (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise TypeError(f"expected a list, got {value!r}")
            item = args[0] if args else Any
            return tuple(_coerce(name, v, item) for v in value)
        if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if hint is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if hint in (int, float, str, bool) and not isinstance(value, hint):
            raise TypeError(f"expected {hint.__name__}, got {value!r}")
        if hint is int and isinstance(value, bool):
            raise TypeError(f"expected int, got {value!r}")
    except TypeError as err:
        raise SegformerError(f"config field {name}: {err}") from None
    return value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML (``depths=[1,1,1,1]``, ``lr=1e-3``, ``amp=true``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SegformerError(f"override {item!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise SegformerError(f"override {item!r}: value is not valid YAML ({err})") from None
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SegformerError(f"{path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise SegformerError(f"{path}: invalid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SegformerError(f"{path}: expected a mapping at the top level")
    return data


__all__ = [
    "ModelConfig",
    "from_plain",
    "load_yaml",
    "parse_overrides",
    "replace_fields",
    "to_plain",
]
