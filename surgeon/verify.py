"""The surgical-equivalence oracle.

A pruned model must compute exactly what the original computes when the removed channels' input
slices of their consumers are zeroed. ``zeroed_reference`` builds that reference from a deep copy of
the original; ``assert_equivalent`` compares it with the pruned model. This catches every wrong
index map: a mis-mapped channel either changes a shape or feeds a consumer that should have
ignored it.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from .registry import layer_spec
from .record import flatten_tensors
from .capture import as_example_inputs, eval_mode

__all__ = ["zeroed_reference", "assert_equivalent", "EquivalenceError"]


class EquivalenceError(AssertionError):
    """The pruned model does not compute what the zeroed reference computes."""


def zeroed_reference(original: nn.Module, removed: dict[str, dict[str, list[int]]]) -> nn.Module:
    """A deep copy of ``original`` (eval mode) in which every consumer listed in ``removed`` has the
    weight slices reading its removed input channels zeroed."""
    ref = copy.deepcopy(original).eval()
    for name, cut in removed.items():
        m = ref.get_submodule(name) if name else ref
        spec = layer_spec(m)  # by class, so subclasses that call F.conv2d themselves count too
        if spec is not None and spec.zero_inputs and cut["in"]:
            spec.zero_inputs(m, cut["in"])
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
                      atol: float = 1e-4, rtol: float = 1e-4, outputs: Sequence[int] | None = None) -> float:
    """Run both models in eval mode on the inputs; raise EquivalenceError if the outputs differ by
    more than ``atol + rtol * max|reference|``. Returns the max abs difference. ``outputs``: indices
    of the (flattened) outputs to compare (those a plan kept; default all)."""
    ex = as_example_inputs(example_inputs)
    with eval_mode(pruned), eval_mode(reference), torch.no_grad():
        want, got = flatten_tensors(ex.call(reference)), flatten_tensors(ex.call(pruned))
    if outputs is not None and len(want) == len(got):
        want, got = [want[i] for i in outputs], [got[i] for i in outputs]
    if len(want) != len(got):
        raise EquivalenceError(f"the pruned model returns {len(got)} tensors, the reference {len(want)}")
    bad = [f"output {i}: {tuple(a.shape)} vs {tuple(b.shape)}" for i, (a, b) in enumerate(zip(want, got))
           if a.shape != b.shape]
    if bad:
        raise EquivalenceError("pruned model outputs have other shapes than the reference's: " + "; ".join(bad))
    worst = 0.0
    for i, (w, g) in enumerate(zip(want, got)):  # each output against its own scale
        diff = max_abs_diff(w, g)
        tol = atol + rtol * max_abs_diff(w, torch.zeros_like(w))
        if not diff <= tol:
            which = f" (output {i} of {len(want)})" if len(want) > 1 else ""
            raise EquivalenceError(f"pruned model differs from the zeroed reference by {diff:.3g}{which} "
                                   f"(tolerance {tol:.3g})")
        worst = max(worst, diff)
    return worst
