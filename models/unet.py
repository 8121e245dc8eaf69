"""A small U-Net (Ronneberger et al. 2015) for 64x64 inputs.

Exercises the encoder-decoder patterns: ``nn.ConvTranspose2d`` (whose weight
is laid out (in, out, kH, kW), the transpose of a conv's), and skip
connections joined by ``torch.cat([skip, up], dim=1)`` so that the decoder
conv's input channels come from two different producers at fixed offsets.
The output is a dense per-pixel map, not a vector.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DoubleConv", "Down", "Up", "UNet", "unet"]


class DoubleConv(nn.Sequential):
    """(Conv3x3 -> BN -> ReLU) x 2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """MaxPool 2x2 then DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))


class Up(nn.Module):
    """ConvTranspose2d(k=2, s=2) upsampling, concat with the skip, DoubleConv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(skip_ch + in_ch // 2, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.up(x)
        x = torch.cat([skip, up], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    """3-level U-Net: widths ``base``, ``2*base``, ``4*base`` (bottom)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base: int = 16) -> None:
        super().__init__()
        self.inc = DoubleConv(in_channels, base)
        self.down1 = Down(base, base * 2)
        self.down2 = Down(base * 2, base * 4)
        self.up1 = Up(base * 4, base * 2, base * 2)
        self.up2 = Up(base * 2, base, base)
        self.outc = nn.Conv2d(base, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x = self.up1(x3, x2)
        x = self.up2(x, x1)
        return self.outc(x)


def unet(num_classes: int = 2, base: int = 16, in_channels: int = 3) -> UNet:
    """Small 3-level U-Net (base width 16), input (1, 3, 64, 64) -> (1, num_classes, 64, 64)."""
    return UNet(in_channels=in_channels, num_classes=num_classes, base=base)
