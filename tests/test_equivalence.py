"""Surgical equivalence on every zoo model and on many models composed at random from blocks.

The pruned model must compute exactly what the original computes when the removed channels' input
slices of their consumers are zeroed (``tests/conftest.py::prune_and_check``).
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
import surgeon_models as zoo

SMALL = {"resnet18": (1, 3, 64, 64), "resnet50": (1, 3, 64, 64), "vgg16_bn": (1, 3, 32, 32),
         "mobilenet_v2": (1, 3, 64, 64), "densenet121": (1, 3, 64, 64)}
EXACT = [n for n in zoo.names() if not zoo.entry(n).mixing_norm]


def _input(name: str) -> torch.Tensor:
    shape = SMALL.get(name, zoo.input_shape(name))
    return torch.randn(2, *shape[1:])


def _model(name: str) -> nn.Module:
    kw = {"width": 0.25, "hidden": 64} if name == "vgg16_bn" else {}
    return zoo.randomize_bn(zoo.get(name, **kw), seed=1).eval()


@pytest.mark.parametrize("name, ratio", [(n, [0.3, 0.5][i % 2]) for i, n in enumerate(EXACT)])
def test_zoo_surgical_equivalence(name, ratio, check):
    """One ratio per model, the two taking turns (surgery sees only the channel counts they give)."""
    torch.manual_seed(0)
    check(_model(name), _input(name), ratio)


@pytest.mark.parametrize("name", [n for n in zoo.names() if zoo.entry(n).mixing_norm])
def test_zoo_mixing_norm_models_keep_consistent_shapes(name):
    """LayerNorm over channels changes the statistics, so equivalence is replaced by shapes."""
    m, x = _model(name), _input(name)
    out_before = m(x).shape
    plan = surgeon.plan(m, x, ratio=0.5)
    assert plan.removed()
    before = sum(p.numel() for p in m.parameters())
    plan.apply()
    assert m(x).shape == out_before and sum(p.numel() for p in m.parameters()) < before


# ------------------------------------------------------------------ random models composed of blocks
class Block(nn.Module):
    """One randomly chosen block; ``kind`` names what it exercises."""

    def __init__(self, kind: str, c: int, rng: random.Random) -> None:
        super().__init__()
        self.kind = kind
        h = rng.choice([4, 6, 8])
        if kind == "cba":
            self.conv, self.bn = nn.Conv2d(c, h, 3, padding=1, bias=rng.random() < 0.5), nn.BatchNorm2d(h)
            self.out = h
        elif kind == "residual":
            self.c1, self.b1 = nn.Conv2d(c, h, 3, padding=1), nn.BatchNorm2d(h)
            self.c2, self.b2 = nn.Conv2d(h, c, 3, padding=1), nn.BatchNorm2d(c)
            self.out = c
        elif kind == "concat":
            self.c1, self.c2 = nn.Conv2d(c, h, 1), nn.Conv2d(c, h + 2, 3, padding=1)
            self.out = c + 2 * h + 2
        elif kind == "chunk":
            self.c1 = nn.Conv2d(c, 2 * h, 1)
            self.c2, self.c3 = nn.Conv2d(h, h, 3, padding=1), nn.Conv2d(h, h, 1)
            self.out = h
        elif kind == "se":
            self.fc1, self.fc2 = nn.Linear(c, max(2, c // 2)), nn.Linear(max(2, c // 2), c)
            self.out = c
        elif kind == "depthwise":
            self.pw, self.bn = nn.Conv2d(c, 2 * h, 1), nn.BatchNorm2d(2 * h)
            self.dw = nn.Conv2d(2 * h, 2 * h, 3, padding=1, groups=2 * h)
            self.out = 2 * h
        elif kind == "grouped":
            self.pw = nn.Conv2d(c, 2 * h, 1)
            self.g = nn.Conv2d(2 * h, 2 * h, 3, padding=1, groups=2)
            self.out = 2 * h

    def forward(self, x):
        k = self.kind
        if k == "cba":
            return F.relu(self.bn(self.conv(x)))
        if k == "residual":
            return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        if k == "concat":
            return torch.cat([x, F.relu(self.c1(x)), self.c2(x)], dim=1)
        if k == "chunk":
            a, b = self.c1(x).chunk(2, dim=1)
            return self.c2(F.relu(a)) * torch.sigmoid(self.c3(b))
        if k == "se":
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
            return x * s.view(x.size(0), -1, 1, 1)
        if k == "depthwise":
            return F.relu6(self.dw(F.relu6(self.bn(self.pw(x)))))
        return F.relu(self.g(self.pw(x)))


class RandomNet(nn.Module):
    """conv stem, 3-6 random blocks, then a flatten + Linear or a pooled Linear head."""

    KINDS = ["cba", "residual", "concat", "chunk", "se", "depthwise", "grouped"]

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = random.Random(seed)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        blocks, c = [], 6
        for _ in range(rng.randint(3, 6)):
            b = Block(rng.choice(self.KINDS), c, rng)
            blocks.append(b)
            c = b.out
        self.blocks = nn.Sequential(*blocks)
        self.flat_head = rng.random() < 0.5
        self.fc = nn.Linear(c * 4 if self.flat_head else c, 5)

    def forward(self, x):
        y = self.blocks(F.relu(self.stem(x)))
        if self.flat_head:
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 2), 1))
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("seed", range(30))
def test_random_models_surgical_equivalence(seed, check):
    torch.manual_seed(seed)
    m = RandomNet(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
    check(m, torch.randn(2, 3, 8, 8), ratio=random.Random(seed).choice([0.25, 0.5, 0.7]))


def test_torch_pruning_agrees_on_resnet18_param_count():
    """Cross-check with the peer: local L1 at 50% removes the same parameters as Torch-Pruning."""
    tp = pytest.importorskip("torch_pruning")
    x = torch.randn(1, 3, 64, 64)
    ours = zoo.get("resnet18")
    surgeon.prune(ours, x, 0.5)
    theirs = zoo.get("resnet18")
    tp.pruner.MagnitudePruner(theirs, x, importance=tp.importance.MagnitudeImportance(p=1),
                              pruning_ratio=0.5, ignored_layers=[theirs.fc]).step()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
