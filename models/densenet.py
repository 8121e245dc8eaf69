"""A small CIFAR DenseNet (Huang et al. 2017).

Dense connectivity is the hardest concat case for a channel pruner: every
layer reads ``torch.cat([x, new], 1)`` of all earlier feature maps, so a
channel produced by one conv appears at a different offset in the input of
every later conv and transition in the block.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DenseLayer", "DenseBlock", "Transition", "DenseNet", "densenet"]


class DenseLayer(nn.Module):
    """BN -> ReLU -> Conv3x3 producing ``growth`` new channels, concatenated."""

    def __init__(self, in_ch: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=False)  # not in-place: `x` is reused by the cat
        self.conv = nn.Conv2d(in_ch, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        new = self.conv(self.relu(self.bn(x)))
        return torch.cat([x, new], 1)


class DenseBlock(nn.Sequential):
    """``num_layers`` dense layers; output has ``in_ch + num_layers*growth`` channels."""

    def __init__(self, in_ch: int, num_layers: int, growth: int) -> None:
        super().__init__(*[DenseLayer(in_ch + i * growth, growth) for i in range(num_layers)])
        self.out_ch = in_ch + num_layers * growth


class Transition(nn.Sequential):
    """BN -> ReLU -> Conv1x1 (channel compression) -> AvgPool 2x2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False),
            nn.AvgPool2d(kernel_size=2, stride=2),
        )


class DenseNet(nn.Module):
    """Stem conv, dense blocks separated by transitions, BN-ReLU-pool-Linear head."""

    def __init__(
        self,
        growth: int = 12,
        block_layers: tuple[int, ...] = (4, 4, 4),
        compression: float = 0.5,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        ch = 2 * growth
        self.conv1 = nn.Conv2d(3, ch, kernel_size=3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(block_layers):
            block = DenseBlock(ch, n, growth)
            stages.append(block)
            ch = block.out_ch
            if i != len(block_layers) - 1:
                out_ch = int(ch * compression)
                stages.append(Transition(ch, out_ch))
                ch = out_ch
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.conv1(x))
        x = self.pool(self.relu(self.bn(x)))
        x = torch.flatten(x, 1)
        return self.fc(x)


def densenet(num_classes: int = 10, growth: int = 12, block_layers: tuple[int, ...] = (4, 4, 4)) -> DenseNet:
    """Growth-12, 3x4-layer DenseNet for CIFAR, input (1, 3, 32, 32)."""
    return DenseNet(growth=growth, block_layers=block_layers, num_classes=num_classes)
