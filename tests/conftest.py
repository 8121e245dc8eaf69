"""Shared test helpers: the surgical-equivalence check used by every structural test."""
from __future__ import annotations

import pytest
import torch

import surgeon
from surgeon.verify import assert_equivalent, zeroed_reference

torch.set_num_threads(2)


def prune_and_check(model: torch.nn.Module, x, ratio: float = 0.5, **kwargs) -> surgeon.Plan:
    """Plan, apply, and assert surgical equivalence against the zeroed reference.

    Also asserts that something was actually removed, so a test cannot pass by pruning nothing.
    """
    model.eval()
    plan = surgeon.plan(model, x, ratio=ratio, **kwargs)
    removed = plan.removed()
    assert removed, "the plan removes nothing"
    reference = zeroed_reference(model, removed)
    before = sum(p.numel() for p in model.parameters())
    plan.apply()
    after = sum(p.numel() for p in model.parameters())
    assert after < before
    assert_equivalent(reference, model, x)
    return plan


@pytest.fixture
def check():
    return prune_and_check
