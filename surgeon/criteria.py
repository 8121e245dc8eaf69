"""Step 4: scoring. A criterion maps a group to one importance score per channel (low = removed).

Criteria are registered by name; any callable ``(group, tensors) -> array of group.n scores`` works
too. ``tensors`` maps each parameter path of the group to the live tensor (gradients included).
Scores are computed per member (every weight / norm scale in the group, on its coupled dim) and
combined per channel with a reduction.
"""
from __future__ import annotations

from typing import Callable, Mapping, Union

import numpy as np
import torch

from .groups import Group
from .indexmap import Pos

__all__ = ["Criterion", "CRITERIA", "REDUCTIONS", "get_criterion", "member_scores", "reduce_members",
           "l1", "l2"]

Criterion = Callable[[Group, Mapping[str, torch.Tensor]], np.ndarray]
REDUCTIONS = ("mean", "sum", "max", "first")


def reduce_except(t: torch.Tensor, dim: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """sum of fn(t) over every dim but ``dim``: one value per index of the position."""
    others = [d for d in range(t.dim()) if d != dim]
    v = fn(t.detach().float())
    return v.sum(dim=others) if others else v


def scored_members(group: Group, tensors: Mapping[str, torch.Tensor]) -> list[Pos]:
    """Positions that carry learned weights: parameters, not biases or running statistics."""
    return [p for p in group.params if p.ref in tensors and not p.ref.endswith("bias")
            and tensors[p.ref].is_floating_point()]


def member_scores(group: Group, tensors: Mapping[str, torch.Tensor],
                  per_index: Callable[[torch.Tensor], torch.Tensor]) -> list[tuple[Pos, np.ndarray]]:
    """For each scored member, the per-channel sum of the elementwise ``per_index`` (e.g. abs) over
    the channel's weights and over its indices (a flatten
    member contributes all H*W features of a channel). Members not covering a channel give NaN."""
    out = []
    for pos in scored_members(group, tensors):
        v = reduce_except(tensors[pos.ref], pos.dim, per_index).cpu().double().numpy()
        ch = group.channel_of[pos]
        acc = np.zeros(group.n)
        np.add.at(acc, ch, v)
        covered = np.zeros(group.n, dtype=bool)
        covered[ch] = True
        acc[~covered] = np.nan
        out.append((pos, acc))
    return out


def reduce_members(group: Group, scores: list[tuple[Pos, np.ndarray]], reduction: str = "mean") -> np.ndarray:
    """Combine member scores per channel: ``mean`` / ``sum`` / ``max`` over the members covering the
    channel, or ``first``: only the first member in graph order (the producing layer)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    if not scores:
        return np.zeros(group.n)
    m = np.stack([s for _, s in scores])
    if reduction == "first":
        m = m[:1]
    with np.errstate(all="ignore"):
        r = {"mean": np.nanmean, "sum": np.nansum, "max": np.nanmax, "first": np.nanmean}[reduction](m, axis=0)
    return np.nan_to_num(r, nan=0.0)


def l1(group: Group, tensors: Mapping[str, torch.Tensor], reduction: str = "mean") -> np.ndarray:
    """L1 filter norm: sum |w| over each channel's weights, per member, then reduced."""
    return reduce_members(group, member_scores(group, tensors, torch.abs), reduction)


def l2(group: Group, tensors: Mapping[str, torch.Tensor], reduction: str = "mean") -> np.ndarray:
    """L2 filter norm: sqrt(sum w^2) over each channel's weights, per member, then reduced."""
    s = member_scores(group, tensors, torch.square)
    return reduce_members(group, [(p, np.sqrt(v)) for p, v in s], reduction)


CRITERIA: dict[str, Criterion] = {"l1": l1, "l2": l2}


def get_criterion(criterion: Union[str, Criterion]) -> Criterion:
    if callable(criterion):
        return criterion
    if isinstance(criterion, str) and criterion in CRITERIA:
        return CRITERIA[criterion]
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)} or pass a "
                     "callable (group, tensors) -> per-channel scores")
