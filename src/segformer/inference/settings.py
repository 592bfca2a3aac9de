"""Inference settings: what travels with a model besides its architecture and weights.

The working size, the normalisation, the evaluation mode, the label set and the test-time
augmentation decide the masks a model gives as much as its weights do (the idea of timm's pretrained
config and of HF's image-processor config). Training writes them; the model directory
(``config.json`` "meta"), the ONNX metadata and the CE7454 ``ckpt.pth`` store them as plain data
(`InferenceSettings.to_dict`); every reader (`Predictor`, `segformer eval`, attention maps, the
CE7454 ``run.py``) rebuilds them with `InferenceSettings.from_dict`, the one place that fills the
defaults and checks each value's type.

Models that carry no settings (HF directories, NVlabs ``.pth``) get the defaults, and a label set
chosen from their classes by `resolve_label_set`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import EVAL_MODES, POSTPROCESS_MODES, TTA_MODES, ModelConfig
from ..config.validate import check_choice, check_integer, check_number, check_sequence
from ..data.labels import IGNORE_INDEX, LabelSet, bit_palette, get_label_set, list_label_sets
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import SegformerError

DEFAULT_SCALES = (0.75, 1.0, 1.25, 1.5)
DEFAULT_IMAGE_SIZE = 512
DEFAULT_MIN_AREA = 0.0005

ALIASES = {"mode": "eval_mode", "img_size": "image_size"}
"""Old keyword spellings of settings fields, accepted wherever overrides are (kept until segformer 1.0)."""
BACKENDS = ("auto", "torch", "onnxruntime")
"""What runs the model: ``auto`` (ONNX Runtime on a CPU where it is installed, else PyTorch), or either."""
RUNTIME_OPTIONS = ("device", "batch_size", "backend", "faces")
"""Keyword overrides that say how a model runs, not what it computes (not `InferenceSettings` fields)."""


def parse_label_set(value: Any, what: str = "label_set") -> LabelSet | None:
    """A label set from its stored forms: a `LabelSet`, a shipped set's name (model directories
    written before the settings held the whole set) or the `label_set_dict` mapping; None stays None."""
    if value is None or isinstance(value, LabelSet):
        return value
    if isinstance(value, str):
        try:
            return get_label_set(value)
        except SegformerError as err:
            raise SegformerError(f"{what}: {err}") from None
    if not isinstance(value, Mapping):
        raise SegformerError(f"{what}: expected a label set name or mapping, got {value!r}")
    unknown = sorted(set(value) - {"name", "class_names", "palette", "flip_pairs", "ignore_index"})
    if unknown:
        raise SegformerError(f"{what}: unknown key(s) {', '.join(map(str, unknown))}")
    for key in ("name", "class_names", "palette"):
        if key not in value:
            raise SegformerError(f"{what}: missing {key!r}")
    if not isinstance(value["name"], str):
        raise SegformerError(f"{what}.name: expected a string, got {value['name']!r}")
    names = check_sequence(value["class_names"], f"{what}.class_names")
    if not all(isinstance(n, str) for n in names):
        raise SegformerError(f"{what}.class_names: expected a list of strings")
    palette = tuple(
        tuple(
            check_integer(c, f"{what}.palette[{i}]", 0, 255)
            for c in check_sequence(rgb, f"{what}.palette[{i}]", 3)
        )
        for i, rgb in enumerate(check_sequence(value["palette"], f"{what}.palette"))
    )
    pairs = tuple(
        tuple(
            check_integer(c, f"{what}.flip_pairs[{i}]")
            for c in check_sequence(pair, f"{what}.flip_pairs[{i}]", 2)
        )
        for i, pair in enumerate(check_sequence(value.get("flip_pairs", ()), f"{what}.flip_pairs"))
    )
    ignore = check_integer(value.get("ignore_index", IGNORE_INDEX), f"{what}.ignore_index", 1, 255)
    try:
        return LabelSet(value["name"], tuple(names), palette, pairs, ignore)  # type: ignore[arg-type]
    except SegformerError as err:
        raise SegformerError(f"{what}: {err}") from None


def label_set_dict(label_set: LabelSet) -> dict[str, Any]:
    """A label set written out whole as plain data (what `parse_label_set` reads back)."""
    return {
        "name": label_set.name,
        "class_names": list(label_set.class_names),
        "palette": [list(c) for c in label_set.palette],
        "flip_pairs": [list(p) for p in label_set.flip_pairs],
        "ignore_index": label_set.ignore_index,
    }


def _stored_label_set(label_set: LabelSet | None) -> str | dict[str, Any] | None:
    """A shipped label set by name, any other (or a changed copy of a shipped one) written out whole."""
    if label_set is None:
        return None
    shipped = label_set.name in list_label_sets() and get_label_set(label_set.name) == label_set
    return label_set.name if shipped else label_set_dict(label_set)


@dataclass(frozen=True)
class InferenceSettings:
    """Everything besides the weights that decides a model's masks.

    Values are checked and normalised when the object is built (``image_size=64`` becomes
    ``(64, 64)``, a label set name becomes the `LabelSet`), so a wrong type fails here, by field
    name, and never later inside the model.
    """

    image_size: tuple[int, int] = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    """Working size (height, width) the model runs at; the (square) window in ``slide`` mode."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel RGB mean of the normalisation ``(x / 255 - mean) / std``."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel RGB standard deviation of the normalisation."""
    eval_mode: str = "resize"
    """``resize``: the image is resized to the working size and the logits back; ``slide``: the
    full-resolution image is covered with overlapping working-size windows."""
    label_set: LabelSet | None = None
    """Class names, palette, left/right pairs and ignore index; None: chosen from the model's
    classes (`resolve_label_set`)."""
    tta: str = "none"
    """Test-time augmentation: ``none``, ``flip``, ``scales`` or ``flip+scales``."""
    scales: tuple[float, ...] = DEFAULT_SCALES
    """Scales of the working size that ``scales`` TTA averages over."""
    postprocess: str = "none"
    """``small-regions``: connected regions of a class smaller than `min_area` are relabelled to the
    label around them (`segformer.inference.ops.remove_small_regions`); ``none``: the argmax as is."""
    min_area: float = DEFAULT_MIN_AREA
    """The smallest region kept by ``small-regions``, as a fraction of the image's pixels."""

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, (int, float)) and not isinstance(size, bool):
            size = (size, size)
        h, w = check_sequence(size, "image_size", 2)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("image_size", (check_integer(h, "image_size", 1), check_integer(w, "image_size", 1)))
        for name in ("mean", "std"):
            values = tuple(check_number(v, name) for v in check_sequence(getattr(self, name), name, 3))
            if name == "std" and min(values) <= 0:
                raise SegformerError(f"std: expected positive values, got {list(values)}")
            set_(name, values)
        set_("eval_mode", check_choice(self.eval_mode, "eval_mode", "inference mode", EVAL_MODES))
        set_("tta", check_choice(self.tta, "tta", "TTA mode", TTA_MODES))
        scales = tuple(check_number(s, "scales") for s in check_sequence(self.scales, "scales"))
        if not scales or min(scales) <= 0:
            raise SegformerError(f"scales: expected positive numbers, got {list(scales)}")
        set_("scales", scales)
        set_("label_set", parse_label_set(self.label_set))
        set_(
            "postprocess", check_choice(self.postprocess, "postprocess", "post-processing", POSTPROCESS_MODES)
        )
        min_area = check_number(self.min_area, "min_area")
        if not 0 <= min_area < 1:
            raise SegformerError(f"min_area: expected a fraction in [0, 1), got {min_area}")
        set_("min_area", min_area)
        if self.eval_mode == "slide" and h != w:
            raise SegformerError(f"image_size: sliding windows are square; got {h}x{w}")

    @property
    def window(self) -> int | None:
        """The side of the sliding windows (``slide`` mode), None in ``resize`` mode."""
        return self.image_size[0] if self.eval_mode == "slide" else None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The size images are resized to before the model: the working size, None (kept) in
        ``slide`` mode."""
        return None if self.eval_mode == "slide" else self.image_size

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = "settings") -> InferenceSettings:
        """Settings from their plain form; missing fields take the defaults. Unknown fields and values
        of the wrong type are a `SegformerError` naming `source` (the file; None: no prefix, for
        values given as arguments) and the field."""
        prefix = f"{source}: " if source else ""
        if not isinstance(data, Mapping):
            raise SegformerError(f"{prefix}inference settings must be a mapping, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise SegformerError(
                f"{prefix}unknown inference setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except SegformerError as err:
            raise SegformerError(f"{prefix}{err}") from None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None, source: str = "model meta") -> InferenceSettings:
        """The settings among the entries of a model's ``meta``, which also holds what training
        records about the run (``epoch``, ``scores``, ``data``, ...)."""
        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise SegformerError(f"{source}: meta must be a mapping, got {meta!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in meta.items() if k in known}, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, as training has always written it (a shipped label set by name, any other
        written out whole; a square size as one number); `from_dict` reads it back."""
        h, w = self.image_size
        return {
            "image_size": h if h == w else [h, w],
            "mean": list(self.mean),
            "std": list(self.std),
            "eval_mode": self.eval_mode,
            "label_set": _stored_label_set(self.label_set),
            "tta": self.tta,
            "scales": list(self.scales),
            "postprocess": self.postprocess,
            "min_area": self.min_area,
        }

    def replace(self, source: str | None = None, **changes: Any) -> InferenceSettings:
        """A copy with `changes` applied (None values are left out: "not given"; old spellings such
        as ``mode`` are read as their field, `ALIASES`); errors name `source` when given."""
        given, _ = split_overrides(changes, runtime=())
        return InferenceSettings.from_dict({**self.__dict__, **given}, source)


def split_overrides(
    overrides: Mapping[str, Any], runtime: Sequence[str] = RUNTIME_OPTIONS, what: str = "settings"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword overrides split into `InferenceSettings` changes and `runtime` options, leaving out
    None ("not given") and reading old spellings as their field (``mode`` -> ``eval_mode``). An
    unknown name, or a field given under two spellings, is a `SegformerError` naming `what`."""
    fields = {f.name for f in dataclasses.fields(InferenceSettings)}
    changes: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        field = ALIASES.get(name, name)
        if field in fields:
            if field in changes and changes[field] != value:
                raise SegformerError(f"{what}: {field} given twice ({name}={value!r}, {changes[field]!r})")
            changes[field] = value
        elif name in runtime:
            options[name] = value
        else:
            known = sorted([*fields, *ALIASES, *runtime])
            raise SegformerError(f"{what}: unknown option {name!r}; known: {', '.join(known)}")
    return changes, options


def resolve_label_set(spec: LabelSet | str | Mapping[str, Any] | None, config: ModelConfig) -> LabelSet:
    """The label set a model predicts in.

    `spec` is anything `parse_label_set` reads. Without one (HF directories, NVlabs ``.pth``), a
    shipped label set with the model's class count is chosen by its class names (at least half must
    match), or, for a model without class names, by the count alone: 19 -> celebamask, 150 -> ade20k.
    Anything else gets a generic set: the model's class names (or ``class_i``) and the PASCAL VOC
    colour map, with no left/right pairs.
    """
    k = config.num_classes
    label_set = parse_label_set(spec)
    if label_set is None:
        shipped = [get_label_set(n) for n in list_label_sets()]
        candidates = [ls for ls in shipped if ls.num_classes == k]
        names = [n.strip().lower() for n in config.class_names]
        if names:
            matches = [
                (sum(a == b for a, b in zip(ls.class_names, names, strict=True)), ls) for ls in candidates
            ]
            best = max(matches, key=lambda m: m[0], default=(0, None))
            label_set = best[1] if best[0] * 2 >= k else None
        elif candidates:
            label_set = candidates[0]
        if label_set is None:
            label_set = LabelSet(
                name="generic",
                class_names=tuple(config.class_names) or tuple(f"class_{i}" for i in range(k)),
                palette=bit_palette(k),
            )
    if label_set.num_classes != k:
        raise SegformerError(
            f"label set {label_set.name} has {label_set.num_classes} classes but the model predicts {k}"
        )
    return label_set


def model_settings(
    model: Any, base: InferenceSettings | None = None, source: str | None = None, **overrides: Any
) -> InferenceSettings:
    """The settings a loaded model predicts with: `base` if given, else those in its ``meta``
    (`source` names where the meta was read, for errors), then `overrides` (None: not given), with
    the label set resolved for the model's classes (`resolve_label_set`)."""
    if base is None:
        base = InferenceSettings.from_meta(getattr(model, "meta", None), source or "model meta")
    settings = base.replace(**overrides)
    return settings.replace(label_set=resolve_label_set(settings.label_set, model.config))


__all__ = [
    "ALIASES",
    "BACKENDS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SCALES",
    "RUNTIME_OPTIONS",
    "InferenceSettings",
    "label_set_dict",
    "model_settings",
    "parse_label_set",
    "resolve_label_set",
    "split_overrides",
]
