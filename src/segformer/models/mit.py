"""Mix Transformer (MiT), the hierarchical encoder of SegFormer.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021. Four stages, each an overlapping patch embedding (a strided convolution + LayerNorm)
followed by pre-norm Transformer blocks with efficient (sequence-reduced) self-attention and Mix-FFN,
closed by a LayerNorm. There is no positional encoding: the 3x3 depthwise convolution in Mix-FFN and
the overlapping patch embeddings leak enough position information. Outputs are NCHW feature maps at
strides 4, 8, 16 and 32.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def tokens_to_map(x: Tensor, h: int, w: int) -> Tensor:
    """Tokens ``(B, h*w, C)`` as an NCHW map without copying: a channels-last view.

    Convolutions, bilinear resizing and the next stage's tokens all prefer that layout on CPU (channels
    are contiguous), and it turns back into tokens with ``flatten(2).transpose(1, 2)`` for free.
    """
    b, _, c = x.shape
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, h, w), channels-last strides


def run_stages(stages: Iterable[nn.Module], x: Tensor) -> list[Tensor]:
    """Each stage applied to the previous one's output: every stage's output, first to last (the
    multi-scale maps an encoder hands its decoder)."""
    features = []
    for stage in stages:
        x = stage(x)
        features.append(x)
    return features


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `p`."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with kernel > stride (so patches overlap), then LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        # A channels-last map flattens into contiguous tokens without a copy.
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        return self.norm(x), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a spatially reduced sequence.

    With `sr_ratio` R > 1 the key/value tokens are taken from ``LN(Conv2d(C, C, R, stride=R)(x))``,
    shrinking their number by R^2 while the queries keep full resolution.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, heads, N, d)
        if self.sr_ratio > 1:
            r = self.sr_ratio
            y = tokens_to_map(x, h, w)
            if h < r or w < r:
                # Maps smaller than one reduction window (inputs under ~8*sr px) still give one
                # key/value token instead of failing inside the convolution.
                y = F.pad(y, (0, max(0, r - w), 0, max(0, r - h)))
            y = self.sr(y).flatten(2).transpose(1, 2)  # (B, M, C), M = N / R^2
            y = self.norm(y)
        else:
            y = x
        kv = self.kv(y).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)  # (2, B, heads, M, d)
        k, v = kv.unbind(0)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, heads, N, d)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, attn_drop={self.attn_drop}"


class MixFFN(nn.Module):
    """fc1 -> (3x3 depthwise conv) -> GELU -> fc2 on token sequences.

    With `dwconv=False` this is the plain MLP of MicroSegFormer.
    """

    def __init__(self, dim: int, hidden: int, dwconv: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if dwconv else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = self.fc1(x)
        if self.dwconv is not None:
            x = self.dwconv(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """Pre-norm Transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(FFN(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float,
        mix_ffn: bool = True,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        sr_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias, attn_drop, drop, sr_eps)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), dwconv=mix_ffn, drop=drop)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class Stage(nn.Module):
    """Patch embedding, `depth` blocks and a closing LayerNorm; returns an NCHW map."""

    to_map = staticmethod(tokens_to_map)  # the tokens as the returned map (a channels-last view)

    def __init__(
        self,
        in_channels: int,
        dim: int,
        patch_size: int,
        stride: int,
        blocks: Sequence[Block],
        eps: float,
        embed_eps: float,
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch_size, stride, embed_eps)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x, h, w = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        return self.to_map(self.norm(x), h, w)


class MixTransformer(nn.Module):
    """The MiT encoder: a list of stages, each consuming the previous stage's map."""

    def __init__(
        self,
        in_channels: int = 3,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        mix_ffn: bool = True,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        embed_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.embed_dims = tuple(embed_dims)
        # Stochastic depth rises linearly from 0 over all blocks of all stages.
        n = sum(depths)
        rates = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        stages = []
        prev, start = in_channels, 0
        for i, dim in enumerate(embed_dims):
            blocks = [
                Block(
                    dim,
                    num_heads[i],
                    sr_ratios[i],
                    mlp_ratios[i],
                    mix_ffn=mix_ffn,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[start + j],
                    eps=norm_eps,
                    sr_eps=embed_norm_eps,
                )
                for j in range(depths[i])
            ]
            stages.append(Stage(prev, dim, patch_sizes[i], strides[i], blocks, norm_eps, embed_norm_eps))
            prev, start = dim, start + depths[i]
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        return run_stages(self.stages, x)
