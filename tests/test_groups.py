"""Groups: which fixes are worth a warning is decided by ``Fixed.expected``, never by the reason text."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
from surgeon.context import Fixed
from surgeon.groups import Group
from surgeon.indexmap import Pos

X = torch.randn(2, 3, 8, 8)


class Chain(nn.Module):
    """conv -> relu -> conv: the last conv's output is the model output, fixed as expected."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class Cumsum(nn.Module):
    """torch.cumsum along the channels: an op the registry does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cumsum(self.a(x), 1))


class ChannelMean(nn.Module):
    """a mean over the channels: understood, but it freezes them, so it warns too."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(y) + y.mean(1, keepdim=True)


def test_model_inputs_and_outputs_are_expected_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error", surgeon.FrozenGroupWarning)
        graph = surgeon.trace(Chain(), X)
    out = next(g for g in graph.groups if any(p.ref == "b.weight" and p.dim == 0 for p in g.params))
    assert not out.prunable and [f.reason for f in out.fixed] == ["model output"]
    assert all(f.expected for f in out.fixed) and out.unexpected_fixes == []
    assert graph.warnings == []


@pytest.mark.parametrize("make, op", [
    pytest.param(Cumsum, r"unsupported op torch\.cumsum at .*test_groups\.py:\d+", id="cumsum"),
    pytest.param(ChannelMean, r"reduced over by \.mean at .*test_groups\.py:\d+", id="channel-mean"),
])
def test_other_fixes_warn_naming_the_op_and_the_line(make, op):
    with pytest.warns(surgeon.FrozenGroupWarning, match=op):
        graph = surgeon.trace(make(), X)
    frozen = next(g for g in graph.groups if any(p.ref == "a.weight" and p.dim == 0 for p in g.params))
    assert not frozen.prunable and frozen.unexpected_fixes
    assert not any(f.expected for f in frozen.unexpected_fixes)


def test_the_flag_decides_not_the_reason_text():
    """A fix reading "model output" that is not flagged expected still warns; a flagged one never."""
    group = Group(0, 4, {Pos("p", "a.weight", 0): np.arange(4)})
    group.fixed = [Fixed("model output", "x")]
    assert group.unexpected_fixes == [Fixed("model output", "x")]
    group.fixed = [Fixed("anything at all", "x", expected=True)]
    assert group.unexpected_fixes == [] and group.frozen_reason() == "anything at all (node x)"
