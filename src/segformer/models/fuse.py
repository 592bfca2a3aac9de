"""Exact inference-time rewrites of a trained SegFormer.

`fuse(model)` returns a `FusedSegFormer`: the same function as ``model.eval()`` (logits equal up to
float rounding, ~1e-6) with a cheaper decoder. Every rewrite is linear algebra:

- **Stage projections folded into the fuse layer.** The fuse layer acts on the concatenation of the
  four projected maps, so ``W_fuse [p_1; ..; p_4] = sum_i W_fuse,i p_i`` with ``p_i = resize(W_c,i f_i +
  b_c,i)``; resizing commutes with per-pixel linear maps and preserves constants, so each stage becomes
  one 1x1 convolution ``W_fuse,i W_c,i`` applied at its own (low) resolution, and only D-channel maps
  are resized and added -- no 4D-channel concatenation at stride 4. (`MLPDecoder` / `MicroDecoder`
  already compute this sum in training; here the products are computed once.)
- **BatchNorm folded** (SegFormer head): ``BN(z) = s * z + (beta - s * mean)`` with ``s = gamma /
  sqrt(var + eps)`` scales the folded weights and becomes their bias.
- **fc2 and the classifier merged** (MicroSegFormer head): with dropout off they are consecutive
  linear maps, ``W_cls W_fc2``.
- **Classify before the final upsampling**: the model's ``forward`` already classifies at stride 4 and
  upsamples the K-channel logits (exact because bilinear weights sum to one and the classifier is
  affine); the seed upsampled the 128-channel map first.

The encoder is shared with `model`, not copied: fuse again after changing the weights. Only models in
eval mode are fused (training needs BatchNorm batch statistics and dropout); other models (U-Net) are
returned unchanged by `maybe_fuse`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import SegformerError
from .decoder import MicroDecoder, MLPDecoder, classifier_after, fused_projections, resize_to
from .segformer import EncoderDecoder, SegFormer


class FusedDecoder(nn.Module):
    """``classifier(act(sum_i resize(proj_i(f_i))))``: the folded form of both decoder heads."""

    def __init__(self, in_dims: Sequence[int], dim: int, num_classes: int, act: nn.Module) -> None:
        super().__init__()
        # Only the first (stride-4) projection has a bias: it carries the bias of the whole sum.
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1, bias=i == 0) for i, c in enumerate(in_dims))
        self.act = act
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        x = self.proj[0](features[0])
        for proj, f in zip(self.proj[1:], features[1:], strict=True):
            x = x + resize_to(proj(f), size)
        return self.classifier(self.act(x))

    @classmethod
    @torch.no_grad()
    def from_decoder(cls, decoder: MLPDecoder | MicroDecoder) -> FusedDecoder:
        in_dims = [lin.in_features for lin in decoder.linear_c]
        dim, num_classes = decoder.classifier.in_channels, decoder.classifier.out_channels
        n = len(in_dims)
        if isinstance(decoder, MLPDecoder):
            order = range(n - 1, -1, -1)  # the SegFormer head concatenates [c4, c3, c2, c1]
            weights, bias = fused_projections(decoder.linear_c, decoder.linear_fuse.weight.flatten(1), order)
            bn = decoder.norm
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            weights = [scale[:, None] * w for w in weights]
            bias = scale * (bias - bn.running_mean) + bn.bias
            head_w, head_b = decoder.classifier.weight.flatten(1), decoder.classifier.bias
            act: nn.Module = nn.ReLU()
        else:
            fc1 = decoder.linear_fuse.fc1
            weights, bias = fused_projections(decoder.linear_c, fc1.weight, range(n))
            bias = bias + fc1.bias
            head_w, head_b = classifier_after(decoder.linear_fuse.fc2, decoder.classifier)
            act = nn.GELU()
        fused = cls(in_dims, dim, num_classes, act)
        for proj, w in zip(fused.proj, weights, strict=True):
            proj.weight.copy_(w[:, :, None, None])
        fused.proj[0].bias.copy_(bias)
        fused.classifier.weight.copy_(head_w[:, :, None, None])
        fused.classifier.bias.copy_(head_b)
        return fused.to(decoder.classifier.weight.device).requires_grad_(False)


class FusedSegFormer(EncoderDecoder):
    """A fused inference copy of a `SegFormer` (see the module docstring); same ``forward`` contract."""

    def __init__(self, model: SegFormer) -> None:
        super().__init__()
        self.config = model.config
        self.meta = dict(getattr(model, "meta", None) or {})
        self.encoder = model.encoder
        self.decoder = FusedDecoder.from_decoder(model.decoder)
        self.eval()

    def train(self, mode: bool = True) -> FusedSegFormer:
        if mode:
            raise SegformerError("a fused model is for inference only; train the original model")
        return super().train(False)


def fuse(model: SegFormer) -> FusedSegFormer:
    """A `FusedSegFormer` computing what ``model`` computes in eval mode, faster (module docstring).

    Returns a new module sharing the encoder with `model`; `model` itself is not modified.
    Raises `SegformerError` for a model in training mode or one that is not a `SegFormer`.
    """
    if not isinstance(model, SegFormer):
        raise SegformerError(f"fuse() rewrites SegFormer models, not {type(model).__name__}")
    if model.training:
        raise SegformerError("fuse() needs a model in eval mode (call model.eval() first)")
    return FusedSegFormer(model)


def maybe_fuse(model: nn.Module) -> nn.Module:
    """`fuse(model)` for a SegFormer in eval mode, `model` itself otherwise (U-Net, fused, training)."""
    return fuse(model) if isinstance(model, SegFormer) and not model.training else model
