"""Configuration dataclasses, the model registry, and dotted `key=value` overrides. No torch in here.

`ModelConfig` describes every model the package builds: the MiT/SegFormer variants, MicroSegFormer
and the architecture-search variants of the seed are all values of this one dataclass.

Every config checks itself when it is built: each field's type (YAML and ``--set`` values are coerced,
wrong types are refused by name) and its allowed values (`FIELD_RULES`). A recipe with a typo therefore
fails with one line naming the key and what it accepts, before any data is read or any model is built.

The model registry lives here, below the models, so that a recipe's ``model.name``, ``arch`` and
``decoder`` are checked against what is registered without importing torch: the model classes register
themselves (`register_arch`, `register_model`) when `segformer.models` is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .data.labels import get_label_set
from .data.layouts import LAYOUTS
from .data.transforms import PRESETS
from .errors import SegformerError
from .metrics import SCALAR_SCORES

T = TypeVar("T")

# Choices of the train and data settings. The engine dispatches on these names and imports them from
# here, so that a recipe is checked against the same list the code runs.
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant", "step", "poly")
LOSSES = ("ce", "dice", "ce+dice", "ce+dice+boundary", "focal")
DICE_CLASSES = ("all", "present")
AMP_MODES = ("none", "auto", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
TTA_MODES = ("none", "flip", "scales", "flip+scales")
EVAL_MODES = ("resize", "slide")
POSTPROCESS_MODES = ("none", "small-regions")
AUGMENT_DEVICES = ("auto", "cpu", "device")
BAD_LABELS = ("error", "ignore")
CLASS_WEIGHTS = ("none", "sqrt_inv_freq")

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
    """Model family, one of `list_archs()`: ``"segformer"`` (MiT encoder + decoder), ``"unet"``."""
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
    """One of the decoders the arch registers (`segformer.models.decoder.DECODERS`). ``"mlp"``: SegFormer
    All-MLP head (concat [c4..c1], 1x1 conv + BN + ReLU); ``"micro"``: MicroSegFormer head (concat
    [f1..f4], Linear-GELU-Linear fusion)."""
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
        _check_fields(self)
        self.validate()

    @property
    def num_stages(self) -> int:
        return len(self.embed_dims)

    def validate(self) -> None:
        """Raise `SegformerError` when fields contradict each other or name nothing registered."""
        decoders = _ARCHS[self.arch][1]  # `arch` is registered: FIELD_RULES checked it
        if decoders and self.decoder not in decoders:
            raise SegformerError(
                f"model.decoder: unknown decoder {self.decoder!r} for arch {self.arch!r}; "
                f"registered: {', '.join(decoders)}"
            )
        lengths = {name: len(getattr(self, name)) for name in _STAGE_FIELDS}
        if len(set(lengths.values())) != 1 or self.num_stages == 0:
            raise SegformerError(
                f"model config: per-stage fields must have the same non-zero length, got {lengths}"
            )
        for stage, (dim, heads) in enumerate(zip(self.embed_dims, self.num_heads, strict=True)):
            if dim % heads:
                raise SegformerError(
                    f"model.num_heads: stage {stage + 1} has {dim} channels, not divisible by {heads} heads"
                )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise SegformerError(
                f"model.class_names: {len(self.class_names)} class names for {self.num_classes} classes"
            )

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
    """Layout: ``auto`` (detect) or a name in `segformer.data.layouts.LAYOUTS` (``folder`` = CE7454,
    ``ade20k``, ``cityscapes``)."""
    label_set: str = "celebamask"
    """Class names, palette and left/right pairs (``celebamask``, ``ade20k``, ``cityscapes``); a layout
    with its own label set (ADE20K, Cityscapes) must be given that one."""
    img_size: int = 512
    """Training (and default evaluation) resolution, square."""
    augment: str = "both"
    """Augmentation preset: ``none``, ``geometric``, ``photometric`` or ``both``."""
    val_fraction: float = 0.1
    """Hold-out fraction of train when the dataset has no val split."""
    split_seed: int = 0
    """Seed of the hold-out split (the same stems for the same seed)."""
    workers: int | None = None
    """DataLoader worker processes (0 = load in the training process); None (``auto`` on the command
    line or in YAML): as many as the cores left over by the compute threads allow, up to 4, on a CPU
    (none on 2 cores, where a worker preempts the compute threads), up to 4 feeding a GPU
    (`segformer.runtime.auto_workers`)."""
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
    bad_labels: str = "error"
    """Mask values outside the label set: ``error`` (stop and name the file, as `segformer data check`
    does) or ``ignore`` (train and score as if they were the ignore index 255)."""
    fix_mirrored: bool = False
    """Swap the left/right classes back in masks whose left/right pairs are all on the wrong side
    (`segformer.data.check.is_mirrored`, what `segformer data check` reports), when loading."""
    repeat_factor: float = 0.0
    """Repeat-factor sampling (LVIS) with threshold t (0 = off): class c, in a fraction f(c) of the
    training masks, gets r(c) = max(1, sqrt(t / f(c))); an image is drawn max r(c) over its classes
    times per epoch (the fraction by seeded stochastic rounding), so an epoch grows."""

    def __post_init__(self) -> None:
        if self.workers == "auto":
            object.__setattr__(self, "workers", None)
        _check_fields(self)


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
    """``ce``, ``dice``, ``ce+dice``, ``ce+dice+boundary`` (the CE of pixels within `boundary_width`
    of a label boundary weighted `boundary_weight` times) or ``focal``."""
    dice_weight: float = 0.5
    boundary_weight: float = 3.0
    """Weight of the cross entropy of boundary pixels in ``ce+dice+boundary`` (others weigh 1)."""
    boundary_width: int = 2
    """Pixels within this distance (square neighbourhood) of another valid label are boundary pixels."""
    dice_classes: str = "all"
    """Dice averaged over ``all`` classes per image (the seed) or the ones ``present`` in its labels."""
    label_smoothing: float = 0.0
    class_weight: str = "none"
    """Per-class weights of the cross entropy: ``none`` or ``sqrt_inv_freq`` (1 / sqrt of the class's
    pixel frequency in the training masks, scaled to a pixel-weighted mean of 1, at most 10; a class
    never seen weighs 1). Computed once, kept in the run's ``state.pt``."""
    logit_adjust: float = 0.0
    """With class weights: the classifier's bias is lowered by ``logit_adjust * log(w[c])`` in the models
    a run validates and saves (training itself is unchanged). A cross entropy weighted by ``w`` shifts
    every logit by ``log w[c]`` at its optimum, so up-weighted classes win more pixels than they own
    (recall above precision); 1 takes that shift back out, 0.5 half of it (0 = off; no effect without
    class weights)."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 = off)."""
    amp: str = "none"
    """Mixed precision: ``none``, ``bf16`` (CPU or GPU), ``fp16`` (GPU, with loss scaling) or ``auto``
    (bf16 where the device computes it natively: CPUs with AVX512-BF16/AMX, recent GPUs; else none)."""
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
    """Test-time augmentation of the validation during training: ``none``, ``flip``, ``scales`` or
    ``flip+scales`` (each costs evaluation time the budget could train with)."""
    tta: str = "none"
    """Test-time augmentation the models a run saves predict with by default (their inference
    settings: what `segformer predict`, `eval` and `export` use unless told otherwise); training and
    its validation are unchanged."""
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

    def __post_init__(self) -> None:
        _check_fields(self)
        if len(self.betas) != 2:
            raise SegformerError(f"train.betas: expected two values (beta1, beta2), got {self.betas}")
        if self.batch_size % self.grad_accum:
            raise SegformerError(
                f"train.grad_accum: {self.grad_accum} does not divide train.batch_size {self.batch_size}"
            )
        if self.class_weight != "none" and self.loss in ("dice", "focal"):
            raise SegformerError(
                f"train.class_weight: {self.class_weight} weights the cross entropy, which "
                f"train.loss={self.loss} does not have (use ce, ce+dice or ce+dice+boundary)"
            )


@dataclass(frozen=True)
class RunConfig:
    """A training run: the model, data and training settings (one YAML recipe).

    A recipe names a registered model and overrides some of its fields (``model: {name:
    microsegformer, drop_path_rate: 0.0}``); `model` is the resulting architecture. Its ``num_classes``
    and ``class_names`` are the registered ones unless the recipe sets them: training takes them from
    the dataset's label set.
    """

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    model_name: str = "microsegformer"
    """The registered model `model` derives from (``model.name`` in a recipe)."""

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), cls):
                raise SegformerError(f"RunConfig.{name}: expected a {cls.__name__}")
        get_config(self.model_name)  # a registered name

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RunConfig:
        if not isinstance(doc, Mapping):
            raise SegformerError(f"recipe: expected a mapping with model, data, train; got {doc!r}")
        unknown = sorted(set(doc) - {"model", "data", "train"})
        if unknown:
            raise SegformerError(
                f"recipe: unknown section(s) {', '.join(map(str, unknown))} (expected model, data, train)"
            )
        sections = {name: doc.get(name) or {} for name in ("model", "data", "train")}
        for name, section in sections.items():
            if not isinstance(section, Mapping):
                raise SegformerError(f"recipe: section {name} must be a mapping of keys, got {section!r}")
        model = dict(sections["model"])
        name = model.pop("name", "microsegformer")
        if not isinstance(name, str):
            raise SegformerError(f"model.name: expected a model name, got {name!r}")
        if name not in _MODELS:
            raise SegformerError(f"model.name: unknown model {name!r}; available: {', '.join(list_models())}")
        return cls(
            model=get_config(name, **model),
            data=from_plain(DataConfig, sections["data"]),
            train=from_plain(TrainConfig, sections["train"]),
            model_name=name,
        )

    def model_overrides(self) -> dict[str, Any]:
        """The fields of `model` that differ from the registered `model_name`, as plain values."""
        base, mine = to_plain(get_config(self.model_name)), to_plain(self.model)
        return {k: v for k, v in mine.items() if v != base[k]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model_name, **self.model_overrides()},
            "data": to_plain(self.data),
            "train": to_plain(self.train),
        }

    def override(self, changes: Mapping[str, Any]) -> RunConfig:
        """Apply dotted overrides such as ``{"train.lr": 1e-3, "model.depths": [1, 1, 1, 1]}``."""
        doc = self.to_dict()
        for key, value in changes.items():
            section, dot, name = key.partition(".")
            if not dot or section not in doc:
                raise SegformerError(f"override {key!r}: expected model.X, data.X or train.X")
            doc[section][name] = value
        return RunConfig.from_dict(doc)


# -- the model registry -----------------------------------------------------------------------------

_MODELS: dict[str, tuple[ModelConfig, str]] = {}
_ARCHS: dict[str, tuple[Callable[[ModelConfig], Any], tuple[str, ...]]] = {}


def register_arch(arch: str, decoders: Iterable[str] = ()) -> Callable[[T], T]:
    """Class decorator: `ModelConfig.arch` == `arch` is built by this class. `decoders` are the
    ``ModelConfig.decoder`` kinds it builds (none: the class has no choice of decoder)."""

    def wrap(cls: T) -> T:
        _ARCHS[arch] = (cls, tuple(decoders))  # type: ignore[assignment]
        return cls

    return wrap


def arch_class(arch: str) -> Callable[[ModelConfig], Any]:
    """The module class registered for `arch`."""
    if arch not in _ARCHS:
        raise SegformerError(f"model.arch: unknown arch {arch!r}; registered: {', '.join(_ARCHS)}")
    return _ARCHS[arch][0]


def list_archs() -> list[str]:
    return list(_ARCHS)


def register_model(name: str, config: ModelConfig, description: str = "") -> None:
    """Make `config` available to `create_model(name)` and to recipes as ``model.name``."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = (config, description)


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def model_description(name: str) -> str:
    return _MODELS[name][1] if name in _MODELS else ""


def get_config(name: str, num_classes: int | None = None, **overrides: Any) -> ModelConfig:
    """The registered config of `name` with `num_classes` and field `overrides` applied."""
    if name not in _MODELS:
        raise SegformerError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    config = _MODELS[name][0]
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return config.replace(**overrides) if overrides else config


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
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, Mapping):
        raise SegformerError(f"{_SECTIONS[cls]}: expected a mapping of fields, got {data!r}")
    return replace_fields(cls(), data)


def replace_fields(config: Any, changes: Mapping[str, Any]) -> Any:
    """`dataclasses.replace` with unknown keys reported by name (values are checked on construction)."""
    names = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(map(str, set(changes) - set(names)))
    if unknown:
        section = _SECTIONS[type(config)]
        raise SegformerError(
            f"{section}: unknown field(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
            f"known: {', '.join(names)}"
        )
    return dataclasses.replace(config, **changes)


# -- checks -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OneOf:
    """The value must be one of `choices` (a callable is asked at check time: registries grow)."""

    choices: Sequence[str] | Callable[[], Iterable[str]]

    def allowed(self) -> list[str]:
        return list(self.choices() if callable(self.choices) else self.choices)

    def problem(self, value: Any) -> str | None:
        allowed = self.allowed()
        return None if value in allowed else f"unknown value {value!r}; choose from {', '.join(allowed)}"

    def bad_values(self) -> list[Any]:
        return ["no-such-choice"]


@dataclass(frozen=True)
class Bounds:
    """A finite number (or each number of a tuple) within bounds; None passes where the type allows it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"lie in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"be {'>' if self.low_open else '>='} {self.low:g}"
        return f"be {'<' if self.high_open else '<='} {self.high:g}" if self.high is not None else "be finite"

    def fits(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def problem(self, value: Any) -> str | None:
        for v in value if isinstance(value, tuple) else () if value is None else (value,):
            if not self.fits(v):
                return f"must {self.describe()}, got {v!r}"
        return None

    def bad_values(self) -> list[Any]:
        out: list[Any] = [float("nan")]
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - 1)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + 1)
        return out


@dataclass(frozen=True)
class LabelSetName:
    """A label set name or alias (`segformer.data.labels.get_label_set`)."""

    def problem(self, value: Any) -> str | None:
        try:
            get_label_set(value)
        except SegformerError as err:
            return str(err)
        return None

    def bad_values(self) -> list[Any]:
        return ["no-such-label-set"]


@dataclass(frozen=True)
class NonEmpty:
    """A string with something in it (None passes where the type allows it)."""

    def problem(self, value: Any) -> str | None:
        return "must not be empty" if value is not None and not value.strip() else None

    def bad_values(self) -> list[Any]:
        return [""]


Rule = OneOf | Bounds | LabelSetName | NonEmpty
_POSITIVE, _NONNEG, _UNIT, _FRACTION = Bounds(1), Bounds(0), Bounds(0, 1), Bounds(0, 1, high_open=True)

# Allowed values of every field that has a constraint beyond its type. Each bad value is one line
# naming the key and what it accepts; tests/test_config.py tries a bad value of every entry.
FIELD_RULES: dict[str, dict[str, Rule]] = {
    "model": {
        "arch": OneOf(list_archs),
        "num_classes": Bounds(1, 255),  # masks are 8-bit and 255 is the ignore index
        "in_channels": _POSITIVE,
        "embed_dims": _POSITIVE,
        "depths": _NONNEG,
        "num_heads": _POSITIVE,
        "sr_ratios": _POSITIVE,
        "mlp_ratios": Bounds(0, low_open=True),
        "patch_sizes": _POSITIVE,
        "strides": _POSITIVE,
        "drop_rate": _FRACTION,
        "attn_drop_rate": _FRACTION,
        "drop_path_rate": _FRACTION,
        "norm_eps": Bounds(0, low_open=True),
        "embed_norm_eps": Bounds(0, low_open=True),
        "decoder_dim": _POSITIVE,
        "decoder_dropout": _FRACTION,
        "unet_width": _POSITIVE,
    },
    "data": {
        "root": NonEmpty(),
        "kind": OneOf(lambda: ["auto", *LAYOUTS]),
        "label_set": LabelSetName(),
        "img_size": _POSITIVE,
        "augment": OneOf(PRESETS),
        "val_fraction": _FRACTION,
        "split_seed": _NONNEG,
        "workers": _NONNEG,
        "cache_max_gb": _NONNEG,
        "synthetic": _NONNEG,
        "eval_mode": OneOf(EVAL_MODES),
        "augment_device": OneOf(AUGMENT_DEVICES),
        "bad_labels": OneOf(BAD_LABELS),
        "repeat_factor": _UNIT,
    },
    "train": {
        "epochs": _POSITIVE,
        "batch_size": _POSITIVE,
        "grad_accum": _POSITIVE,
        "optimizer": OneOf(OPTIMIZERS),
        "lr": Bounds(0, low_open=True),
        "weight_decay": _NONNEG,
        "momentum": _FRACTION,
        "head_lr_mult": Bounds(0, low_open=True),
        "betas": _FRACTION,
        "schedule": OneOf(SCHEDULES),
        "warmup_epochs": _NONNEG,
        "warmup_start": Bounds(0, 1, low_open=True),
        "min_lr_ratio": _UNIT,
        "step_milestones": _UNIT,
        "step_gamma": Bounds(0, low_open=True),
        "poly_power": Bounds(0, low_open=True),
        "loss": OneOf(LOSSES),
        "dice_weight": _NONNEG,
        "boundary_weight": _NONNEG,
        "boundary_width": _POSITIVE,
        "dice_classes": OneOf(DICE_CLASSES),
        "label_smoothing": _FRACTION,
        "class_weight": OneOf(CLASS_WEIGHTS),
        "logit_adjust": _UNIT,
        "grad_clip": _NONNEG,
        "amp": OneOf(AMP_MODES),
        "ema": _FRACTION,
        "early_stop": _NONNEG,
        "eval_every": _POSITIVE,
        "eval_tta": OneOf(TTA_MODES),
        "tta": OneOf(TTA_MODES),
        "monitor": OneOf(SCALAR_SCORES),
        "seed": _NONNEG,
        "max_minutes": Bounds(0, low_open=True),
        "device": OneOf(DEVICES),
        "log_every": _POSITIVE,
    },
}
_SECTIONS: dict[type, str] = {ModelConfig: "model", DataConfig: "data", TrainConfig: "train"}


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_fields(config: Any) -> None:
    """Coerce every field of `config` to its annotated type and check it against `FIELD_RULES`."""
    section = _SECTIONS[type(config)]
    rules = FIELD_RULES[section]
    for name, hint in _field_types(type(config)).items():
        if name.startswith("_") or typing.get_origin(hint) is typing.ClassVar:
            continue
        key = f"{section}.{name}"
        value = _coerce(key, getattr(config, name), hint)
        object.__setattr__(config, name, value)
        if isinstance(value, float) or (isinstance(value, tuple) and value and isinstance(value[0], float)):
            for v in value if isinstance(value, tuple) else (value,):
                if not math.isfinite(v):
                    raise SegformerError(f"{key}: must be a finite number, got {v!r}")
        problem = rules[name].problem(value) if name in rules else None
        if problem:
            raise SegformerError(f"{key}: {problem}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Make YAML/CLI values fit the annotated type (lists -> tuples, ints -> floats); refuse the rest."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
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
        if hint is str and isinstance(value, os.PathLike):
            return os.fspath(value)
        if hint in (int, float, str, bool) and not isinstance(value, hint):
            raise TypeError(f"expected {hint.__name__}, got {value!r}")
        if hint is int and isinstance(value, bool):
            raise TypeError(f"expected int, got {value!r}")
    except TypeError as err:
        raise SegformerError(f"{name}: {err}") from None
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
    "FIELD_RULES",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "arch_class",
    "from_plain",
    "get_config",
    "list_archs",
    "list_models",
    "list_recipes",
    "load_recipe",
    "load_yaml",
    "model_description",
    "parse_overrides",
    "register_arch",
    "register_model",
    "replace_fields",
    "to_plain",
]
