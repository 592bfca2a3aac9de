"""The recipe of a training run: `ModelConfig`, `DataConfig`, `TrainConfig` and `RunConfig` (one YAML
recipe), and loading them (`load_recipe`, `RunConfig.from_dict`). No torch in here.

`ModelConfig` describes every model the package builds: the MiT/SegFormer variants, MicroSegFormer
and the architecture-search variants of the seed are all values of this one dataclass.

Every config checks itself when it is built: each field's type (YAML and ``--set`` values are coerced,
wrong types are refused by name) and its allowed values (`FIELD_RULES`). A recipe with a typo therefore
fails with one line naming the key and what it accepts, before any data is read or any model is built.

Renamed keys (`RENAMED`) are still read, from recipes, ``--set`` and the ``config.yaml`` of runs
written before the rename; errors then name the key as it was written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import SegformerError
from .fields import RENAMED, as_written, from_plain, old_names, replace_fields, to_plain
from .overrides import load_yaml
from .rules import FIELD_RULES
from .validate import check_fields, provided

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

    section: ClassVar[str] = "model"

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
        check_fields(self, self.section, FIELD_RULES[self.section])
        self.validate()

    @property
    def num_stages(self) -> int:
        return len(self.embed_dims)

    def validate(self) -> None:
        """Raise `SegformerError` when fields contradict each other or name nothing registered."""
        decoders = provided("model.decoders")(self.arch)  # `arch` is registered: FIELD_RULES checked it
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
        if not any(self.depths):
            raise SegformerError(
                f"model.depths: {list(self.depths)} leaves every stage without a transformer block "
                "(an empty encoder); give some stage a depth of at least 1"
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


@old_names("data")
@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is fed to the model."""

    section: ClassVar[str] = "data"

    root: str | None = None
    """Dataset root; None with `synthetic` > 0 generates synthetic faces into the run folder."""
    kind: str = "auto"
    """Layout: ``auto`` (detect) or a name in `segformer.data.layouts.LAYOUTS` (``folder`` = CE7454,
    ``ade20k``, ``cityscapes``)."""
    label_set: str = "celebamask"
    """Class names, palette and left/right pairs (``celebamask``, ``ade20k``, ``cityscapes``); a layout
    with its own label set (ADE20K, Cityscapes) must be given that one."""
    image_size: int = 512
    """Training (and default evaluation) resolution, square (``img_size`` in recipes and runs written
    before the rename: still read)."""
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
    """Validation inference: ``resize`` (image resized to image_size, logits resized back to the
    mask) or ``slide`` (full resolution, image_size windows) for images larger than the training size."""
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
        check_fields(self, self.section, FIELD_RULES[self.section])


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, loss and run control (defaults = the CE7454 seed recipe)."""

    section: ClassVar[str] = "train"

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
        check_fields(self, self.section, FIELD_RULES[self.section])
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
        registered_model(self.model_name)  # a registered name

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
        return cls(
            model=registered_model(name).replace(**model),
            data=from_plain(DataConfig, sections["data"]),
            train=from_plain(TrainConfig, sections["train"]),
            model_name=name,
        )

    def model_overrides(self) -> dict[str, Any]:
        """The fields of `model` that differ from the registered `model_name`, as plain values."""
        base, mine = to_plain(registered_model(self.model_name)), to_plain(self.model)
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
        written: dict[str, str] = {}  # new key -> the old spelling it was given as
        for key, value in changes.items():
            section, dot, name = key.partition(".")
            if not dot or section not in doc:
                raise SegformerError(f"override {key!r}: expected model.X, data.X or train.X")
            new = RENAMED.get(section, {}).get(name, name)
            if new != name:
                written[f"{section}.{new}"] = key
            doc[section][new] = value
        with as_written(written):
            return RunConfig.from_dict(doc)


# -- loading ---------------------------------------------------------------------------------------------


def registered_model(name: str) -> ModelConfig:
    """The config registered as `name` (the registry lives with the models: `segformer.models.registry`)."""
    try:
        return provided("model.name")(name)
    except SegformerError as err:
        raise SegformerError(f"model.name: {err}") from None


RECIPE_DIR = Path(__file__).parent.parent / "configs"


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
    return read_recipe(path)


def read_recipe(path: str | Path) -> RunConfig:
    """The recipe in the YAML file `path` (a run's ``config.yaml`` too); errors name the file."""
    doc = load_yaml(path)
    try:
        return RunConfig.from_dict(doc)
    except SegformerError as err:
        raise SegformerError(f"{path}: {err}") from None


__all__ = [
    "RECIPE_DIR",
    "RENAMED",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "from_plain",
    "list_recipes",
    "load_recipe",
    "read_recipe",
    "registered_model",
    "replace_fields",
    "to_plain",
]
