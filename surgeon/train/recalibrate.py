"""BatchNorm recalibration: the cheapest recovery after a prune, with no labels and no gradient.

Removing channels changes what every later layer sees, so the running mean and variance each
BatchNorm learned on the dense model no longer describe its inputs; in eval mode the network then
normalises with wrong statistics, which alone can take a pruned model to chance accuracy.
Re-estimating them (a forward pass over a few unlabelled batches with every BatchNorm in train
mode, momentum None = an exact average over the batches seen) fixes that part of the damage
without touching a single weight.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Any, Iterable

import torch
from torch import nn

from ..capture import eval_mode
from .loop import call, default_device, split_batch, to_device

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Iterable[Any], batches: int | None = None,
                   device: torch.device | str | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics of ``model`` on ``data`` (in place).

    data: batches of inputs, or ``(inputs, target)`` pairs whose targets are ignored.
    batches: how many batches to use (default all). Only BatchNorm layers run in train mode:
    dropout and the like stay in eval mode, no parameter changes, and every module's flag and
    BatchNorm momentum are restored afterwards. Returns the model."""
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise ValueError(f"batches must be a positive integer (or None for all), got {batches!r}")
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        warnings.warn(f"{type(model).__name__} has no BatchNorm with running statistics: nothing to "
                      "recalibrate", stacklevel=2)
        return model
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), default_device())
    momenta = [(m, m.momentum) for m in norms]
    backup = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        with eval_mode(model):  # every module's own flag comes back afterwards
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches seen
                m.train()
            seen = 0
            for batch in itertools.islice(data, batches):
                inputs, _ = split_batch(batch)
                call(model, to_device(inputs, device))
                seen += 1
            if seen == 0:
                raise ValueError("the recalibration data yielded no batches; pass a non-empty loader")
    except BaseException:
        for m, (mean, var, n) in zip(norms, backup):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
        raise
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
    return model
