"""gcpause.py: the cyclic collector is paused while surgeon traces, plans and cuts, and always
handed back in the state the caller left it, errors included."""
from __future__ import annotations

import gc
import importlib

import pytest
import torch
from torch import nn

import surgeon
from surgeon.gcpause import gc_paused

X = torch.randn(1, 3, 8, 8)


def small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


@pytest.fixture
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    gc.enable() if was else gc.disable()


def test_paused_inside_and_restored_after(collector_on):
    seen = []
    with gc_paused():
        seen.append(gc.isenabled())
    assert seen == [False] and gc.isenabled()


def test_trace_plan_apply_leave_the_collector_on(collector_on, monkeypatch):
    import surgeon.surgery as surgery
    states = []
    real = surgery.apply_removal

    def spy(*a, **k):
        states.append(gc.isenabled())
        return real(*a, **k)
    monkeypatch.setattr(importlib.import_module("surgeon.plan"), "apply_removal", spy)
    surgeon.trace(small(), X)
    assert gc.isenabled()
    p = surgeon.plan(small(), X, ratio=0.5)
    assert gc.isenabled()
    p.apply(verify=True)
    assert gc.isenabled() and states == [False]


def test_restored_when_the_step_fails(collector_on):
    with pytest.raises(surgeon.TraceFailure):
        surgeon.plan(small(), torch.randn(1, 5, 8, 8))  # wrong input channels
    assert gc.isenabled()


def test_a_caller_that_disabled_it_keeps_it_disabled(collector_on):
    gc.disable()
    surgeon.plan(small(), X, ratio=0.5).apply()
    assert not gc.isenabled()
