"""A small CIFAR DenseNet (Huang et al. 2017).

Dense connectivity is the hardest concat case for a channel pruner: every
layer reads ``torch.cat([x, new], 1)`` of all earlier feature maps, so a
channel produced by one conv appears at a different offset in the input of
every later conv and transition in the block.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DenseLayer", "BottleneckLayer", "DenseBlock", "Transition", "DenseNet", "densenet", "densenet121"]


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


class BottleneckLayer(nn.Module):
    """DenseNet-B layer: BN -> ReLU -> Conv1x1 (``bn_size * growth``) -> BN -> ReLU -> Conv3x3
    (``growth``), concatenated to its input (DenseNet-121/169/201)."""

    def __init__(self, in_ch: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        mid = bn_size * growth
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=False)  # `x` is reused by the cat
        self.conv1 = nn.Conv2d(in_ch, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        new = self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x))))))
        return torch.cat([x, new], 1)


class DenseBlock(nn.Sequential):
    """``num_layers`` dense layers; output has ``in_ch + num_layers*growth`` channels."""

    def __init__(self, in_ch: int, num_layers: int, growth: int, bottleneck: bool = False) -> None:
        layer = BottleneckLayer if bottleneck else DenseLayer
        super().__init__(*[layer(in_ch + i * growth, growth) for i in range(num_layers)])
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
        imagenet: bool = False,
    ) -> None:
        super().__init__()
        ch = 2 * growth
        if imagenet:  # DenseNet-B/C for 224x224: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool, bottleneck layers
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(3, ch, kernel_size=7, stride=2, padding=3, bias=False), nn.BatchNorm2d(ch),
                nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        else:
            self.conv1 = nn.Conv2d(3, ch, kernel_size=3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(block_layers):
            block = DenseBlock(ch, n, growth, bottleneck=imagenet)
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


def densenet121(num_classes: int = 1000) -> DenseNet:
    """ImageNet DenseNet-121 (Huang et al. 2017: growth 32, blocks 6/12/24/16, bottleneck layers,
    compression 0.5; 7.98 M parameters with 1000 classes), input (1, 3, 224, 224)."""
    return DenseNet(growth=32, block_layers=(6, 12, 24, 16), num_classes=num_classes, imagenet=True)
