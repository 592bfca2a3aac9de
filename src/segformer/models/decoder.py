"""Decoder heads that turn the encoder's multi-scale maps into stride-4 logits.

- `MLPDecoder`: the SegFormer All-MLP decoder (Xie et al., NeurIPS 2021): per-stage linear projection
  to D channels, bilinear resize to stride 4, concatenation in the order [c4, c3, c2, c1], a 1x1
  convolution (no bias) + BatchNorm + ReLU fusing 4D -> D, dropout and a 1x1 classifier.
- `MicroDecoder`: the MicroSegFormer head (CE7454 seed): the same projections, concatenation in the
  order [f1, f2, f3, f4], a Linear(4D, D) -> GELU -> Linear(D, D) fusion and a 1x1 classifier.

Projections are `ChannelLinear`: `nn.Linear` parameters (the layout of the released checkpoints)
applied to NCHW maps as 1x1 convolutions, the same function without transposing token sequences.

Both heads compute the same function in a cheaper order. A 1x1 convolution over a
concatenation is the sum of its column blocks applied to the parts, ``W [a; b] = W_a a + W_b b``,
and bilinear resizing acts on each channel alone, so it commutes with any per-pixel linear map. So
instead of resizing four D-channel maps to stride 4, concatenating 4D channels and fusing them there,
each stage is projected straight to the fused space with the product ``W_fuse,i @ W_c,i`` at its own
low resolution, and the D-channel results are resized and added. The products are computed on the
fly from the unchanged parameters (so training, checkpoints and converters see the usual layout);
BatchNorm / GELU come after the sum, so this holds in training too. `segformer.models.fuse` goes
further for inference by precomputing the products and folding BatchNorm. The literal formulation
stays available (`literal_decoders`): FLOP counts follow it, as the papers' figures do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelLinear(nn.Linear):
    """An `nn.Linear` over the channel dimension of an NCHW map (run as a 1x1 convolution)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


def resize_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False) to `size`, a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def project_to(linears: nn.ModuleList, features: Sequence[Tensor], size: Sequence[int]) -> list[Tensor]:
    """Project each map to D channels and resize it bilinearly to `size` (stride 4)."""
    return [resize_to(linear(f), size) for linear, f in zip(linears, features, strict=True)]


def fused_projections(
    linears: Sequence[nn.Linear], fuse_weight: Tensor, order: Sequence[int]
) -> tuple[list[Tensor], Tensor]:
    """Per-stage weights ``W_fuse[:, block_i] @ W_c,i`` (D_out, C_i) and the summed bias (D_out,).

    `fuse_weight` (D_out, S * D) acts on the concatenation of the projected maps; ``order[j]`` is the
    stage whose map is the j-th block of that concatenation.
    """
    d = linears[0].out_features
    weights: list[Tensor] = [fuse_weight] * len(linears)
    bias = fuse_weight.new_zeros(fuse_weight.shape[0])
    for j, i in enumerate(order):
        block = fuse_weight[:, j * d : (j + 1) * d]  # (D_out, D)
        weights[i] = block @ linears[i].weight  # (D_out, C_i)
        if linears[i].bias is not None:
            bias = bias + block @ linears[i].bias
    return weights, bias


def project_and_sum(features: Sequence[Tensor], weights: Sequence[Tensor], bias: Tensor) -> Tensor:
    """``bias + sum_i resize(W_i f_i)`` at the size of the first (stride-4) map.

    Each stage is projected at its own resolution and only D-channel maps are resized; the bias is
    added once, at stride 4, by the first stage's convolution (resizing preserves constants).
    """
    size = features[0].shape[-2:]
    out = F.conv2d(features[0], weights[0][:, :, None, None], bias)
    for f, w in zip(features[1:], weights[1:], strict=True):
        out = out + resize_to(F.conv2d(f, w[:, :, None, None]), size)
    return out


def classifier_after(linear: nn.Linear, classifier: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """Weight (K, C) and bias (K,) of ``classifier(linear(x))``, a 1x1 classifier after a linear map."""
    w = classifier.weight.flatten(1)  # (K, D)
    return w @ linear.weight, w @ linear.bias + classifier.bias


class DecoderHead(nn.Module):
    """What both heads share: a `ChannelLinear` projection per stage (``linear_c``), the head's fusion of
    the projected maps (`build_fuse` makes ``linear_fuse`` and what follows it), dropout and a 1x1
    classifier; logits at the resolution of the first (stride-4) map.

    `forward` runs the exact cheaper rewrite (`forward_fused`), or within `literal_decoders` the maps
    projected, resized to stride 4 and concatenated as specified (`forward_literal`).
    """

    literal = False  # True: concatenate as the paper / the seed writes it (see `literal_decoders`)

    def __init__(self, in_dims: Sequence[int], dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(ChannelLinear(c, dim) for c in in_dims)
        self.build_fuse(len(in_dims) * dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def build_fuse(self, in_dim: int, dim: int) -> None:
        """Make the fusion of the concatenated maps (``in_dim`` channels) into `dim`."""
        raise NotImplementedError

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if self.literal:
            return self.forward_literal(project_to(self.linear_c, features, features[0].shape[-2:]))
        return self.forward_fused(features)

    def forward_literal(self, maps: list[Tensor]) -> Tensor:
        """Logits from the projected maps at stride 4, [f1, f2, f3, f4], by concatenating them."""
        raise NotImplementedError

    def forward_fused(self, features: Sequence[Tensor]) -> Tensor:
        """The same logits from the encoder's maps without the concatenation (module docstring)."""
        raise NotImplementedError


class MLPDecoder(DecoderHead):
    """SegFormer All-MLP decoder: 1x1 conv (no bias) + BatchNorm + ReLU fusing [c4, c3, c2, c1]."""

    def __init__(self, in_dims: Sequence[int], dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(in_dims, dim, num_classes, dropout)

    def build_fuse(self, in_dim: int, dim: int) -> None:
        self.linear_fuse = nn.Conv2d(in_dim, dim, 1, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.act = nn.ReLU(inplace=True)

    def forward_literal(self, maps: list[Tensor]) -> Tensor:
        x = self.linear_fuse(torch.cat(maps[::-1], dim=1))  # concat order [c4, c3, c2, c1]
        return self.classifier(self.dropout(self.act(self.norm(x))))

    def forward_fused(self, features: Sequence[Tensor]) -> Tensor:
        # linear_fuse(cat([c4, c3, c2, c1])) computed as a sum of per-stage products (module docstring).
        order = range(len(features) - 1, -1, -1)
        weights, bias = fused_projections(self.linear_c, self.linear_fuse.weight.flatten(1), order)
        x = project_and_sum(features, weights, bias)  # the fuse conv has no bias: `bias` is 0
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


class MicroDecoder(DecoderHead):
    """MicroSegFormer decoder: `FuseMLP` over [f1, f2, f3, f4].

    The seed upsamples the fused 128-channel map x4 and then applies the 1x1 classifier. Bilinear
    interpolation is a convex combination of neighbouring pixels and the classifier is affine, so
    classifying first and upsampling the K-channel logits is the same function at a fraction of the
    cost; the model's `forward` does that final upsampling.
    """

    def __init__(self, in_dims: Sequence[int], dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(in_dims, dim, num_classes, dropout)

    def build_fuse(self, in_dim: int, dim: int) -> None:
        self.linear_fuse = FuseMLP(in_dim, dim)

    def forward_literal(self, maps: list[Tensor]) -> Tensor:
        x = self.linear_fuse(torch.cat(maps, dim=1))  # concat order [f1, f2, f3, f4]
        return self.classifier(self.dropout(x))

    def forward_fused(self, features: Sequence[Tensor]) -> Tensor:
        # fc1(cat([f1, f2, f3, f4])) computed as a sum of per-stage products (module docstring).
        fc1, fc2 = self.linear_fuse.fc1, self.linear_fuse.fc2
        weights, bias = fused_projections(self.linear_c, fc1.weight, range(len(features)))
        x = self.linear_fuse.act(project_and_sum(features, weights, bias + fc1.bias))
        if self.training and self.dropout.p > 0:
            return self.classifier(self.dropout(fc2(x)))
        # Without dropout between them, fc2 and the classifier are one affine map (D -> K).
        w, b = classifier_after(fc2, self.classifier)
        return F.conv2d(x, w[:, :, None, None], b)


# `ModelConfig.decoder` -> head class. A plain table (not a registration decorator) so that the standalone
# CE7454 `run.py`, which copies these definitions, dispatches the same way.
DECODERS = {"mlp": MLPDecoder, "micro": MicroDecoder}


@contextmanager
def literal_decoders(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the decoder heads of `model` run the literal concatenating formulation
    (the architecture as specified, e.g. for counting its FLOPs); the faster exact one afterwards."""
    heads = [m for m in model.modules() if isinstance(m, DecoderHead)]
    for m in heads:
        m.literal = True
    try:
        yield model
    finally:
        for m in heads:
            del m.literal  # back to the class default
