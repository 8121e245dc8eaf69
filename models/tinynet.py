"""TinyNet: the smallest model with the patterns that matter.

Two conv-BN-ReLU layers joined by a residual add, then a spatial flatten into
a Linear.  It forwards in well under a millisecond at (1, 3, 16, 16), so unit
and CLI tests can use it as their default while still covering a coupled
(residual) channel group and a conv->flatten->linear boundary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TinyNet", "tinynet"]


class TinyNet(nn.Module):
    """conv1-bn1-relu -> conv2-bn2 -> (+ conv1 branch) -> relu -> flatten -> fc."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 3, spatial: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * spatial * spatial, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(x))
        x = self.relu(x + y)
        x = torch.flatten(x, 1)
        return self.fc(x)


def tinynet(num_classes: int = 10, width: int = 8) -> TinyNet:
    """TinyNet (width 8, ~21K params), input (1, 3, 16, 16)."""
    return TinyNet(num_classes=num_classes, width=width)
