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


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is fed to the model."""

    root: str | None = None
    """Dataset root; None with `synthetic` > 0 generates synthetic faces into the run folder."""
    kind: str = "auto"
    """Layout: ``auto`` (detect), ``folder`` (CE7454), ``ade20k`` or ``cityscapes``."""
    label_set: str = "celebamask"
    """Class names, palette and left/right pairs (``celebamask``, ``ade20k``, ``cityscapes``)."""
    img_size: int = 512
    """Training (and default evaluation) resolution, square."""
    augment: str = "both"
    """Augmentation preset: ``none``, ``geometric``, ``photometric`` or ``both``."""
    val_fraction: float = 0.1
    """Hold-out fraction of train when the dataset has no val split."""
    split_seed: int = 0
    """Seed of the hold-out split (the same stems for the same seed)."""
    workers: int = 2
    """DataLoader worker processes (0 = load in the training process)."""
    cache: bool = True
    """Keep decoded images in memory after the first epoch when they fit (see `cache_max_gb`)."""
    cache_max_gb: float = 4.0
    """Upper bound on the memory the image cache may use."""
    synthetic: int = 0
    """When `root` is None: number of synthetic faces to generate (train + val)."""
    eval_mode: str = "resize"
    """Validation inference: ``resize`` (image resized to img_size, logits resized back to the
    mask) or ``slide`` (full resolution, img_size windows) for images larger than the training size."""
    augment_device: str = "auto"
    """Where training images are augmented: ``cpu`` (OpenCV in the DataLoader workers), ``device``
    (the whole batch at once on the training device) or ``auto`` (``device`` on a GPU, else ``cpu``)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, loss and run control (defaults = the CE7454 seed recipe)."""

    epochs: int = 150
    batch_size: int = 32
    """Images per optimizer step and process (before gradient accumulation)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the batch is split into this many pieces."""
    optimizer: str = "adamw"
    """``adamw`` (no weight decay on norms and biases) or ``sgd`` (with `momentum`)."""
    lr: float = 1.5e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    head_lr_mult: float = 1.0
    """Learning-rate multiplier of the decoder (10 in the SegFormer paper recipe)."""
    betas: tuple[float, ...] = (0.9, 0.999)
    schedule: str = "cosine"
    """``cosine``, ``constant``, ``step`` or ``poly``; per optimizer step."""
    warmup_epochs: float = 5.0
    warmup_start: float = 1e-3
    """Warmup starts at this fraction of the learning rate."""
    min_lr_ratio: float = 0.0
    step_milestones: tuple[float, ...] = (0.6, 0.85)
    """Fractions of training at which the ``step`` schedule multiplies the lr by `step_gamma`."""
    step_gamma: float = 0.1
    poly_power: float = 1.0
    loss: str = "ce+dice"
    """``ce``, ``dice``, ``ce+dice`` or ``focal``."""
    dice_weight: float = 0.5
    dice_classes: str = "all"
    """Dice averaged over ``all`` classes per image (the seed) or the ones ``present`` in its labels."""
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    """Max global gradient norm (0 = off)."""
    amp: str = "none"
    """Mixed precision: ``none``, ``bf16`` (CPU or GPU) or ``fp16`` (GPU, with loss scaling)."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights (0 = off; e.g. 0.999)."""
    channels_last: bool = False
    compile: bool = False
    """Wrap the model in torch.compile."""
    early_stop: int = 30
    """Stop after this many evaluations without a better validation score (0 = never)."""
    eval_every: int = 1
    """Evaluate every this many epochs (and always at the end)."""
    eval_tta: str = "none"
    monitor: str = "ce7454_f"
    """Validation score that selects the best checkpoint and drives early stopping."""
    seed: int = 0
    deterministic: bool = False
    """Deterministic algorithms (CPU runs then resume to bit-identical weights)."""
    max_minutes: float | None = None
    """Wall-clock budget: stop cleanly (evaluate + save) when it is spent."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu`` or ``cuda``."""
    tensorboard: bool = False
    log_every: int = 10
    """Steps between progress-bar updates of the running loss."""


@dataclass(frozen=True)
class RunConfig:
    """A training run: model name + overrides, data and training settings (one YAML recipe)."""

    model: dict[str, Any]
    data: DataConfig
    train: TrainConfig

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RunConfig:
        unknown = sorted(set(doc) - {"model", "data", "train"})
        if unknown:
            raise SegformerError(
                f"recipe: unknown section(s) {', '.join(unknown)} (expected model, data, train)"
            )
        model = dict(doc.get("model") or {})
        model.setdefault("name", "microsegformer")
        return cls(
            model=model,
            data=from_plain(DataConfig, doc.get("data") or {}),
            train=from_plain(TrainConfig, doc.get("train") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "data": to_plain(self.data), "train": to_plain(self.train)}

    def override(self, changes: Mapping[str, Any]) -> RunConfig:
        """Apply dotted overrides such as ``{"train.lr": 1e-3, "model.depths": [1, 1, 1, 1]}``."""
        doc = self.to_dict()
        for key, value in changes.items():
            section, dot, name = key.partition(".")
            if not dot or section not in doc:
                raise SegformerError(f"override {key!r}: expected model.X, data.X or train.X")
            doc[section][name] = value
        return RunConfig.from_dict(doc)


RECIPE_DIR = Path(__file__).parent / "configs"


def list_recipes() -> list[str]:
    """Names of the recipes shipped inside the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> RunConfig:
    """A packaged recipe by name, or a YAML file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        packaged = RECIPE_DIR / f"{name_or_path}.yaml"
        if not packaged.is_file():
            raise SegformerError(
                f"recipe {str(name_or_path)!r} is neither a file nor a packaged recipe "
                f"({', '.join(list_recipes())})"
            )
        path = packaged
    return RunConfig.from_dict(load_yaml(path))


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
        if hint is float and isinstance(value, str):
            # YAML 1.1 reads "3e-3" (no dot) as a string; accept what Python accepts as a float.
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"expected float, got {value!r}") from None
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
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "from_plain",
    "list_recipes",
    "load_recipe",
    "load_yaml",
    "parse_overrides",
    "replace_fields",
    "to_plain",
]
