"""HF transformers SegFormer checkpoints <-> our models: pure state-dict and config mappings.

Layouts (verified against transformers 4.x ``modeling_segformer.py`` and 5.23's modeling file and
``conversion_mapping.py``):

- legacy, written by ``save_pretrained`` in every version (5.x renames on load and back on save):
  ``segformer.encoder.patch_embeddings.{s}.proj|layer_norm``, ``segformer.encoder.block.{s}.{b}.`` +
  ``layer_norm_1|layer_norm_2``, ``attention.self.query|key|value|sr|layer_norm``,
  ``attention.output.dense``, ``mlp.dense1|dwconv.dwconv|dense2``; ``segformer.encoder.layer_norm.{s}``;
  ``decode_head.linear_c.{s}.proj``, ``decode_head.linear_fuse|batch_norm|classifier``.
- 5.x module names (what ``model.state_dict()`` gives in memory): ``segformer.stages.{s}.`` +
  ``patch_embeddings.proj|layer_norm``, ``blocks.{b}.layernorm_before|layernorm_after``,
  ``attention.q_proj|k_proj|v_proj|o_proj``, ``attention.sequence_reduction.sequence_reduction|layer_norm``,
  ``mlp.fc1|dwconv.dwconv|fc2``, ``layer_norm``; ``decode_head.linear_projections.{s}.proj``.

Both are read; the legacy layout is written, since every transformers version loads it. HF keeps keys and
values in two Linears where we keep one ``kv`` Linear (keys first). All three codebases concatenate the
decoder maps in the order [c4, c3, c2, c1] before ``linear_fuse``, so its weight maps unchanged.

LayerNorm eps: both 4.x and 5.x build every LayerNorm (patch embedding, sequence reduction, block and
stage norms) as ``nn.LayerNorm(dim)``, i.e. eps 1e-5, and never read ``config.layer_norm_eps`` (1e-6 in
the hub configs). Models loaded from HF therefore get ``norm_eps = embed_norm_eps = 1e-5``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..config import ModelConfig
from ..errors import SegformerError
from .keymap import KeyMap, segformer_rules, without_prefix

HF_LAYER_NORM_EPS = 1e-5
"""The eps every LayerNorm of transformers' SegFormer uses (PyTorch's default)."""

# Our modules inside a block -> (legacy name, 5.x name); a pair of names: one of our tensors split in two.
_BLOCK_NAMES = {
    "norm1": ("layer_norm_1", "layernorm_before"),
    "attn.q": ("attention.self.query", "attention.q_proj"),
    "attn.kv": (("attention.self.key", "attention.self.value"), ("attention.k_proj", "attention.v_proj")),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "attn.sr": ("attention.self.sr", "attention.sequence_reduction.sequence_reduction"),
    "attn.norm": ("attention.self.layer_norm", "attention.sequence_reduction.layer_norm"),
    "norm2": ("layer_norm_2", "layernorm_after"),
    "mlp.fc1": ("mlp.dense1", "mlp.fc1"),
    "mlp.dwconv": ("mlp.dwconv.dwconv", "mlp.dwconv.dwconv"),
    "mlp.fc2": ("mlp.dense2", "mlp.fc2"),
}

_LEGACY = segformer_rules(
    "segformer.encoder.patch_embeddings.{s}.",
    "segformer.encoder.block.{s}.{b}.",
    "segformer.encoder.layer_norm.{s}.",
    {
        "linear_c.{s}": "decode_head.linear_c.{s}.proj",
        "linear_fuse": "decode_head.linear_fuse",
        "norm": "decode_head.batch_norm",
        "classifier": "decode_head.classifier",
    },
    embed_names={"norm": "layer_norm"},
    block_names={ours: legacy for ours, (legacy, _) in _BLOCK_NAMES.items()},
)

# 5.x spells the decoder's projections anew; its other decoder keys are the legacy ones (the rules above).
_V5 = segformer_rules(
    "segformer.stages.{s}.patch_embeddings.",
    "segformer.stages.{s}.blocks.{b}.",
    "segformer.stages.{s}.layer_norm.",
    {"linear_c.{s}": "decode_head.linear_projections.{s}.proj"},
    embed_names={"norm": "layer_norm"},
    block_names={ours: v5 for ours, (_, v5) in _BLOCK_NAMES.items()},
)

HF = KeyMap(
    "HF transformers SegFormer",
    _LEGACY,
    # (a bare SegformerModel saves the encoder without the ``segformer.`` prefix)
    read_only=_V5 + without_prefix(_LEGACY, "segformer.") + without_prefix(_V5, "segformer."),
    dropped={
        "classifier.{p}": "ImageNet classification head of SegformerForImageClassification (nvidia/mit-bX)",
    },
)


def hf_to_native(state: Mapping[str, Tensor], source: str = "state dict") -> dict[str, Tensor]:
    """HF SegFormer weights (legacy or 5.x names, with or without the ``segformer.`` prefix) -> ours.

    An image-classification head (``classifier.*``) is dropped: it has no counterpart in a segmentation
    model. Keys already in our layout are kept. Any other key raises `SegformerError` naming it.
    """
    return HF.to_ours(state, source)


def native_to_hf(state: Mapping[str, Tensor], source: str = "state dict") -> dict[str, Tensor]:
    """Our SegFormer weights (All-MLP decoder, Mix-FFN) -> HF legacy names; HF keys are kept."""
    return HF.from_ours(state, source)


# -- config --

# SegformerConfig's defaults, for keys a config.json leaves out.
_HF_DEFAULTS: dict[str, Any] = {
    "num_channels": 3,
    "hidden_sizes": [32, 64, 160, 256],
    "depths": [2, 2, 2, 2],
    "num_attention_heads": [1, 2, 5, 8],
    "sr_ratios": [8, 4, 2, 1],
    "mlp_ratios": [4, 4, 4, 4],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout_prob": 0.1,
    "drop_path_rate": 0.1,
    "decoder_hidden_size": 256,
}


def _labels(doc: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
    """Number of labels and their names (empty when they are transformers' ``LABEL_i`` placeholders)."""
    id2label = doc.get("id2label")
    if not id2label:
        return int(doc.get("num_labels", 2)), ()
    by_id = {int(k): str(v) for k, v in id2label.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise SegformerError(f"id2label ids are not 0..{len(by_id) - 1}")
    names = tuple(by_id[i] for i in range(len(by_id)))
    if names == tuple(f"LABEL_{i}" for i in range(len(names))):
        names = ()
    return len(by_id), names


def config_from_hf(doc: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Our `ModelConfig` for an HF ``config.json`` (a SegformerConfig as a dict).

    `num_classes` and `class_names` come from ``id2label``; for an image-classification checkpoint those
    are its ImageNet labels, which the caller replaces.
    """
    if doc.get("model_type") != "segformer":
        raise SegformerError(f"{source}: model_type is {doc.get('model_type')!r}, expected 'segformer'")
    cfg = {**_HF_DEFAULTS, **doc}
    if cfg["hidden_act"] != "gelu":
        raise SegformerError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (only 'gelu')")
    stages = int(cfg.get("num_encoder_blocks", len(cfg["hidden_sizes"])))
    if stages != len(cfg["hidden_sizes"]):
        raise SegformerError(
            f"{source}: num_encoder_blocks {stages} disagrees with {len(cfg['hidden_sizes'])} hidden_sizes"
        )
    try:
        num_classes, names = _labels(cfg)
        return ModelConfig(
            arch="segformer",
            num_classes=num_classes,
            class_names=names,
            in_channels=cfg["num_channels"],
            embed_dims=cfg["hidden_sizes"],
            depths=cfg["depths"],
            num_heads=cfg["num_attention_heads"],
            sr_ratios=cfg["sr_ratios"],
            mlp_ratios=tuple(float(r) for r in cfg["mlp_ratios"]),
            patch_sizes=cfg["patch_sizes"],
            strides=cfg["strides"],
            mix_ffn=True,
            qkv_bias=True,
            drop_rate=float(cfg["hidden_dropout_prob"]),
            attn_drop_rate=float(cfg["attention_probs_dropout_prob"]),
            drop_path_rate=float(cfg["drop_path_rate"]),
            norm_eps=HF_LAYER_NORM_EPS,
            embed_norm_eps=HF_LAYER_NORM_EPS,
            decoder="mlp",
            decoder_dim=cfg["decoder_hidden_size"],
            decoder_dropout=float(cfg["classifier_dropout_prob"]),
        )
    except SegformerError as err:
        raise SegformerError(f"{source}: {err}") from None
    except (TypeError, ValueError) as err:
        raise SegformerError(f"{source}: malformed SegformerConfig ({err})") from None


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The HF ``config.json`` of a SegformerForSemanticSegmentation equivalent to `config`.

    Only the SegFormer architecture exists in transformers: the MicroSegFormer decoder, the plain MLP
    (``mix_ffn=False``) and fractional mlp ratios raise `SegformerError`. A LayerNorm eps other than 1e-5
    cannot be expressed (transformers ignores ``layer_norm_eps``): it is written for the record and a
    warning is issued.
    """
    if config.arch != "segformer" or config.decoder != "mlp" or not config.mix_ffn:
        what = (
            f"arch {config.arch!r}"
            if config.arch != "segformer"
            else f"decoder {config.decoder!r}"
            if config.decoder != "mlp"
            else "mix_ffn=False (plain MLP)"
        )
        raise SegformerError(
            f"cannot save as HF transformers: {what} has no equivalent in SegformerForSemanticSegmentation "
            "(only the MiT encoder with Mix-FFN and the All-MLP decoder do); save it in the native format"
        )
    if not all(float(r).is_integer() for r in config.mlp_ratios):
        raise SegformerError(
            f"cannot save as HF transformers: mlp_ratios {config.mlp_ratios} are not integers "
            "(SegformerConfig types them as int)"
        )
    if config.norm_eps != HF_LAYER_NORM_EPS or config.embed_norm_eps != HF_LAYER_NORM_EPS:
        warnings.warn(
            f"transformers' SegFormer uses LayerNorm eps 1e-5 everywhere; this model uses norm_eps="
            f"{config.norm_eps:g}, embed_norm_eps={config.embed_norm_eps:g}, so its logits in transformers "
            "will differ slightly from ours",
            stacklevel=3,
        )
    names = config.class_names or tuple(f"LABEL_{i}" for i in range(config.num_classes))
    return {
        "architectures": ["SegformerForSemanticSegmentation"],
        "model_type": "segformer",
        "num_channels": config.in_channels,
        "num_encoder_blocks": config.num_stages,
        "hidden_sizes": list(config.embed_dims),
        "depths": list(config.depths),
        "num_attention_heads": list(config.num_heads),
        "sr_ratios": list(config.sr_ratios),
        "mlp_ratios": [int(r) for r in config.mlp_ratios],
        "patch_sizes": list(config.patch_sizes),
        "strides": list(config.strides),
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.drop_rate,
        "attention_probs_dropout_prob": config.attn_drop_rate,
        "classifier_dropout_prob": config.decoder_dropout,
        "drop_path_rate": config.drop_path_rate,
        "layer_norm_eps": config.norm_eps,
        "decoder_hidden_size": config.decoder_dim,
        "reshape_last_stage": True,
        "semantic_loss_ignore_index": 255,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }
