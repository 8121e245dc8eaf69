"""The suite's own guard (conftest.parametrized_modules_unchanged): a module instance given to
parametrize and changed in place by its test fails that test, so it cannot leak into the next."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import surgeon
from conftest import changed_entries, modules_in, snapshot
from surgeon.registry import layer_spec


def test_an_in_place_prune_is_seen():
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    before = snapshot(m)
    assert changed_entries(m, before) == []
    surgeon.prune(m, torch.randn(1, 3, 4, 4), 0.5)
    assert changed_entries(m, before) == ["0.bias", "0.weight", "2.weight"]


def test_an_in_place_rewrite_of_values_is_seen():
    """Same shapes, channel 1 zeroed (soft pruning); a NaN that stays NaN is no change."""
    m = nn.Linear(4, 3)
    with torch.no_grad():
        m.bias[0] = float("nan")
    before = snapshot(m)
    assert changed_entries(m, before) == []
    layer_spec(m).zero_outputs(m, [1])
    assert changed_entries(m, before) == ["bias", "weight"]


def test_modules_are_found_inside_parametrize_values():
    a, b, c = nn.ReLU(), nn.Linear(1, 1), nn.Conv2d(1, 1, 1)
    assert modules_in((a, [b, 3], {"k": c}, "x")) == [a, b, c]
    assert modules_in(nn.Linear) == [] and modules_in(None) == []


@pytest.mark.parametrize("layer, shape", [(nn.Linear(3, 2), (3,))], ids=["linear"])
def test_the_guard_watches_parametrized_instances(layer, shape, parametrized_modules_unchanged):
    """The autouse fixture is wired: it watches this test's instance, which is only read here."""
    assert parametrized_modules_unchanged == [layer]
    assert layer(torch.randn(shape)).shape == (2,)
