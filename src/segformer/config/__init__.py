"""Configuration, the ground floor of the package (no torch, nothing above it imported): the recipe's
dataclasses and their loading (`recipe`), their plain-dict plumbing and renamed keys (`fields`), what
each field accepts (`rules`), the one validation system of recipes and inference settings (`validate`),
and YAML / ``--set`` parsing (`overrides`).

The model registry lives with the models (`segformer.models.registry`); it hands the names of models
and architectures down to the config (`validate.provide`), as the data package and the metrics do
for layouts, presets, label sets and scores.
"""

from .fields import RENAMED, from_plain, replace_fields, to_plain
from .overrides import load_yaml, parse_overrides
from .recipe import (
    RECIPE_DIR,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    list_recipes,
    load_recipe,
    read_recipe,
)
from .rules import (
    AMP_MODES,
    AUGMENT_DEVICES,
    BAD_LABELS,
    CLASS_WEIGHTS,
    DEVICES,
    DICE_CLASSES,
    EVAL_MODES,
    FIELD_RULES,
    LOSSES,
    OPTIMIZERS,
    POSTPROCESS_MODES,
    SCHEDULES,
    TTA_MODES,
)
from .validate import Bounds, NonEmpty, OneOf, Provided, provide

__all__ = [
    "AMP_MODES",
    "AUGMENT_DEVICES",
    "BAD_LABELS",
    "CLASS_WEIGHTS",
    "DEVICES",
    "DICE_CLASSES",
    "EVAL_MODES",
    "FIELD_RULES",
    "LOSSES",
    "OPTIMIZERS",
    "POSTPROCESS_MODES",
    "RECIPE_DIR",
    "RENAMED",
    "SCHEDULES",
    "TTA_MODES",
    "Bounds",
    "DataConfig",
    "ModelConfig",
    "NonEmpty",
    "OneOf",
    "Provided",
    "RunConfig",
    "TrainConfig",
    "from_plain",
    "list_recipes",
    "load_recipe",
    "load_yaml",
    "parse_overrides",
    "provide",
    "read_recipe",
    "replace_fields",
    "to_plain",
]
