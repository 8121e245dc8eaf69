"""Sparsity training for network slimming (Liu et al. 2017).

The ``bn_scale`` criterion ranks channels by |gamma| of their BatchNorm. Trained as usual, gammas
are all of similar size and the ranking says little; trained with an L1 penalty
lambda * sum |gamma| on every BatchNorm scale, unneeded channels' gammas are driven to zero, and
pruning them costs almost nothing. Two equivalent ways to add it:

    loss = criterion(model(x), y) + bn_l1_penalty(model, 1e-4)   # through autograd
    loss.backward()

or, as the paper's code does, after ``loss.backward()``:

    bn_l1_subgradient_(model, 1e-4)   # grad += lambda * sign(gamma)
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["bn_l1_penalty", "bn_l1_subgradient_", "bn_scales"]


def _check_lambda(lam: float) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
        raise ValueError(f"lam must be a non-negative number (the L1 strength, e.g. 1e-4), got {lam!r}")
    return float(lam)


def bn_scales(model: nn.Module) -> list[nn.Parameter]:
    """The affine scales (gamma) of every BatchNorm of ``model``; those without one are skipped."""
    return [m.weight for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and isinstance(m.weight, nn.Parameter)]


def bn_l1_penalty(model: nn.Module, lam: float, scales: Iterable[nn.Parameter] | None = None) -> torch.Tensor:
    """lam * sum |gamma| over the BatchNorm scales (or the given ``scales``), to add to the loss."""
    lam = _check_lambda(lam)
    params = list(bn_scales(model) if scales is None else scales)
    if not params:
        raise ValueError(f"{type(model).__name__} has no BatchNorm with an affine scale; network slimming "
                         "needs BatchNorm(affine=True) after the layers to prune")
    return lam * sum(p.abs().sum() for p in params)


@torch.no_grad()
def bn_l1_subgradient_(model: nn.Module, lam: float, scales: Iterable[nn.Parameter] | None = None) -> None:
    """Add lam * sign(gamma), the subgradient of the penalty, to every BatchNorm scale's ``.grad``
    (in place; call after ``loss.backward()`` and before ``optimizer.step()``). Scales without a
    gradient yet get one."""
    lam = _check_lambda(lam)
    params = list(bn_scales(model) if scales is None else scales)
    if not params:
        raise ValueError(f"{type(model).__name__} has no BatchNorm with an affine scale; network slimming "
                         "needs BatchNorm(affine=True) after the layers to prune")
    for p in params:
        step = lam * torch.sign(p)
        if p.grad is None:
            p.grad = step.clone()
        else:
            p.grad.add_(step)
