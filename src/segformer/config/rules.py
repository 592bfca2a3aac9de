"""What each recipe field accepts: the choice lists the engine dispatches on, and `FIELD_RULES`.

The engine imports these lists from here, so that a recipe is checked against the same list the code
runs. The lists that live with their owners (dataset layouts, augmentation presets, label sets,
validation scores, model architectures) are handed down by them (`segformer.config.validate.provide`):
the config imports nothing above it.
"""

from __future__ import annotations

from .validate import Bounds, NonEmpty, OneOf, Provided, Rule, names_of

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

_POSITIVE, _NONNEG, _UNIT, _FRACTION = Bounds(1), Bounds(0), Bounds(0, 1), Bounds(0, 1, high_open=True)

# Allowed values of every field that has a constraint beyond its type. Each bad value is one line
# naming the key and what it accepts; tests/test_config.py tries a bad value of every entry.
FIELD_RULES: dict[str, dict[str, Rule]] = {
    "model": {
        "arch": OneOf(names_of("model.arch")),
        "num_classes": Bounds(1, 255),  # masks are 8-bit and 255 is the ignore index
        "in_channels": _POSITIVE,
        "embed_dims": _POSITIVE,
        "depths": _NONNEG,  # some stage must have a block (`ModelConfig.validate`)
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
        "kind": OneOf(names_of("data.kind")),
        "label_set": Provided("data.label_set"),
        "image_size": _POSITIVE,
        "augment": OneOf(names_of("data.augment")),
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
        "monitor": OneOf(names_of("train.monitor")),
        "seed": _NONNEG,
        "max_minutes": Bounds(0, low_open=True),
        "device": OneOf(DEVICES),
        "log_every": _POSITIVE,
    },
}
