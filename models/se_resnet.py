"""A small CIFAR SE-ResNet (Hu et al. 2018).

Squeeze-excitation is the classic "shape arithmetic in forward" pattern:
``b, c, _, _ = x.size()`` is unpacked and fed back into ``.view(b, c)`` and
``.view(b, c, 1, 1)``.  After pruning ``c`` must follow the new channel count,
so a pruner has to keep these sizes symbolic instead of baking in constants.
The SE gate ``x * s`` also ties the block's channels to both SE Linears.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["SEModule", "SEBasicBlock", "SEResNet", "se_resnet"]


class SEModule(nn.Module):
    """Channel gate: avgpool -> Linear -> ReLU -> Linear -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, _, _ = x.size()
        s = self.pool(x).view(b, c)
        s = torch.sigmoid(self.fc2(self.relu(self.fc1(s))))
        s = s.view(b, c, 1, 1)
        return x * s


class SEBasicBlock(nn.Module):
    """CIFAR BasicBlock with SE applied to the residual branch before the add."""

    def __init__(self, in_ch: int, planes: int, stride: int = 1, reduction: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SEModule(planes, reduction)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_ch != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


class SEResNet(nn.Module):
    """3-stage CIFAR SE-ResNet (default widths 16/32/64, 2 blocks per stage)."""

    def __init__(
        self,
        blocks_per_stage: int = 2,
        widths: tuple[int, int, int] = (16, 32, 64),
        num_classes: int = 10,
        reduction: int = 4,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch = widths[0]
        stages: list[nn.Module] = []
        for i, w in enumerate(widths):
            blocks: list[nn.Module] = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(SEBasicBlock(in_ch, w, stride, reduction))
                in_ch = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def se_resnet(num_classes: int = 10, blocks_per_stage: int = 2) -> SEResNet:
    """Small SE-ResNet (3 stages x 2 SE blocks), input (1, 3, 32, 32)."""
    return SEResNet(blocks_per_stage=blocks_per_stage, num_classes=num_classes)
