"""SegFormer: MiT encoder + All-MLP decoder, and the registered variants B0-B5 and MicroSegFormer.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021. Variant configurations follow the released weights (mlp ratio 4 in every stage).
MicroSegFormer is the 1.72M-parameter face parser of the CE7454 seed: narrow channels, shallow depth,
single-head attention, a plain expansion-2 MLP instead of Mix-FFN and a small GELU-MLP decoder.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .decoder import DECODERS
from .mit import MixTransformer
from .registry import register_arch, register_model


def init_weights(module: nn.Module) -> None:
    """The initialisation of the original MiT: truncated-normal linears, He-normal (fan-out) convs."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class EncoderDecoder(nn.Module):
    """The forward contract shared by `SegFormer` and its fused inference form: an ``encoder`` giving
    one map per stage and a ``decoder`` giving stride-4 logits, upsampled to the input at the end."""

    encoder: nn.Module
    decoder: nn.Module

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The encoder's NCHW maps, one per stage (strides 4, 8, 16, 32)."""
        return self.encoder(x)

    def forward_logits(self, x: Tensor) -> Tensor:
        """Logits at the first stage's resolution (stride 4), before the final upsampling."""
        return self.decoder(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.forward_logits(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_arch("segformer", decoders=DECODERS)
class SegFormer(EncoderDecoder):
    """MiT encoder + decoder head. `forward` maps ``(B, C, H, W)`` images to ``(B, K, H, W)`` logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MixTransformer(
            in_channels=config.in_channels,
            embed_dims=config.embed_dims,
            depths=config.depths,
            num_heads=config.num_heads,
            sr_ratios=config.sr_ratios,
            mlp_ratios=config.mlp_ratios,
            patch_sizes=config.patch_sizes,
            strides=config.strides,
            mix_ffn=config.mix_ffn,
            qkv_bias=config.qkv_bias,
            drop_rate=config.drop_rate,
            attn_drop_rate=config.attn_drop_rate,
            drop_path_rate=config.drop_path_rate,
            norm_eps=config.norm_eps,
            embed_norm_eps=config.embed_norm_eps,
        )
        self.decoder = DECODERS[config.decoder](
            config.embed_dims, config.decoder_dim, config.num_classes, config.decoder_dropout
        )
        self.apply(init_weights)


def _mit(embed_dims: tuple[int, ...], depths: tuple[int, ...], decoder_dim: int) -> ModelConfig:
    return ModelConfig(
        embed_dims=embed_dims,
        depths=depths,
        num_heads=(1, 2, 5, 8),
        sr_ratios=(8, 4, 2, 1),
        mlp_ratios=(4, 4, 4, 4),
        decoder="mlp",
        decoder_dim=decoder_dim,
    )


_SMALL, _LARGE = (32, 64, 160, 256), (64, 128, 320, 512)
register_model("segformer-b0", _mit(_SMALL, (2, 2, 2, 2), 256), "MiT-B0 + All-MLP decoder (3.7M)")
register_model("segformer-b1", _mit(_LARGE, (2, 2, 2, 2), 256), "MiT-B1 + All-MLP decoder (13.7M)")
register_model("segformer-b2", _mit(_LARGE, (3, 4, 6, 3), 768), "MiT-B2 + All-MLP decoder (27.4M)")
register_model("segformer-b3", _mit(_LARGE, (3, 4, 18, 3), 768), "MiT-B3 + All-MLP decoder (47.3M)")
register_model("segformer-b4", _mit(_LARGE, (3, 8, 27, 3), 768), "MiT-B4 + All-MLP decoder (64.1M)")
register_model("segformer-b5", _mit(_LARGE, (3, 6, 40, 3), 768), "MiT-B5 + All-MLP decoder (84.7M)")
register_model(
    "microsegformer",
    ModelConfig(
        embed_dims=(32, 64, 128, 192),
        depths=(1, 2, 2, 2),
        num_heads=(1, 1, 1, 1),
        sr_ratios=(8, 4, 2, 1),
        mlp_ratios=(2, 2, 2, 2),
        mix_ffn=False,
        decoder="micro",
        decoder_dim=128,
        decoder_dropout=0.0,
    ),
    "MicroSegFormer face parser, 1,721,939 parameters at 19 classes (CE7454 seed)",
)
