"""Latency targets: how many channels each group loses so that the model meets a latency, keeping
as much importance as possible.

A MACs target can follow one removal order (``scope``), because every channel's MACs are known up
front. A channel's *time* is not: a conv's latency depends on both its input and its output counts,
so what removing a channel of one group saves depends on how far its neighbours were already cut,
and runtimes are not linear in the counts (kernels work in blocks of channels). So the allocation
is greedy: each step removes, from one unit (a group, or one producer's part of a concatenation, see
``scope.Part``), its ``step`` least important channels, choosing the unit whose step loses the
least importance per millisecond saved. Scores are normalised per unit by their mean, as in global
scope, so units compare; by default (``LatencySettings.value="log"``) a channel's loss is its score
times the unit's original width over the channels it still keeps, so the last channels of a stream
cost more than its first (``_weights``): counted linearly, the cuts pile onto the groups where the
time goes, down to the cap, and on ResNet-20 / digits that cost 1.7 points of accuracy after
fine-tuning against the uniform plan of the same latency (10 seeds; 0.25 with ``log``). Keys live
in a heap; when a step is taken, the units that share a latency term with it (its layers' other
channel groups) get their keys re-computed and pushed again, and stale heap entries are skipped
(lazy deletion by version). Each unit stays within
``max_layer_ratio``; below one measured step of channels it halves (16, 8, 4, ... for a step of
16: the sub-blocks of the SIMD width, and the lookup table, not an assumption, says what each
saves), while a user's ``round_to`` keeps at least one step; ``ratios`` overrides are cut first.

The prediction is only a model: ``plan_for_latency`` measures the pruned model (on a copy), and
while it misses the target by more than the tolerance, aims the next allocation along the line
through the measured plans (``next_aim``) and allocates again (``LatencySettings.rounds`` plans at
most), keeping the closest.
"""
from __future__ import annotations

import heapq
import math
import warnings
from collections import ChainMap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
from torch import nn

from .errors import LatencyTargetWarning
from .record import user_stacklevel
from .indexmap import Pos
from .latency import Calibration, LatencyModel, LatencySettings, MultipleProbe
from .scope import Candidate, GroupCut, choose, local_k, normalised, removed_counts, unit_cap, units

if TYPE_CHECKING:
    from .trace import ChannelGraph

__all__ = ["LatencyRound", "LatencyReport", "allocate", "plan_for_latency", "importance_kept", "next_aim"]


@dataclass(frozen=True)
class LatencyRound:
    """One allocation and its check: goal given to the allocator, its prediction, and the pruned /
    dense latency measured side by side (None when not measured)."""

    goal_ms: float
    predicted_ms: float
    measured_ms: Optional[float] = None
    measured_dense_ms: Optional[float] = None

    @property
    def measured_fraction(self) -> Optional[float]:
        if self.measured_ms is None or not self.measured_dense_ms:
            return None
        return self.measured_ms / self.measured_dense_ms


@dataclass
class LatencyReport:
    """How a latency target was met. ``requested_fraction`` is the target as a fraction of the
    dense model's measured latency ``dense_ms`` (a ms target is converted with it); the pruned model
    is judged by the fraction measured side by side with the dense one, which cancels a slower or
    faster machine at measuring time. ``one_step_less_ms``: the prediction one allocation step earlier."""

    requested_ms: float
    requested_fraction: float
    dense_ms: float
    predicted_ms: float
    one_step_less_ms: float
    step: int
    calibration: Optional[Calibration]
    probe: MultipleProbe
    rounds: list[LatencyRound] = field(default_factory=list)
    chosen: int = 0  # index into rounds of the plan kept
    runtime: str = "onnxruntime"  # where it was measured (LatencySettings.runtime)

    @property
    def predicted_fraction(self) -> float:
        return self.predicted_ms / self.dense_ms

    @property
    def measured_fraction(self) -> Optional[float]:
        return self.rounds[self.chosen].measured_fraction if self.rounds else None

    def __str__(self) -> str:
        lines = [f"target_latency={self.requested_fraction:.3g} of {self.dense_ms:.2f} ms in {self.runtime} "
                 f"({self.requested_ms:.2f} ms): predicted {self.predicted_ms:.2f} ms "
                 f"({self.predicted_fraction:.1%}; one step less {self.one_step_less_ms:.2f} ms)"]
        m = self.measured_fraction
        if m is not None:
            r = self.rounds[self.chosen]
            lines.append(f"  measured {r.measured_ms:.2f} ms vs dense {r.measured_dense_ms:.2f} ms side by side: "
                         f"{m:.1%} ({m / self.requested_fraction - 1:+.1%} off target; "
                         f"{len(self.rounds)} round(s), goals {', '.join(f'{x.goal_ms:.2f}' for x in self.rounds)} ms)")
        if self.calibration is not None:
            lines.append(f"  calibration: {self.calibration}")
        lines.append(f"  channel step: {self.probe}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- allocation
def _weights(n: int, n0: int, value: str) -> np.ndarray:
    """What losing each of a unit's channels costs, per unit of normalised score, in removal order.
    ``linear``: 1 (a channel is worth its score wherever it is). ``log``: ``n0 / kept`` with
    ``kept`` the count before the removal, so keeping ``k`` of ``n0`` channels is worth about
    ``n0 * log(k)`` for even scores: halving any group costs the same share of it, and the last
    channels of a narrow stream cost several times the first (16 -> 8 costs 10.6, 4 -> 2 costs 9.3,
    against 8 and 2 under ``linear``)."""
    if value == "linear":
        return np.ones(n)
    return n0 / np.arange(n, 0, -1, dtype=np.float64)


class _Alloc:
    """State of one greedy allocation (see the module docstring)."""

    def __init__(self, cands: list[Candidate], lat: LatencyModel, mlr: float, step: int, halve: bool,
                 value: str) -> None:
        self.cands, self.lat, self.step, self.halve = cands, lat, step, halve
        self.units = units(cands)
        self.caps = [unit_cap(u, mlr) for u in self.units]
        self.order, self.cost, self.prefix = [], [], []
        for u in self.units:
            norm = normalised(u.scores)
            o = np.argsort(norm, kind="stable")
            self.order.append(u.channels[o])
            self.cost.append(np.concatenate([[0.0], np.cumsum(norm[o] * _weights(u.n, u.n0, value))]))
            group = cands[u.cand].group
            pre: dict[Pos, np.ndarray] = {}
            for p, ch in group.channel_of.items():  # indices per channel, along each timed position
                if p in lat.by_pos:
                    per = np.bincount(ch, minlength=group.n)[u.channels[o]]
                    pre[p] = np.concatenate([[0], np.cumsum(per)])
            self.prefix.append(pre)
        self.terms = [sorted({t for p in pre for t in self.lat.by_pos[p]}) for pre in self.prefix]
        sharing: dict[tuple[str, int], list[int]] = {}
        for i, ts in enumerate(self.terms):
            for t in ts:
                sharing.setdefault(t, []).append(i)
        self.neighbours = [sorted({j for t in ts for j in sharing[t]}) for ts in self.terms]
        self.k = [0] * len(self.units)
        self.removed: dict[Pos, int] = {}

    def set_k(self, i: int, k: int) -> None:
        for p, v in self._removed_with(i, k).items():
            self.removed[p] = v
        self.k[i] = k

    def _removed_with(self, i: int, k: int) -> dict[Pos, int]:
        """Removed counts of unit i's positions if it lost its k least important channels."""
        return {p: self.removed.get(p, 0) + int(pre[k] - pre[self.k[i]]) for p, pre in self.prefix[i].items()}

    def next_k(self, i: int) -> Optional[int]:
        """Removal count after unit i's next step: down to the next multiple of ``step`` below its
        kept count (n=100, step 16: keep 96, then 80, ... 16), then halving (8, 4, 2, 1): a group of
        16 at step 16 can still go to 8, which the table may find faster (ResNet-20's first stage at
        batch 64); not when the step is the user's ``round_to``, which keeps at least one step. A
        group narrower than the step goes one channel at a time. Never past its cap."""
        u, m = self.units[i], self.step
        kept = u.n - self.k[i]
        if m > 1 and u.n >= m:
            if kept <= m and not self.halve:
                return None
            new_kept = (kept - 1) // m * m if kept > m else kept // 2
        else:
            new_kept = kept - 1
        k2 = u.n - new_kept
        return k2 if new_kept >= 1 and k2 <= self.caps[i] else None

    def saving(self, i: int, k2: int) -> float:
        trial = ChainMap(self._removed_with(i, k2), self.removed)
        return sum(self.lat.term_ms(t, self.removed) - self.lat.term_ms(t, trial) for t in self.terms[i])

    def key(self, i: int) -> Optional[tuple[float, int]]:
        k2 = self.next_k(i)
        if k2 is None:
            return None
        saved = self.saving(i, k2)
        if saved <= 1e-12:
            return None  # saves nothing now; re-examined when a neighbour changes
        return (self.cost[i][k2] - self.cost[i][self.k[i]]) / saved, k2

    def cuts(self) -> list[GroupCut]:
        owned: list[list[int]] = [[] for _ in self.cands]
        for i, u in enumerate(self.units):
            owned[u.cand].append(i)
        return [GroupCut(c.group, choose(c.group, c.scores, [self.k[i] for i in mine],
                                         [self.units[i].channels for i in mine]), c.scores)
                for c, mine in zip(self.cands, owned)]


def allocate(cands: list[Candidate], lat: LatencyModel, goal_ms: float, max_layer_ratio: float,
             step: int = 1, round_to: Optional[int] = None, value: str = LatencySettings.value
             ) -> tuple[list[GroupCut], float, float]:
    """Cuts whose predicted latency is at most ``goal_ms``: (cuts, predicted ms, predicted ms one
    step earlier). ``value``: how lost importance is counted (``_weights``). Raises ValueError when
    even every allowed step cannot reach the goal."""
    a = _Alloc(cands, lat, max_layer_ratio, step, halve=round_to is None, value=value)
    for i, u in enumerate(a.units):  # per-module ratio overrides are cut first, locally
        if u.ratio is not None:
            a.set_k(i, local_k(u, u.ratio, round_to, a.caps[i]))
    total = lat.predict(a.removed)
    before = total
    version = [0] * len(a.units)
    heap: list[tuple[float, int, int, int]] = []

    def push(i: int) -> None:
        version[i] += 1
        if a.units[i].ratio is None:
            found = a.key(i)
            if found is not None:
                heapq.heappush(heap, (found[0], i, version[i], found[1]))

    for i in range(len(a.units)):
        push(i)
    while total > goal_ms and heap:
        _, i, v, k2 = heapq.heappop(heap)
        if v != version[i]:
            continue  # stale: a neighbour changed since this key was computed
        saved = a.saving(i, k2)
        before = total
        a.set_k(i, k2)
        total -= saved
        for j in a.neighbours[i]:
            push(j)
    cuts = a.cuts()
    predicted = lat.predict(removed_counts(cuts))
    if predicted > goal_ms * (1 + 1e-9) and not heap:
        raise ValueError(f"the latency target is out of reach: removing every channel allowed leaves "
                         f"{predicted:.2f} ms predicted of {lat.predict({}):.2f} ms, goal {goal_ms:.2f} ms "
                         f"(max_layer_ratio={max_layer_ratio}, channel step {step}, and frozen or ignored "
                         "groups cost what they cost); raise the target or max_layer_ratio")
    return cuts, predicted, before


def importance_kept(cuts: Sequence[GroupCut]) -> float:
    """Fraction of the total importance kept: every group's scores normalised by their mean (as
    global scope and the allocation do), summed over kept channels, over the sum for all channels."""
    kept = total = 0.0
    for c in cuts:
        norm = normalised(np.asarray(c.scores, dtype=np.float64))
        total += float(norm.sum())
        kept += float(norm.sum() - norm[np.asarray(c.remove, dtype=np.int64)].sum())
    return kept / total if total else 1.0


# --------------------------------------------------------------------------- measure and correct
def next_aim(points: Sequence[tuple[float, float]], want: float) -> float:
    """The goal, as a fraction of dense, for the next allocation, so that its plan *measures* ``want``.

    ``points``: (goal, measured) fractions of the plans so far, the dense model (1, 1) first (goals,
    not predictions: the allocation lands up to one step under its goal, and what is chosen is the
    goal). The measured fraction is taken as a straight line in the goal through the latest plan
    and a partner: the plan on the other side of ``want`` closest to it if any (interpolation),
    else the dense model (the longest baseline: two nearby plans on one side give a slope that is
    mostly timing noise, which once sent a ResNet-18 re-plan from goal 0.46 to 0.31).

    A line, not a ratio, because what the latency model misses is partly fixed (per-op and per-call
    costs that pruning does not shrink): on ResNet-20 at batch 64 in ONNX Runtime, plans predicted
    at 0.54 and 0.34 of dense measured 0.62 and 0.50; the line through dense and one of them
    predicts the other within 0.05, the ratio measured / predicted of one misses the other by 0.11
    and 0.18. Where measured latency does not fall with the goal (noise), the ratio want / measured
    is used. The step is at most a factor 1.5 either way from the latest goal, so one measurement
    disturbed by a busy machine cannot throw the next plan far off."""
    p1, m1 = points[-1]
    across = [q for q in points[:-1] if (q[1] - want) * (m1 - want) < 0]
    p0, m0 = min(across, key=lambda q: abs(q[1] - want)) if across else points[0]
    if (m0 - m1) * (p0 - p1) > 0:
        aim = p1 + (want - m1) * (p0 - p1) / (m0 - m1)
    else:
        aim = p1 * want / m1
    return min(1.0, max(p1 / 1.5, min(p1 * 1.5, aim)))


def plan_for_latency(graph: "ChannelGraph", cands: list[Candidate], lat: LatencyModel, requested_ms: float,
                     settings: LatencySettings, max_layer_ratio: float,
                     round_to: Optional[int] = None,
                     pruned: Optional[Callable[[list[GroupCut]], nn.Module]] = None
                     ) -> tuple[list[GroupCut], LatencyReport]:
    """Allocate for ``requested_ms``; then measure and re-allocate as the module docstring says.
    ``pruned(cuts)``: a pruned copy of the model (the planner passes one; the original stays)."""
    step = round_to or lat.probe.multiple
    dense = lat.dense_ms
    want = requested_ms / dense
    report = LatencyReport(requested_ms, want, dense, 0.0, 0.0, step, lat.calibration, lat.probe,
                           runtime=settings.runtime)
    timer = settings.model_timer()
    goal, best, best_err = requested_ms, None, math.inf
    points = [(1.0, 1.0)]  # (goal, measured) fraction of dense of each plan: the dense model first
    for r in range(max(1, settings.rounds)):
        try:
            cuts, predicted, less = allocate(cands, lat, goal, max_layer_ratio, step, round_to, settings.value)
        except ValueError:
            if best is None:
                raise
            break  # a corrected goal out of reach: keep the closest plan so far
        rnd = LatencyRound(goal, predicted)
        if settings.check and pruned is not None:
            d, p = timer([graph.model, pruned(cuts)], graph.traced.inputs, settings.threads)
            rnd = LatencyRound(goal, predicted, float(p), float(d))
        report.rounds.append(rnd)
        got = rnd.measured_fraction
        err = abs(got / want - 1) if got is not None else 0.0
        if err < best_err:
            best, best_err, report.chosen = (cuts, predicted, less), err, r
        if got is None or err <= settings.tolerance:
            break
        points.append((goal / dense, got))
        goal = dense * next_aim(points, want)
    assert best is not None
    cuts, report.predicted_ms, report.one_step_less_ms = best
    got = report.measured_fraction
    if got is not None and best_err > settings.tolerance:
        warnings.warn(
            f"latency target {want:.3g} of dense not met: the closest of {len(report.rounds)} plan(s) measured "
            f"{got:.3g} ({got / want - 1:+.0%}). Raise the target or max_layer_ratio, try round_to=16 (a runtime "
            "may run odd channel counts slowly), or measure on a quieter machine (LatencySettings(refresh=True) "
            "re-times the layers); plan.target has every round", LatencyTargetWarning, stacklevel=user_stacklevel())
    return cuts, report
