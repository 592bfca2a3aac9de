"""U-Net, the convolutional baseline of the seed's parameter-efficiency comparison.

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015. Four downsamplings (2x2 max-pool) and four upsamplings (2x2 transposed convolution that
halves the channels), each level two 3x3 convolutions, skip connections concatenated before the
decoder's convolutions, a 1x1 classifier. As in most modern re-implementations the convolutions are
padded (the output keeps the input's size instead of the paper's valid-convolution crop) and followed
by BatchNorm; the paper predates BatchNorm.

The base width W (`ModelConfig.unet_width`) sets the channels of the first level; level i has
W * 2^i. W = 64 is the standard network (31.04M parameters at 19 classes); parameters grow as W^2,
so a small W gives a U-Net with the parameter count of another model.

Any input size works: the image is padded (edge replication) on the bottom and right to a multiple of
16 and the logits are cropped back, so ``forward`` returns ``(B, K, H, W)`` at the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .mit import run_stages
from .registry import register_arch, register_model

DEPTH = 4
"""Downsamplings: the input is padded to a multiple of 2^DEPTH."""


class DoubleConv(nn.Sequential):
    """(3x3 conv without bias -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool, then a double convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """2x2 transposed convolution (stride 2, channels halved), concatenation with the skip, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))  # (B, 2 * out, H, W)


class UNetEncoder(nn.Module):
    """Levels 0..DEPTH; returns every level's map (strides 1, 2, 4, 8, 16)."""

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__()
        levels = [DoubleConv(in_channels, widths[0])]
        levels += [Down(widths[i - 1], widths[i]) for i in range(1, len(widths))]
        self.levels = nn.ModuleList(levels)

    def forward(self, x: Tensor) -> list[Tensor]:
        return run_stages(self.levels, x)


class UNetDecoder(nn.Module):
    """Upsampling path from the bottleneck; `levels[0]` is the deepest (widths[-1] -> widths[-2])."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(Up(widths[i], widths[i - 1]) for i in range(len(widths) - 1, 0, -1))

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for up, skip in zip(self.levels, features[-2::-1], strict=True):
            x = up(x, skip)
        return x


@register_arch("unet")
class UNet(nn.Module):
    """U-Net with base width ``config.unet_width``; uses `num_classes`, `in_channels` and `unet_width`
    of the config (the MiT fields do not apply)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.unet_width * 2**i for i in range(DEPTH + 1)]
        self.encoder = UNetEncoder(config.in_channels, widths)
        self.decoder = UNetDecoder(widths)
        self.classifier = nn.Conv2d(widths[0], config.num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        multiple = 2**DEPTH
        # Padded unconditionally (zero padding is a no-op) so that the padding stays in traced and
        # exported graphs: an `if` on the shape would be fixed at the example input's size.
        x = F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")
        logits = self.classifier(self.decoder(self.encoder(x)))
        return logits[..., :h, :w]


register_model(
    "unet",
    ModelConfig(arch="unet", unet_width=64, decoder_dropout=0.0, drop_path_rate=0.0),
    "U-Net baseline (Ronneberger et al. 2015), width 64, 31.0M parameters at 19 classes",
)
