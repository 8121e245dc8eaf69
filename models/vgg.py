"""VGG-16 with batch norm.

VGG is the plain-chain baseline: no residuals, so every conv can be pruned
independently.  Its big ``Linear(512*7*7, 4096)`` is the interesting case for
a pruner: removing one conv channel removes 49 consecutive input features of
the first Linear, because the flatten is done with ``x.view(x.size(0), -1)``
(a ``view`` the tool must see through, not just ``torch.flatten``).
"""

from __future__ import annotations

from typing import Union

from torch import Tensor, nn

__all__ = ["VGG", "VGG16_CFG", "vgg16_bn"]

# Output channels per conv; "M" is a 2x2 max-pool.
VGG16_CFG: list[Union[int, str]] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]


class VGG(nn.Module):
    """VGG feature extractor + AdaptiveAvgPool2d((7, 7)) + 3-layer MLP head."""

    def __init__(
        self,
        cfg: list[Union[int, str]],
        num_classes: int = 1000,
        width: float = 1.0,
        hidden: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_ch = max(1, int(round(int(v) * width)))
                layers += [
                    nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


def vgg16_bn(num_classes: int = 1000, width: float = 1.0, hidden: int = 4096) -> VGG:
    """VGG-16-BN (138.4M params at width 1), input (1, 3, 224, 224).

    ``width`` scales every conv's channel count (the head's input follows);
    ``hidden`` sets the two 4096-wide MLP layers, so tests can build a light
    variant without changing the topology.
    """
    return VGG(VGG16_CFG, num_classes=num_classes, width=width, hidden=hidden)
