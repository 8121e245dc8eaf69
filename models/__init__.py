"""Our own zoo of classic CNNs (importable as ``surgeon_models``).

Why a private zoo instead of torchvision: the pruner's tests and benchmarks
need models whose source we control, whose forward passes are all
``torch.fx.symbolic_trace``-able, and that cover the graph patterns a
structured pruner must handle (residual adds, projection shortcuts, depthwise
convs, dense concatenation, SE shape arithmetic, channels-last permutes with
LayerNorm, transposed convs and skip concatenation, view/flatten into
Linear).  Everything here is pure torch, so there is no torchvision version
drift and no weight download.

Usage::

    import surgeon_models as zoo

    model = zoo.get("resnet18", num_classes=10).eval()
    x = torch.randn(zoo.input_shape("resnet18"))
    zoo.randomize_bn(model, seed=0)   # make BN/LN non-identity for tests
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .convnext import convnext
from .densenet import densenet, densenet121
from .mobilenet import mobilenet_v2, mobilenet_v2_32
from .resnet import resnet18, resnet20, resnet50, resnet56
from .se_resnet import se_resnet
from .tinynet import tinynet
from .unet import unet
from .vgg import vgg16_bn

__all__ = [
    "ZooEntry",
    "ZOO",
    "names",
    "get",
    "entry",
    "input_shape",
    "randomize_bn",
]


@dataclass(frozen=True)
class ZooEntry:
    """One registered model.

    Attributes:
        name: registry key.
        factory: builds a fresh, randomly initialised model; keyword arguments
            (e.g. ``num_classes``) are forwarded from :func:`get`.
        input_shape: default input shape *including* batch size 1, i.e. the
            shape to feed for tracing/benchmarking without further thought.
        description: one line for CLI listings.
        mixing_norm: True when the model contains a normalisation that mixes
            channels (LayerNorm over C).  Removing a channel then changes the
            remaining channels' outputs, so pruned-vs-kept equivalence checks
            must be approximate/skipped for such models.
    """

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str
    mixing_norm: bool = False


def _register(*entries: ZooEntry) -> dict[str, ZooEntry]:
    return {e.name: e for e in entries}


ZOO: dict[str, ZooEntry] = _register(
    ZooEntry("tinynet", tinynet, (1, 3, 16, 16),
             "tiny conv-BN-ReLU x2 + residual + flatten-Linear; millisecond forward for tests"),
    ZooEntry("resnet18", resnet18, (1, 3, 224, 224),
             "ImageNet ResNet-18 (BasicBlock, conv1x1+BN downsample)"),
    ZooEntry("resnet50", resnet50, (1, 3, 224, 224),
             "ImageNet ResNet-50 v1.5 (Bottleneck, stride on the 3x3)"),
    ZooEntry("resnet56", resnet56, (1, 3, 32, 32),
             "CIFAR ResNet-56 (16/32/64, 9 BasicBlocks per stage, option-B shortcuts)"),
    ZooEntry("resnet20", resnet20, (1, 3, 32, 32),
             "CIFAR ResNet-20 (16/32/64, 3 BasicBlocks per stage): the accuracy benchmark's ResNet"),
    ZooEntry("mobilenet_v2_32", mobilenet_v2_32, (1, 3, 32, 32),
             "short MobileNetV2 (8 inverted residual blocks, width 0.5, stride-1 stem): the accuracy benchmark's MobileNet"),
    ZooEntry("vgg16_bn", vgg16_bn, (1, 3, 224, 224),
             "VGG-16 with BN; view-flatten into Linear(512*7*7, 4096) head"),
    ZooEntry("mobilenet_v2", mobilenet_v2, (1, 3, 224, 224),
             "MobileNetV2: inverted residuals, depthwise 3x3, linear bottlenecks, ReLU6"),
    ZooEntry("densenet", densenet, (1, 3, 32, 32),
             "small CIFAR DenseNet (growth 12, 3 blocks x 4 layers, torch.cat concatenation)"),
    ZooEntry("densenet121", densenet121, (1, 3, 224, 224),
             "ImageNet DenseNet-121 (growth 32, 6/12/24/16 bottleneck layers): 58 concatenations"),
    ZooEntry("se_resnet", se_resnet, (1, 3, 32, 32),
             "small CIFAR SE-ResNet (3 stages x 2 blocks, squeeze-excitation with size()/view)"),
    ZooEntry("convnext", convnext, (1, 3, 64, 64),
             "small ConvNeXt (32/64/128): dwconv7x7, permute, LayerNorm, Linear MLP, layer scale",
             mixing_norm=True),
    ZooEntry("unet", unet, (1, 3, 64, 64),
             "small 3-level U-Net: maxpool down, ConvTranspose2d up, skip torch.cat, 1x1 head"),
)


def names() -> list[str]:
    """All registered model names, in registration order (small models first)."""
    return list(ZOO)


def entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` for ``name``; ValueError (listing valid names) if unknown.

    ValueError rather than KeyError because the name usually comes from a
    user (CLI flag), and the message should tell them what they can type.
    """
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(names())}"
        ) from None


def get(name: str, **kwargs: Any) -> nn.Module:
    """Build a fresh model by name; ``kwargs`` go to its factory (e.g. ``num_classes``)."""
    return entry(name).factory(**kwargs)


def input_shape(name: str) -> tuple[int, ...]:
    """Default input shape (batch 1) for ``name``."""
    return entry(name).input_shape


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN/LayerNorm/GroupNorm random, non-trivial parameters and stats.

    Freshly initialised norms are identities in eval mode (weight 1, bias 0,
    running mean 0, running var 1), so a test that prunes a channel and
    compares outputs could miss a mis-sliced BN entirely.  This sets
    ``weight ~ U(0.5, 1.5)``, ``bias ~ N(0, 0.1)``, ``running_mean ~ N(0, 0.1)``
    and ``running_var ~ U(0.5, 1.5)`` (positive, away from zero, so outputs
    stay well scaled), from a private generator seeded by ``seed`` so results
    are reproducible and the global RNG is untouched.  Modifies ``model`` in
    place and returns it for chaining.
    """
    gen = torch.Generator().manual_seed(seed)

    def _uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) * (hi - lo) + lo)

    def _normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * std)

    for m in model.modules():
        if not isinstance(m, _NORM_TYPES):
            continue
        weight = getattr(m, "weight", None)
        bias = getattr(m, "bias", None)
        if weight is not None:
            _uniform(weight, 0.5, 1.5)
        if bias is not None:
            _normal(bias, 0.1)
        running_mean = getattr(m, "running_mean", None)
        running_var = getattr(m, "running_var", None)
        if running_mean is not None:
            _normal(running_mean, 0.1)
        if running_var is not None:
            _uniform(running_var, 0.5, 1.5)
    return model
