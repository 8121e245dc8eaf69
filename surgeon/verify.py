"""The surgical-equivalence oracle.

A pruned model must compute exactly what the original computes when the removed channels' input
slices of their consumers are zeroed. ``zeroed_reference`` builds that reference from a deep copy of
the original; ``assert_equivalent`` compares it with the pruned model. This catches every wrong
index map: a mis-mapped channel either changes a shape or feeds a consumer that should have
ignored it.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .registry import lookup
from .trace import as_input_tuple

__all__ = ["zeroed_reference", "assert_equivalent", "EquivalenceError"]


class EquivalenceError(AssertionError):
    """The pruned model does not compute what the zeroed reference computes."""


def zeroed_reference(original: nn.Module, removed: dict[str, dict[str, list[int]]]) -> nn.Module:
    """A deep copy of ``original`` (eval mode) in which every consumer listed in ``removed`` has the
    weight slices reading its removed input channels zeroed."""
    ref = copy.deepcopy(original).eval()
    for name, cut in removed.items():
        m = ref.get_submodule(name) if name else ref
        entry = lookup("call_module", name, m)
        if entry is not None and entry.layer is not None and entry.layer.zero_inputs and cut["in"]:
            entry.layer.zero_inputs(m, cut["in"])
    return ref


def max_abs_diff(a: Any, b: Any) -> float:
    if isinstance(a, torch.Tensor):
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, (tuple, list)):
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, dict):
        return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    return 0.0


def assert_equivalent(reference: nn.Module, pruned: nn.Module, example_inputs: Any,
                      atol: float = 1e-4, rtol: float = 1e-4) -> float:
    """Run both models in eval mode on the inputs; raise EquivalenceError if the outputs differ by
    more than ``atol + rtol * max|reference|``. Returns the max abs difference."""
    inputs = as_input_tuple(example_inputs)
    was = pruned.training
    pruned.eval()
    try:
        with torch.no_grad():
            want, got = reference(*inputs), pruned(*inputs)
    finally:
        pruned.train(was)
    diff = max_abs_diff(want, got)
    scale = max_abs_diff(want, torch.zeros_like(want)) if isinstance(want, torch.Tensor) else 1.0
    if not diff <= atol + rtol * scale:
        raise EquivalenceError(f"pruned model differs from the zeroed reference by {diff:.3g} "
                               f"(tolerance {atol + rtol * scale:.3g})")
    return diff
