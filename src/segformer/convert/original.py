"""NVlabs/SegFormer (mmseg) ``.pth`` checkpoints <-> our models: pure state-dict mapping and config inference.

Layout of the official code (NVlabs/SegFormer ``mmseg/models/backbones/mix_transformer.py`` and
``decode_heads/segformer_head.py``), stages and heads counted from 1:

- encoder, under ``backbone.`` in segmentation checkpoints and bare in the ImageNet ``mit_bX.pth`` files:
  ``patch_embed{S}.proj|norm``, ``block{S}.{b}.norm1|norm2``, ``block{S}.{b}.attn.q|kv|proj|sr|norm``,
  ``block{S}.{b}.mlp.fc1|dwconv.dwconv|fc2``, ``norm{S}`` (the stage norm);
- decoder: ``decode_head.linear_c{S}.proj``, ``decode_head.linear_fuse.conv|bn`` (an mmcv ConvModule:
  1x1 conv without bias + BatchNorm), ``decode_head.linear_pred`` (the classifier).

Dropped on reading: ``decode_head.conv_seg.*`` (mmseg's BaseDecodeHead builds it, SegFormerHead never
uses it) and ``head.*`` (the ImageNet classifier of ``mit_bX.pth``). The attention is stored as ours is
(``q`` and a ``kv`` Linear with keys first) and the decoder concatenates [c4, c3, c2, c1] as ours does, so
every tensor maps unchanged.

The checkpoint holds no config: `infer_config` reads the architecture from the tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..config import ModelConfig
from ..errors import SegformerError
from ..models import get_config, list_models
from .keymap import KeyMap, segformer_rules, without_prefix

_RULES = segformer_rules(
    "backbone.patch_embed{S}.",
    "backbone.block{S}.{b}.",
    "backbone.norm{S}.",
    {
        "linear_c.{s}": "decode_head.linear_c{S}.proj",
        "linear_fuse": "decode_head.linear_fuse.conv",
        "norm": "decode_head.linear_fuse.bn",
        "classifier": "decode_head.linear_pred",
    },
    block_names={"mlp.dwconv": "mlp.dwconv.dwconv"},
)

ORIGINAL = KeyMap(
    "NVlabs/mmseg SegFormer",
    _RULES,
    # ImageNet encoder checkpoints (mit_b0.pth ...) hold the backbone without its prefix.
    read_only=without_prefix(_RULES, "backbone."),
    dropped={
        "decode_head.conv_seg.{p}": "built by mmseg's BaseDecodeHead, unused by SegFormerHead",
        "head.{p}": "ImageNet classification head of the mit_bX.pth encoder checkpoints",
    },
)


def original_to_native(state: Mapping[str, Tensor], source: str = "state dict") -> dict[str, Tensor]:
    """NVlabs/mmseg SegFormer weights (segmentation or ImageNet encoder-only) -> ours.

    Keys already in our layout are kept; any other key raises `SegformerError` naming it.
    """
    return ORIGINAL.to_ours(state, source)


def native_to_original(
    state: Mapping[str, Tensor], encoder_only: bool = False, source: str = "state dict"
) -> dict[str, Tensor]:
    """Our weights -> NVlabs/mmseg names (``backbone.*`` + ``decode_head.*``).

    With `encoder_only` the result is laid out as an ImageNet ``mit_bX.pth``: encoder keys only, without
    the ``backbone.`` prefix.
    """
    out = ORIGINAL.from_ours(state, source)
    if encoder_only:
        out = {k.removeprefix("backbone."): v for k, v in out.items() if not k.startswith("decode_head.")}
    return out


# -- config inference --

MIT_HEADS = (1, 2, 5, 8)
"""Attention heads per stage of every released MiT (B0-B5); head counts leave no trace in tensor shapes."""
MIT_STRIDES = (4, 2, 2, 2)
"""Patch-embedding strides of the official code (hard-coded there, invisible in the shapes)."""

_STAGE_RE = re.compile(r"encoder\.stages\.(\d+)\.blocks\.(\d+)\.")


def is_encoder_only(state: Mapping[str, Tensor]) -> bool:
    """Whether a state dict in our layout holds an encoder and no decoder."""
    return not any(k.startswith("decoder.") for k in state)


def _registered_match(fields: dict[str, Any]) -> str | None:
    """The registered model whose shape-visible fields equal `fields`, if any."""
    for name in list_models():
        config = get_config(name)
        if all(getattr(config, k) == v for k, v in fields.items()):
            return name
    return None


def infer_config(
    state: Mapping[str, Tensor],
    num_classes: int | None = None,
    source: str = "checkpoint",
    **overrides: Any,
) -> tuple[ModelConfig, str | None]:
    """Read the architecture from the tensor shapes of a state dict in our layout.

    Visible in the shapes: stages, channels, input channels, patch sizes, depths, sr ratios (sr conv
    kernel), mlp ratios (fc1 rows / channels), Mix-FFN (a dwconv), qkv bias, decoder kind and width, and
    the number of classes. Not visible: attention heads and strides. They are taken from the registered
    model whose visible fields all match (e.g. ``segformer-b2``, ``microsegformer``); failing that, from
    the MiT table (heads 1, 2, 5, 8; strides 4, 2, 2, 2). LayerNorm eps stays at the ModelConfig
    defaults, which are the original code's (1e-6 block and stage norms, 1e-5 embedding and sr norms).

    Returns the config and the name of the matching registered model (or None). For an encoder-only
    state `num_classes` is required; the decoder width then comes from the matching model (256 otherwise).
    `overrides` (config fields) are applied last, e.g. ``num_heads`` for a custom architecture.
    """
    fields = _visible_fields(state, source)
    match = _registered_match(fields)
    base = get_config(match) if match else ModelConfig()
    if match is not None:
        fields["num_heads"], fields["strides"] = base.num_heads, base.strides
    elif len(fields["embed_dims"]) == len(MIT_HEADS):
        fields["num_heads"], fields["strides"] = MIT_HEADS, MIT_STRIDES
    if is_encoder_only(state):
        if num_classes is None:
            raise SegformerError(
                f"{source}: encoder-only checkpoint (no decoder weights): pass num_classes to build a "
                "freshly initialised decoder"
            )
        fields["decoder"] = base.decoder if match else "mlp"
        fields["decoder_dim"] = base.decoder_dim if match else 256
        fields["num_classes"] = num_classes
    else:
        fields["num_classes"] = _tensor(state, "decoder.classifier.weight", source).shape[0]
    fields.update(overrides)
    _check_heads(fields, source)
    return base.replace(class_names=(), **fields), match


def _tensor(state: Mapping[str, Tensor], key: str, source: str) -> Tensor:
    if key not in state:
        raise SegformerError(f"{source}: missing key {key!r} needed to infer the architecture")
    return state[key]


def _visible_fields(state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """The config fields that the tensor shapes of `state` (our layout) show (see `infer_config`)."""
    stages = 0
    while f"encoder.stages.{stages}.patch_embed.proj.weight" in state:
        stages += 1
    if stages == 0:
        raise SegformerError(f"{source}: no SegFormer encoder weights found (no patch embedding of stage 1)")
    blocks: dict[int, set[int]] = {i: set() for i in range(stages)}
    for key in state:
        if (m := _STAGE_RE.match(key)) and int(m.group(1)) < stages:
            blocks[int(m.group(1))].add(int(m.group(2)))

    embed_dims, patch_sizes, sr_ratios, mlp_ratios = [], [], [], []
    for i in range(stages):
        proj = _tensor(state, f"encoder.stages.{i}.patch_embed.proj.weight", source)  # (C_i, C_{i-1}, k, k)
        embed_dims.append(proj.shape[0])
        patch_sizes.append(proj.shape[-1])
        if not blocks[i]:
            raise SegformerError(f"{source}: stage {i + 1} has no transformer blocks")
        block = f"encoder.stages.{i}.blocks.0."
        sr = state.get(block + "attn.sr.weight")  # (C, C, sr, sr)
        sr_ratios.append(1 if sr is None else sr.shape[-1])
        hidden = _tensor(state, block + "mlp.fc1.weight", source).shape[0]
        mlp_ratios.append(hidden / proj.shape[0])
    fields: dict[str, Any] = {
        "in_channels": _tensor(state, "encoder.stages.0.patch_embed.proj.weight", source).shape[1],
        "embed_dims": tuple(embed_dims),
        "depths": tuple(len(blocks[i]) for i in range(stages)),
        "sr_ratios": tuple(sr_ratios),
        "mlp_ratios": tuple(mlp_ratios),
        "patch_sizes": tuple(patch_sizes),
        "mix_ffn": "encoder.stages.0.blocks.0.mlp.dwconv.weight" in state,
        "qkv_bias": "encoder.stages.0.blocks.0.attn.q.bias" in state,
    }
    if not is_encoder_only(state):
        fields["decoder"] = "micro" if "decoder.linear_fuse.fc1.weight" in state else "mlp"
        fields["decoder_dim"] = _tensor(state, "decoder.linear_c.0.weight", source).shape[0]
    return fields


def _check_heads(fields: dict[str, Any], source: str) -> None:
    """Heads and strides are known (inferred or passed) and the heads divide every stage's channels."""
    if "num_heads" not in fields or "strides" not in fields:
        raise SegformerError(
            f"{source}: {len(fields['embed_dims'])} stages match no registered model and attention heads and "
            "strides are not stored in the weights; pass num_heads and strides explicitly"
        )
    bad = [
        f"stage {i + 1}: {d} channels / {h} heads"
        for i, (d, h) in enumerate(zip(fields["embed_dims"], fields["num_heads"], strict=True))
        if d % h
    ]
    if bad:
        raise SegformerError(
            f"{source}: attention heads are not stored in the weights and the MiT default (1, 2, 5, 8) does "
            f"not fit ({'; '.join(bad)}); pass num_heads explicitly"
        )
