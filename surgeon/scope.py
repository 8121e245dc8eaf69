"""How many channels each group loses: local and global scope, per-module ratios, MACs / params
targets. The criteria say *which* channels of a group are the least important; this module says
*how many* go, and hands back one ``GroupCut`` per group.

- Parts: a group whose channels come from several layers (a concatenation: SqueezeNet's Fire
  module concatenates a 1x1 and a 3x3 expand conv, GoogLeNet's inception four branches) is decided
  per *producer*, not as one pool: every channel is made by exactly one producer, and the channels of
  different producers do not compare (a 3x3 filter has 9x the weights of a 1x1 filter, so several
  times its L1: pooled, the 1x1 branch would lose all but one filter and the 3x3 branch none).
  ``producer_parts`` finds them from the group's output-side members; most groups are one part.
- Local scope: every part loses the same fraction of its channels (so each concatenated branch does).
- Global scope: the channels of all parts are ranked together. Raw scores are not comparable
  across layers (a layer with 10x larger weights would never lose a channel under L1), so each
  part's scores are first divided by their mean: a channel scoring 0.5 is half as important as an
  average channel *of its own producer*. The mean, rather than the max or the sum, is used because it
  depends neither on one outlier (max) nor on the part's width (sum: wide parts would have small
  normalised scores and be cut hardest).
- ``max_layer_ratio`` caps what one part may lose (default 0.9 for global scope and targets), and
  no part ever loses all its channels.
- Latency targets are not a removal order but an allocation (``surgeon.allocate``): it uses the
  same units, caps and normalised scores, from here.
- Targets (``target_macs`` / ``target_params``: fraction of the original kept) are reached by a
  binary search over the removal order: the global ranking (global scope) or the common ratio
  (local scope). Each step of that order removes one more channel, so the result keeps at most the
  target and one step fewer would keep more than the target.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from .cost import Footprint
from .groups import Group
from .indexmap import Pos

__all__ = ["removed_counts", "GroupCut", "Candidate", "Part", "Request", "TargetReport", "select", "producer_parts",
           "choose", "Unit", "units", "unit_cap", "normalised", "local_k", "DEFAULT_MAX_LAYER_RATIO"]

DEFAULT_MAX_LAYER_RATIO = 0.9
SCOPES = ("local", "global")


@dataclass
class GroupCut:
    """The decision for one group: which of its channels are removed, and their scores."""

    group: Group
    remove: np.ndarray
    scores: np.ndarray

    @property
    def kept(self) -> int:
        return self.group.n - len(self.remove)


@dataclass(frozen=True)
class Part:
    """Channels of a group made by one producer (one input of a concatenation), as indices into the
    group's channels, and how many it had in the original model (``n0``). ``ratio``: a per-module
    override (``ratios=``) for this producer only, where the producers of one concatenation were
    given different ratios."""

    channels: np.ndarray
    n0: int
    ratio: Optional[float] = None


@dataclass
class Candidate:
    """A prunable group with its scores. ``n0``: its channel count in the original model (smaller
    ``group.n`` means earlier iterative steps already cut it); ``ratio``: a per-module override;
    ``parts``: its channels split by producer (``producer_parts``), None when one layer makes them all."""

    group: Group
    scores: np.ndarray
    n0: int
    ratio: Optional[float] = None
    parts: Optional[list[Part]] = None

    def all_parts(self) -> list[Part]:
        return self.parts if self.parts else [Part(np.arange(self.group.n), self.n0)]


@dataclass(frozen=True)
class Request:
    """What the user asked for. ``ratio`` is the fraction of the original channels removed;
    ``target`` is ("macs" | "params", fraction of ``reference`` kept)."""

    scope: str = "local"
    ratio: float = 0.5
    target: Optional[tuple[str, float]] = None
    max_layer_ratio: Optional[float] = None
    round_to: Optional[int] = None


@dataclass(frozen=True)
class TargetReport:
    """How a MACs / params target was met: ``achieved`` is the kept fraction of the reference;
    ``one_step_less`` is what removing one channel step less would keep (above the target, unless
    nothing had to be removed)."""

    metric: str
    requested: float
    achieved: float
    one_step_less: float

    def __str__(self) -> str:
        label = {"macs": "MACs", "params": "parameters"}.get(self.metric, self.metric)
        return (f"target_{self.metric}={self.requested:g}: keeps {self.achieved:.3%} of the {label} "
                f"(one channel step less would keep {self.one_step_less:.3%})")


def producer_parts(group: Group, producers: Sequence[Pos], sizes: Mapping[Pos, int] | None = None,
                   n0: int | None = None) -> list[Part] | None:
    """Split a group's channels by the members that make them: ``producers`` are its output-side
    positions (filters, biases, norm scales; not the consumers' input kernels). Channels covered by
    the same producers form one part, so each input of a concatenation is a part of its own (in a
    SqueezeNet Fire module, the 64 channels of expand1x1 and the 64 of expand3x3); a member covering
    every channel (a BatchNorm after the concatenation) separates nothing. None when there is one part.

    ``sizes`` (iterative pruning: the original model's position sizes) gives each part its original
    count, read off a producer covering exactly that part; else the part's share of ``n0``."""
    if group.aligned:  # every member covers every channel: one part
        return None
    n = group.n

    def covers_all(ch: np.ndarray) -> bool:
        seen = np.zeros(n, dtype=bool)
        seen[ch] = True
        return bool(seen.all())
    partial = [p for p in producers if not covers_all(group.channel_of[p])]
    if not partial:
        return None
    cover = np.zeros((n, len(partial)), dtype=bool)
    for j, p in enumerate(partial):
        cover[group.channel_of[p], j] = True
    _, first, labels = np.unique(cover, axis=0, return_index=True, return_inverse=True)
    if len(first) == 1:
        return None
    labels = labels.reshape(-1)
    parts = []
    for label in np.argsort(first, kind="stable"):  # in the order of the group's channels
        channels = np.flatnonzero(labels == label)
        parts.append(Part(channels, _part_n0(group, channels, partial, sizes, n0)))
    return parts


def _part_n0(group: Group, channels: np.ndarray, producers: list[Pos], sizes: Mapping[Pos, int] | None,
             n0: int | None) -> int:
    if sizes is None or n0 is None:
        return len(channels)
    for p in producers:
        ch = group.channel_of[p]
        if p in sizes and len(ch) == len(channels) and np.array_equal(np.sort(ch), channels):
            return sizes[p]
    return max(len(channels), round(len(channels) * n0 / group.n))


@dataclass
class Unit:
    """What scope decides on: one part of a candidate (the whole group, or one producer's channels)."""

    cand: int
    channels: np.ndarray
    n0: int
    scores: np.ndarray
    ratio: Optional[float]

    @property
    def n(self) -> int:
        return len(self.channels)


def units(cands: list[Candidate]) -> list[Unit]:
    return [Unit(i, p.channels, p.n0, c.scores[p.channels], p.ratio if p.ratio is not None else c.ratio)
            for i, c in enumerate(cands) for p in c.all_parts()]


def unit_cap(u: Unit, mlr: float | None) -> int:
    """Most channels ``u`` may lose now: at most ``mlr`` of its original channels in total, and it
    keeps at least one."""
    if mlr is None:
        return u.n - 1
    already = u.n0 - u.n
    return max(0, min(u.n - 1, math.floor(mlr * u.n0 + 1e-9) - already))


def _round(u: Unit, k: int, round_to: int | None, cap: int) -> int:
    """Adjust a removal count so the kept count is a multiple of ``round_to`` (nearest; at least
    round_to), within [0, cap] (n=100, k=52, round_to=8: keep 48, remove 52)."""
    n = u.n
    k = min(max(k, 0), cap)
    if round_to and n >= round_to:
        kept = max(round_to, int(round((n - k) / round_to)) * round_to)
        k = min(max(n - kept, 0), cap)
    return k


def local_k(u: Unit, ratio: float, round_to: int | None, cap: int) -> int:
    """Channels to remove for ``ratio`` of the original n0: keep n0 - floor(ratio * n0), rounded
    (ratio 0.5, n0=100, round_to=8: keep 48), minus what earlier steps removed."""
    n0 = u.n0
    kept = n0 - math.floor(ratio * n0 + 1e-9)
    if round_to and n0 >= round_to:
        kept = max(round_to, int(round(kept / round_to)) * round_to)
    return min(max(u.n - max(kept, 1), 0), cap)


def choose(group: Group, scores: np.ndarray, k: int | Sequence[int],
           parts: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The k lowest-scored channels (of each part: ``k[i]`` of ``parts[i]``), then give back one
    channel to any position that would be left empty (a concat input whose channels all scored low
    must keep one, or its conv vanishes)."""
    if parts is None:
        parts, k = [np.arange(group.n)], [k]
    gone = np.zeros(group.n, dtype=bool)
    for channels, kp in zip(parts, k):
        gone[channels[np.argsort(scores[channels], kind="stable")[:kp]]] = True
    seen: set[int] = set()
    for ch in group.channel_of.values():
        if id(ch) in seen or not len(ch):  # members often share one channel array
            continue
        seen.add(id(ch))
        if gone[ch].all():
            present = np.unique(ch)
            gone[present[np.argmax(scores[present])]] = False  # the first best, as max() picks
    return np.flatnonzero(gone).astype(np.int64)


def normalised(scores: np.ndarray) -> np.ndarray:
    mean = float(np.mean(scores))
    return scores / mean if mean > 0 else np.zeros_like(scores)


def _global_order(us: list[Unit], caps: list[int]) -> list[int]:
    """Unit index of each channel in global removal order (lowest normalised score first), skipping
    channels beyond their unit's cap."""
    keys = [(s, i) for i, u in enumerate(us) for s in np.sort(normalised(u.scores))]
    keys.sort(key=lambda t: t[0])  # stable: ties keep unit order
    taken = [0] * len(us)
    order = []
    for _, i in keys:
        if taken[i] < caps[i]:
            taken[i] += 1
            order.append(i)
    return order


def _counts_at(order: list[int], k: int, n: int) -> list[int]:
    counts = [0] * n
    for i in order[:k]:
        counts[i] += 1
    return counts


def select(cands: list[Candidate], req: Request,
           footprint: Callable[[list[GroupCut]], Footprint] | None = None,
           reference: Footprint | None = None,
           retired: tuple[int, int] = (0, 0)) -> tuple[list[GroupCut], TargetReport | None]:
    """Decide every candidate's cut. ``footprint`` predicts MACs / params of a set of cuts (needed
    for targets); ``reference`` is what target fractions are relative to (the original model);
    ``retired``: (original, current) channels of groups that earlier iterative steps cut down to one
    channel: no longer candidates, but part of the global ratio's count."""
    mlr = req.max_layer_ratio
    if mlr is None and (req.scope == "global" or req.target is not None):
        mlr = DEFAULT_MAX_LAYER_RATIO
    us = units(cands)
    caps = [unit_cap(u, mlr) for u in us]
    fixed = {i: local_k(u, u.ratio, req.round_to, caps[i]) for i, u in enumerate(us) if u.ratio is not None}
    free = [i for i in range(len(us)) if i not in fixed]

    owned: list[list[int]] = [[] for _ in cands]  # each candidate's us
    for i, u in enumerate(us):
        owned[u.cand].append(i)

    def cuts_for(free_k: dict[int, int]) -> list[GroupCut]:
        ks = {**fixed, **free_k}
        cuts = []
        for c, mine in zip(cands, owned):
            k = [_round(us[i], ks[i], req.round_to, caps[i]) for i in mine]
            cuts.append(GroupCut(c.group, choose(c.group, c.scores, k, [us[i].channels for i in mine]), c.scores))
        return cuts

    # one "state" per step of the removal order: state(j) gives each free unit its count
    if req.scope == "global":
        order = _global_order([us[i] for i in free], [caps[i] for i in free])
        states = len(order) + 1

        def state(j: int) -> dict[int, int]:
            return dict(zip(free, _counts_at(order, j, len(free))))
    elif req.target is not None:  # local scope walks every common ratio only to meet a target
        mlr_top = 1.0 if mlr is None else mlr
        steps = sorted({j / us[i].n0 for i in free for j in range(1, us[i].n0)
                        if j / us[i].n0 <= mlr_top + 1e-12})
        ratios = [0.0] + steps
        states = len(ratios)

        def state(j: int) -> dict[int, int]:
            return {i: local_k(us[i], ratios[j], req.round_to, caps[i]) for i in free}

    if req.target is None:
        if req.scope == "local":
            return cuts_for({i: local_k(us[i], req.ratio, req.round_to, caps[i]) for i in free}), None
        n0 = sum(us[i].n0 for i in free) + retired[0]
        done = sum(us[i].n0 - us[i].n for i in free) + retired[0] - retired[1]
        return cuts_for(state(min(states - 1, max(0, math.floor(req.ratio * n0 + 1e-9) - done)))), None

    assert footprint is not None and reference is not None
    metric, frac = req.target
    goal = frac * getattr(reference, metric)

    @functools.lru_cache(maxsize=None)
    def kept(j: int) -> float:
        return getattr(footprint(cuts_for(state(j))), metric)

    if kept(0) <= goal:
        return cuts_for(state(0)), TargetReport(metric, frac, kept(0) / getattr(reference, metric),
                                                kept(0) / getattr(reference, metric))
    lo, hi = 0, states - 1  # kept(lo) > goal; find the smallest hi with kept(hi) <= goal
    if kept(hi) > goal:
        best = kept(hi) / getattr(reference, metric)
        raise ValueError(f"target_{metric}={frac:g} is out of reach: removing every channel allowed "
                         f"keeps {best:.1%} of the {metric} (max_layer_ratio={mlr}, and frozen or "
                         "ignored groups cost what they cost); raise the target or max_layer_ratio")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if kept(mid) <= goal:
            hi = mid
        else:
            lo = mid
    ref = getattr(reference, metric)
    return cuts_for(state(hi)), TargetReport(metric, frac, kept(hi) / ref, kept(lo) / ref)


def removed_counts(cuts: list[GroupCut]) -> dict[Pos, int]:
    """How many indices each position loses."""
    out: dict[Pos, int] = {}
    for cut in cuts:
        if len(cut.remove):
            for p, idx in cut.group.removed_indices(cut.remove).items():
                out[p] = len(idx)
    return out
