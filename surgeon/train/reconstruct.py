"""Layer-wise reconstruction: re-fit the consumers of removed channels by least squares, no labels.

Recalibrating BatchNorm fixes the statistics a prune shifts, but not the lost signal: a consumer
that read 64 channels and now reads 32 still applies the weights it learned for 64. Channel pruning
(He et al. 2017) and ThiNet (Luo et al. 2017) re-fit those weights instead: on a few unlabelled
batches, choose the consumer's remaining weights so that its output (at the output channels it
keeps) matches what the *original* model's layer produced, given what the pruned model now feeds it:

    W' = argmin ||Y_original - X_pruned W'||^2 + ridge ||W'||^2        (one linear solve per layer)

Layers are processed in forward order, so each one sees the inputs its already re-fitted
predecessors produce; BatchNorm statistics are re-estimated before each capture and at the end.
Supported consumers: ``nn.Conv2d`` with groups=1 (rows are sampled spatial positions of the
unfolded input) and ``nn.Linear``; other layers keep their weights (a depthwise conv has nothing
to re-fit: each output reads one input).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import eval_mode
from .loop import call, split_batch, to_device
from .recalibrate import recalibrate_bn

__all__ = ["reconstruct"]


def _forward_order(model: nn.Module, inputs: Any) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    seen: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append(names[id(mod)]))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with eval_mode(model), torch.no_grad():
            call(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(seen))


def _rows(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, positions: int, gen: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) as rows of a least-squares problem for one batch."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # N, C*k*k, L
    n, k, length = cols.shape
    pick = torch.randint(0, length, (min(length, positions),), generator=gen).to(x.device)
    rows = cols[:, :, pick].permute(0, 2, 1).reshape(-1, k)
    targets = y.flatten(2)[:, :, pick].permute(0, 2, 1).reshape(-1, y.shape[1])
    return rows, targets


def _supported(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or (
        type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros"
        and isinstance(layer.padding, tuple))


@torch.no_grad()
def reconstruct(pruned: nn.Module, reference: nn.Module, removed: dict[str, dict[str, list[int]]],
                data: Iterable[Any], batches: int = 4, positions: int = 32, ridge: float = 1e-4,
                seed: int = 0) -> list[str]:
    """Re-fit, in place, the weights of every layer of ``pruned`` that lost input channels.

    reference: the model before the prune (unchanged; e.g. a deep copy taken before ``apply``).
    removed: ``plan.removed()`` of the applied plan (taken before or after ``apply``).
    data: batches of inputs or ``(inputs, target)`` pairs (targets unused); the first ``batches``
        are used, ``positions`` sampled spatial positions per image for convolutions.
    ridge: Tikhonov strength, relative to the mean diagonal of X^T X.
    Returns the names of the layers re-fitted. The BatchNorm statistics of ``pruned`` are
    re-estimated on the same batches at the end."""
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be a positive integer, got {batches!r}")
    calib = [split_batch(b)[0] for b in itertools.islice(data, batches)]
    if not calib:
        raise ValueError("the reconstruction data yielded no batches; pass a non-empty loader")
    device = next((p.device for p in pruned.parameters()), torch.device("cpu"))
    calib = [to_device(c, device) for c in calib]
    reference.to(device)
    gen = torch.Generator().manual_seed(seed)
    norms = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pruned.modules())

    def recalibrate() -> None:
        if norms:
            recalibrate_bn(pruned, calib)

    done: list[str] = []
    for name in _forward_order(pruned, calib[0]):
        cut = removed.get(name)
        if not cut or not cut["in"]:
            continue
        new, old = pruned.get_submodule(name), reference.get_submodule(name)
        if not _supported(new):
            continue
        recalibrate()
        gone = set(cut["out"])
        keep = torch.tensor([c for c in range(old.weight.shape[0]) if c not in gone], device=device)
        xtx = xty = None
        for inputs in calib:
            got: dict[str, torch.Tensor] = {}
            h_new = new.register_forward_hook(lambda m, i, o: got.__setitem__("x", i[0]))
            h_old = old.register_forward_hook(lambda m, i, o: got.__setitem__("y", o))
            try:
                with eval_mode(pruned), eval_mode(reference):
                    call(reference, inputs)
                    call(pruned, inputs)
            finally:
                h_new.remove()
                h_old.remove()
            y = got["y"].index_select(1 if isinstance(new, nn.Conv2d) else got["y"].dim() - 1, keep)
            rows, targets = _rows(new, got["x"], y, positions, gen)
            if new.bias is not None:
                rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
            rows, targets = rows.double(), targets.double()
            xtx = rows.T @ rows if xtx is None else xtx + rows.T @ rows
            xty = rows.T @ targets if xty is None else xty + rows.T @ targets
        assert xtx is not None and xty is not None
        lam = ridge * float(xtx.diagonal().mean()) + 1e-12
        w = torch.linalg.solve(xtx + lam * torch.eye(xtx.shape[0], dtype=xtx.dtype, device=device), xty)
        if new.bias is not None:
            new.bias.copy_(w[-1].to(new.bias.dtype))
            w = w[:-1]
        new.weight.copy_(w.T.reshape(new.weight.shape).to(new.weight.dtype))
        done.append(name)
    recalibrate()
    return done
