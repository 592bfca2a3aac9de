"""Decoder heads that turn the encoder's multi-scale maps into stride-4 logits.

- `MLPDecoder`: the SegFormer All-MLP decoder (Xie et al., NeurIPS 2021): per-stage linear projection
  to D channels, bilinear resize to stride 4, concatenation in the order [c4, c3, c2, c1], a 1x1
  convolution (no bias) + BatchNorm + ReLU fusing 4D -> D, dropout and a 1x1 classifier.
- `MicroDecoder`: the MicroSegFormer head (CE7454 seed): the same projections, concatenation in the
  order [f1, f2, f3, f4], a Linear(4D, D) -> GELU -> Linear(D, D) fusion and a 1x1 classifier.

Projections are `ChannelLinear`: `nn.Linear` parameters (the layout of the released checkpoints)
applied to NCHW maps as 1x1 convolutions, the same function without transposing token sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelLinear(nn.Linear):
    """An `nn.Linear` over the channel dimension of an NCHW map (run as a 1x1 convolution)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


def project_to(linears: nn.ModuleList, features: Sequence[Tensor], size: Sequence[int]) -> list[Tensor]:
    """Project each map to D channels and resize it bilinearly to `size` (stride 4)."""
    out = []
    for linear, f in zip(linears, features, strict=True):
        y = linear(f)
        if y.shape[-2:] != tuple(size):
            y = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)
        out.append(y)
    return out


class MLPDecoder(nn.Module):
    """SegFormer All-MLP decoder; returns logits at the resolution of the first (stride-4) map."""

    def __init__(self, in_dims: Sequence[int], dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(ChannelLinear(c, dim) for c in in_dims)
        self.linear_fuse = nn.Conv2d(len(in_dims) * dim, dim, 1, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        maps = project_to(self.linear_c, features, features[0].shape[-2:])
        x = self.linear_fuse(torch.cat(maps[::-1], dim=1))  # concat order [c4, c3, c2, c1]
        x = self.dropout(self.act(self.norm(x)))
        return self.classifier(x)


class FuseMLP(nn.Module):
    """Linear(4D, D) -> GELU -> Linear(D, D) applied per pixel of an NCHW map."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = ChannelLinear(in_dim, dim)
        self.act = nn.GELU()
        self.fc2 = ChannelLinear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MicroDecoder(nn.Module):
    """MicroSegFormer decoder; returns logits at the resolution of the first (stride-4) map.

    The seed upsamples the fused 128-channel map x4 and then applies the 1x1 classifier. Bilinear
    interpolation is a convex combination of neighbouring pixels and the classifier is affine, so
    classifying first and upsampling the K-channel logits is the same function at a fraction of the
    cost; the model's `forward` does that final upsampling.
    """

    def __init__(self, in_dims: Sequence[int], dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(ChannelLinear(c, dim) for c in in_dims)
        self.linear_fuse = FuseMLP(len(in_dims) * dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        maps = project_to(self.linear_c, features, features[0].shape[-2:])
        x = self.linear_fuse(torch.cat(maps, dim=1))  # concat order [f1, f2, f3, f4]
        return self.classifier(self.dropout(x))
