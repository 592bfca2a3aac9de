"""MicroSegFormer written literally as the CE7454 seed describes it: the baseline of the speed targets.

The seed (``seeds/003``, "解码器详解") computes attention as ``Softmax(Q K^T / sqrt(d)) V`` with
explicit matrix products, projects each stage with a Linear on token sequences, upsamples the
projected maps to stride 4, concatenates [f1, f2, f3, f4] (512 channels), fuses them with
Linear(512, 128) -> GELU -> Linear(128, 128), upsamples the 128-channel map x4 to the input size and
only then applies the 1x1 classifier. This module does exactly that, in the token layout the
seed's pseudo-code uses (NCHW maps, ``flatten(2).transpose(1, 2)`` to get tokens and back).

Its attribute names are the package's, so ``SeedMicroSegFormer.from_model(model)`` takes the very
weights of a `segformer` MicroSegFormer (`load_state_dict` with strict key matching).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import SegformerError
from ..models import mit
from ..models.mit import run_stages
from .references import Reference


def to_tokens(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)


def to_map(x: Tensor, h: int, w: int) -> Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # (B, HW, C) -> (B, C, H, W)


class Attention(nn.Module):
    """Q = Linear_q(X); X' = LN(Conv(X, k=R, s=R)); K, V = Linear_kv(X'); Softmax(QK^T / sqrt(d)) V."""

    def __init__(self, dim: int, heads: int, sr: int, eps: float) -> None:
        super().__init__()
        self.heads, self.sr_ratio = heads, sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, sr)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)  # (B, heads, N, d)
        y = self.norm(to_tokens(self.sr(to_map(x, h, w)))) if self.sr_ratio > 1 else x
        k, v = self.kv(y).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # 2 x (B, heads, M, d)
        attn = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)  # (B, heads, N, M)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int, hidden: int, eps: float, sr_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, sr, sr_eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


class Stage(mit.Stage):
    """The package's stage (patch embedding, blocks, closing norm: the same code in both formulations)
    with the seed's blocks, its map made contiguous NCHW as the seed's pseudo-code makes it."""

    to_map = staticmethod(to_map)

    def __init__(self, cin: int, dim: int, depth: int, cfg: ModelConfig, i: int) -> None:
        hidden = int(dim * cfg.mlp_ratios[i])
        blocks = [
            Block(dim, cfg.num_heads[i], cfg.sr_ratios[i], hidden, cfg.norm_eps, cfg.embed_norm_eps)
            for _ in range(depth)
        ]
        super().__init__(
            cin, dim, cfg.patch_sizes[i], cfg.strides[i], blocks, cfg.norm_eps, cfg.embed_norm_eps
        )


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dims = (cfg.in_channels, *cfg.embed_dims)
        self.stages = nn.ModuleList(Stage(dims[i], dims[i + 1], d, cfg, i) for i, d in enumerate(cfg.depths))


class FuseMLP(nn.Module):
    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cin, dim)
        self.fc2 = nn.Linear(dim, dim)


class Decoder(nn.Module):
    """Linear per stage -> upsample to stride 4 -> concat [f1..f4] -> MLP -> upsample x4 -> classify."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.decoder_dim
        self.linear_c = nn.ModuleList(nn.Linear(c, d) for c in cfg.embed_dims)
        self.linear_fuse = FuseMLP(len(cfg.embed_dims) * d, d)
        self.classifier = nn.Conv2d(d, cfg.num_classes, 1)

    def forward(self, feats: list[Tensor], out_size: tuple[int, int]) -> Tensor:
        h, w = feats[0].shape[-2:]
        maps = []
        for linear, f in zip(self.linear_c, feats, strict=True):
            y = to_map(linear(to_tokens(f)), f.shape[2], f.shape[3])
            if y.shape[-2:] != (h, w):
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            maps.append(y)
        t = to_tokens(torch.cat(maps, dim=1))  # (B, hw, 4D)
        t = self.linear_fuse.fc2(F.gelu(self.linear_fuse.fc1(t)))
        x = F.interpolate(to_map(t, h, w), size=out_size, mode="bilinear", align_corners=False)
        return self.classifier(x)


class SeedMicroSegFormer(nn.Module):
    """The literal seed formulation; ``forward`` maps images to logits at the input size."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.decoder != "micro" or cfg.mix_ffn:
            raise SegformerError("the seed formulation is MicroSegFormer's (micro decoder, plain MLP)")
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @classmethod
    def from_model(cls, model: nn.Module) -> SeedMicroSegFormer:
        seed = cls(model.config)
        # The package stores 1x1 projections as nn.Linear weights too, so every key and shape matches.
        seed.load_state_dict(model.state_dict(), strict=True)
        return seed.to(next(model.parameters()).device).eval()

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])  # the x4 upsampling of the stride-4 map, to the input size
        return self.decoder(run_stages(self.encoder.stages, x), size)


def seed_reference(model: nn.Module) -> Reference:
    """The literal seed formulation holding `model`'s weights (MicroSegFormer-style models only)."""
    seed = SeedMicroSegFormer.from_model(model)

    def loss(x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(seed(x), y, ignore_index=255)

    return Reference("seed formulation", seed, seed, loss)
