"""A small ConvNeXt (Liu et al. 2022) for 64x64 inputs.

ConvNeXt is the "modern" stress test: channels-last ``permute`` round trips,
``nn.LayerNorm(C)`` over the channel axis (a norm that *mixes* channels, so
pruning a channel changes every other channel's output — removal is not
exact), pointwise convs written as ``nn.Linear`` on a channels-last tensor,
and a per-channel layer-scale ``nn.Parameter`` that is not owned by any
conv/linear/norm module but must still be sliced along with the channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConvNeXtBlock", "ChannelsFirstLayerNorm", "ConvNeXt", "convnext"]


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over C of an NCHW tensor, written as permute -> LN -> permute."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv7x7 -> LN -> Linear(C,4C) -> GELU -> Linear(4C,C) -> gamma* -> +x."""

    def __init__(self, dim: int, layer_scale_init: float = 1.0, expansion: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(expansion * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # NCHW -> NHWC
        x = self.norm(x)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return identity + x


class ConvNeXt(nn.Module):
    """Stem (4x4/4 conv + LN), stages with LN + 2x2/2 conv downsampling, LN + Linear head.

    ``layer_scale_init`` defaults to 1.0 rather than the paper's 1e-6: with
    1e-6 an untrained model's residual branches contribute ~nothing, which
    would hide pruning mistakes inside the blocks from output comparisons.
    """

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 2, 2),
        dims: tuple[int, ...] = (32, 64, 128),
        num_classes: int = 10,
        layer_scale_init: float = 1.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError("depths and dims must have the same length")
        self.stem = nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=4, stride=4),
            ChannelsFirstLayerNorm(dims[0]),
        )
        stages: list[nn.Module] = []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [
                    ChannelsFirstLayerNorm(dims[i - 1]),
                    nn.Conv2d(dims[i - 1], dim, kernel_size=2, stride=2),
                ]
            layers += [ConvNeXtBlock(dim, layer_scale_init) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        x = x.mean((-2, -1))  # global average pool -> (N, C)
        x = self.norm(x)
        return self.head(x)


def convnext(num_classes: int = 10, dims: tuple[int, ...] = (32, 64, 128), depths: tuple[int, ...] = (2, 2, 2)) -> ConvNeXt:
    """Small ConvNeXt (widths 32/64/128, 2 blocks per stage), input (1, 3, 64, 64)."""
    return ConvNeXt(depths=depths, dims=dims, num_classes=num_classes)
