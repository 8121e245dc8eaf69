"""Step 3 of the data flow: score every prunable group into ``scope.Candidate`` s.

A group becomes a candidate when it is prunable, not protected (``ignore`` / ``freeze``) and its
criterion gives finite scores. Each candidate carries what selection needs: its scores, its
channel count in the *original* model (iterative pruning keeps ratios relative to it), the
per-module ratio that overrides the scope, and, for a concatenation, its producers' parts (so
local scope cuts each branch by the ratio). Groups left out are reported with the reason.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Optional

import numpy as np
import torch

from .criteria import is_input_side, member_filter
from .groups import Group
from .indexmap import Pos
from .protect import owner_name as _owner
from .scope import Candidate, Part, producer_parts
from .surgery import resolve_tensor

if TYPE_CHECKING:
    from .plan import Baseline
    from .trace import ChannelGraph

__all__ = ["Candidates", "collect_candidates"]


@dataclass(frozen=True)
class Candidates:
    """What ``collect_candidates`` found: the candidates; the groups left out with their reason
    (frozen, protected, unscorable); (original, current) channels of groups earlier steps already
    cut to one channel (a global ratio still counts them); the ``ratios`` names that matched."""

    candidates: list[Candidate]
    skipped: dict[int, str]
    retired: tuple[int, int]
    used: set[str]


def collect_candidates(graph: "ChannelGraph", score: Callable, side: str, protected: Mapping[int, str],
                       overrides: dict[str, float], baseline: "Baseline | None", name: str) -> Candidates:
    """Score every group of ``graph`` with the bound criterion ``score`` (``criteria.bind_criterion``).
    ``protected``: group id -> why it must stay; ``overrides``: per-module ratios (``plan(ratios=)``);
    ``name``: the criterion's name, for errors. Raises ValueError for scores of the wrong shape, NaN
    for some channels only, or ratios given to coupled modules that disagree."""
    model = graph.model
    cands: list[Candidate] = []
    skipped: dict[int, str] = {}
    used: set[str] = set()
    retired = [0, 0]  # groups that earlier steps cut down to one channel (global ratio counts them)
    for g in graph.groups:
        if not g.prunable:
            if g.n > 1:
                skipped[g.id] = g.frozen_reason()
            elif not g.fixed and baseline is not None and g.id not in protected:
                retired[0] += _original_channels(g, baseline)
                retired[1] += g.n
            continue
        if g.id in protected:
            skipped[g.id] = protected[g.id]
            continue
        tensors = {p.ref: resolve_tensor(model, p.ref) for p in g.params}
        with torch.no_grad():
            scores = np.asarray(score(member_filter(model, g, side), tensors), dtype=np.float64)
        if scores.shape != (g.n,):
            raise ValueError(f"criterion {name} returned scores of shape {scores.shape} for group {g.id} "
                             f"with {g.n} channels; it must return one score per channel")
        if np.isnan(scores).all():
            skipped[g.id] = f"criterion {name} cannot score it"
            continue
        if np.isnan(scores).any():
            raise ValueError(f"criterion {name} returned NaN for some channels of group {g.id} "
                             f"({', '.join(g.layers[:3])}); return finite scores, or NaN for all to skip it")
        n0 = _original_channels(g, baseline)
        producers = [p for p in g.params if not is_input_side(model, p)]
        parts = producer_parts(g, producers, baseline.sizes if baseline is not None else None, n0)
        over, parts, hit = _override(g, producers, parts, overrides)
        used |= hit
        cands.append(Candidate(g, scores, n0, over, parts))
    return Candidates(cands, skipped, (retired[0], retired[1]), used)


def _override(g: Group, producers: list[Pos], parts: list[Part] | None,
              ratios: dict[str, float]) -> tuple[Optional[float], list[Part] | None, set[str]]:
    """The per-module ratios that apply to ``g``: those of the modules whose *outputs* are in the
    group (a conv's filters, a BN's scales). Modules that make the same channels lose them together,
    so they must agree; the producers of a concatenation make different channels (``parts``), so
    each part may take its own producer's ratio. Returns the group's ratio (or None), the parts with
    their ratios set where they differ, and the names of the modules that matched."""
    owner_of = {p: _owner(p.ref) for p in producers}
    hits = {n: r for n, r in ratios.items() if n in set(owner_of.values())}
    if len(set(hits.values())) <= 1:
        return (next(iter(hits.values())) if hits else None), parts, set(hits)
    if parts is None:
        raise ValueError(f"ratios gives {hits} to modules that are coupled (group {g.id}: their output "
                         "channels are removed together); give them one ratio")
    out = []
    for part in parts:
        mine = np.zeros(g.n, dtype=bool)
        mine[part.channels] = True
        makers = {owner_of[p] for p in producers if mine[g.channel_of[p]].any()}
        given = {n: hits[n] for n in makers if n in hits}
        if len(set(given.values())) > 1:
            raise ValueError(f"ratios gives {given} to modules that make the same channels (group {g.id}: "
                             "their output channels are removed together); give them one ratio")
        out.append(dataclasses.replace(part, ratio=next(iter(given.values()))) if given else part)
    return None, out, set(hits)


def _original_channels(g: Group, baseline: "Baseline | None") -> int:
    """Channels ``g`` had in the original model: the original size of a member with one index per
    channel (a producing conv's filters), else the members' total size scaled."""
    if baseline is None:
        return g.n
    for p in g.params:
        ch = g.channel_of[p]
        if p in baseline.sizes and len(ch) == g.n and len(np.unique(ch)) == g.n:
            return baseline.sizes[p]
    now = sum(len(g.channel_of[p]) for p in g.params)
    then = sum(baseline.sizes.get(p, len(g.channel_of[p])) for p in g.params)
    return max(g.n, round(g.n * then / max(now, 1)))
