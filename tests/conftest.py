"""Shared test helpers: the surgical-equivalence check used by every structural test, and the
guard that no test changes a module instance given to ``pytest.mark.parametrize``."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

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


# ------------------------------------------------------------ parametrized module instances
def modules_in(value: Any) -> list[nn.Module]:
    """The nn.Module instances in one parametrize value (itself, or inside a tuple / list / dict)."""
    if isinstance(value, nn.Module):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [m for v in value for m in modules_in(v)]
    return []


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape, dtype and values (a NaN equals a NaN in the same place)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.nan_to_num(), b.nan_to_num()) if a.is_floating_point() else torch.equal(a, b)


def changed_entries(module: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    """State-dict entries of ``module`` added, removed, reshaped or rewritten since ``before``."""
    after = module.state_dict()
    return sorted((set(before) ^ set(after)) | {k for k in set(before) & set(after) if not _same(before[k], after[k])})


@pytest.fixture(autouse=True)
def parametrized_modules_unchanged(request):
    """A module instance written in ``pytest.mark.parametrize`` is built once, at collection, and
    shared by every test (and rerun) that gets it: pruning or zeroing it in place leaks into the next
    one. Such a test fails here; parametrize over a factory (a class, a ``functools.partial``) and
    build the model in the test. Yields the watched modules."""
    spec = getattr(request.node, "callspec", None)
    watched = [(name, m, snapshot(m)) for name, value in (spec.params.items() if spec else ())
               for m in modules_in(value)]
    yield [m for _, m, _ in watched]
    for name, m, before in watched:
        diff = changed_entries(m, before)
        if diff:
            pytest.fail(f"parametrize value {name!r} ({type(m).__name__}) was changed in place "
                        f"({', '.join(diff[:4])}): parametrize over a factory and build it in the test",
                        pytrace=False)
