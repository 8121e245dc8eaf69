"""Step 5: the plan. Decide which channels of which groups go, show it, then apply it.

``surgeon.plan(...)`` only reads the model; ``Plan.apply()`` performs the surgery (atomically);
``surgeon.prune`` (in ``schedule``) does both, in one shot or in steps.
The arguments are checked in ``request``, groups scored into candidates in ``candidates`` (with
``criteria``), how many channels each group loses is ``scope`` (a latency target: ``allocate``),
the MACs / params prediction ``cost``, and iterative pruning ``schedule``.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from .cost import CostModel, Footprint, cost_model
from .latency import LatencySettings
from .criteria import (Criterion, accumulate_gradients, bind_criterion, check_reduction, check_side,
                       get_criterion, needs_data)
from .trace import ChannelGraph, FrozenGroupWarning, trace
from .errors import NothingToPrune, SurgeryError, TraceFailure
from .graph import iter_module_calls, layer_positions
from .indexmap import Pos
from .planfile import cuts_from_dict, plan_to_dict, read_plan, save_plan
from .protect import owner_name as _owner
from .protect import protected_groups
from .scope import DEFAULT_MAX_LAYER_RATIO, Candidate, GroupCut, Request, TargetReport, removed_counts, select
from .surgery import ShapeMismatch, apply_removal
from .capture import node_source
from .candidates import collect_candidates
from .gcpause import gc_paused
from .record import user_stacklevel
from .request import DEFAULT_RATIO, check_ratios, check_request, module_names

if TYPE_CHECKING:
    from .allocate import LatencyReport

__all__ = ["Plan", "GroupCut", "Baseline", "plan", "load_plan"]


@dataclass(frozen=True)
class Baseline:
    """The original model, for iterative pruning: parameter position sizes and footprint. Ratios
    and targets of later steps are fractions of this, not of the already smaller model."""

    sizes: dict[Pos, int]
    footprint: Footprint


def _functional_cut(model: nn.Module, owner: str, pos: dict[Pos, np.ndarray]) -> dict[str, list[int]]:
    """"in" / "out" of a module whose tensors are used functionally (not called as a layer): read
    off its weight's dims when it is a known layer (``weight_dims``: which dim is in, which out),
    else every cut index of its tensors counts as both."""
    from .registry import layer_spec
    m = model.get_submodule(owner) if owner else model
    spec = layer_spec(m)
    empty = np.zeros(0, int)
    if spec is not None and spec.weight_dims is not None:
        w_in, w_out = spec.weight_dims
        prefix = f"{owner}.weight" if owner else "weight"
        return {"out": pos.get(Pos("p", prefix, w_out), empty).tolist(),
                "in": pos.get(Pos("p", prefix, w_in), empty).tolist()}
    idx = sorted({int(i) for p, v in pos.items() if p.kind == "p" and _owner(p.ref) == owner for i in v})
    return {"out": idx, "in": idx}


class Plan:
    """Which channels of which groups to remove. Nothing changes until ``apply()``.

    before / after: MACs and parameters of the model now and once the plan is applied (``after``
    is predicted exactly from per-node counts, see ``surgeon.cost``). target: how a
    ``target_macs`` / ``target_params`` request was met (``TargetReport``), or a latency target
    (``LatencyReport``: predicted and measured), else None.
    """

    def __init__(self, graph: ChannelGraph, cuts: list[GroupCut], skipped: dict[int, str],
                 cost: CostModel | None = None, target: "TargetReport | LatencyReport | None" = None) -> None:
        self.graph = graph
        self.cuts = cuts
        self.skipped = skipped  # group id -> why it is not cut
        self.target = target
        self.before: Footprint | None = cost.before if cost else None
        self.after: Footprint | None = cost.footprint(removed_counts(cuts)) if cost else None
        self._cost = cost
        self.applied = False

    @property
    def model(self) -> nn.Module:
        return self.graph.model

    def removed_positions(self) -> dict[Pos, np.ndarray]:
        out: dict[Pos, np.ndarray] = {}
        for cut in self.cuts:
            if len(cut.remove):
                out.update(cut.group.removed_indices(cut.remove))
        return out

    def removed(self) -> dict[str, dict[str, list[int]]]:
        """{qualified module name: {"out": [...], "in": [...]}} for every module whose parameters
        lose entries. Indices are in the original model's numbering; "in" are the indices of the
        layer's input channels (input features for Linear), "out" of its output channels."""
        pos = self.removed_positions()
        lose = {_owner(p.ref) for p, idx in pos.items() if p.kind == "p" and len(idx)}
        result: dict[str, dict[str, list[int]]] = {}
        for node, qn, _, entry in iter_module_calls(self.graph.traced):
            if qn not in lose or qn in result:
                continue
            pin, pout = layer_positions(node, entry.layer.in_dim, entry.layer.out_dim)
            result[qn] = {"out": pos.get(pout, np.zeros(0, int)).tolist(),
                          "in": pos.get(pin, np.zeros(0, int)).tolist()}
        for p, idx in pos.items():  # tensors used directly in forward (F.conv2d(x, self.weight), gammas)
            owner = _owner(p.ref)
            if p.kind == "p" and len(idx) and owner not in result:
                result[owner] = _functional_cut(self.model, owner, pos)
        return dict(sorted(result.items()))

    def to_dict(self) -> dict[str, Any]:
        """The decision as JSON-able data (see ``surgeon.planfile``): re-applies to a fresh instance
        of the same model with ``surgeon.load_plan(model, x, plan.to_dict())``."""
        return plan_to_dict(self)

    def save(self, path: Any) -> Any:
        """Write the decision to a readable JSON file; ``surgeon.load_plan(model, x, path)`` reads it."""
        return save_plan(self, path)

    def summary(self) -> str:
        lines = []
        for cut in self.cuts:
            g = cut.group
            lines.append(f"group {g.id:3d}: {g.n:5d} -> {cut.kept:5d} channels  ({', '.join(g.layers[:3])}"
                         + (", ..." if len(g.layers) > 3 else "") + ")")
        for gid, why in sorted(self.skipped.items()):
            lines.append(f"group {gid:3d}: kept whole: {why}")
        removed = sum(len(c.remove) for c in self.cuts)
        total = sum(c.group.n for c in self.cuts)
        lines.append(f"{removed} of {total} prunable channels removed in {len(self.cuts)} groups")
        if self.before is not None and self.after is not None:
            b, a = self.before, self.after
            lines.append(f"MACs: {b.macs:,} -> {a.macs:,} ({a.macs / max(b.macs, 1):.1%});  "
                         f"params: {b.params:,} -> {a.params:,} ({a.params / max(b.params, 1):.1%})")
        if self.target is not None:
            lines.append(str(self.target))
        return "\n".join(lines)

    def apply(self, verify: bool = False) -> nn.Module:
        """Physically prune the model in place and return it.

        Atomic: if any step or post-condition fails, the model is restored exactly and a
        SurgeryError is raised. ``verify=True`` also runs the surgical-equivalence oracle
        (needs a deep copy of the model; see ``surgeon.verify``).

        The post-condition runs the pruned model's own forward on the example inputs. If a tensor
        then has another size than planned (a size in the code that did not follow the cut), the
        groups it belongs to are kept whole instead, with a ``FrozenGroupWarning`` naming the op
        and its source line, and the rest of the plan is applied.
        """
        if self.applied:
            raise ValueError("this plan was already applied; make a new plan for the pruned model")
        for _ in range(len(self.cuts) + 1):
            try:
                self._apply_once(verify)
                break
            except SurgeryError as e:
                if not (self._freeze_mismatched(e) or self._freeze_breaking(e)):
                    raise
        self.applied = True
        return self.model

    def _apply_once(self, verify: bool) -> None:
        check: Callable[[], None] | None = None
        if verify:
            from .verify import assert_equivalent, zeroed_reference
            reference = zeroed_reference(self.model, self.removed())

            def oracle() -> None:  # runs inside the surgery's rollback scope
                assert_equivalent(reference, self.model, self.graph.traced.inputs,
                                  outputs=self.graph.keep_outputs)
            check = oracle
        with gc_paused():  # see gcpause.py
            apply_removal(self.graph, self.removed_positions(), self.graph.traced.inputs, check)

    def _freeze_breaking(self, e: SurgeryError) -> bool:
        """The pruned model's forward raised (a size in the code that did not follow the cut, seen
        only at run time): find the first cut that breaks it by bisection over dry runs (each one
        restored), keep that group whole with a warning, and let ``apply`` retry the rest."""
        if not isinstance(e.__cause__, TraceFailure):
            return False
        cuts = [c for c in self.cuts if len(c.remove)]

        def breaks(subset: list[GroupCut]) -> bool:
            removed: dict[Pos, np.ndarray] = {}
            for c in subset:
                removed.update(c.group.removed_indices(c.remove))
            try:
                apply_removal(self.graph, removed, self.graph.traced.inputs, _dry_run)
            except SurgeryError as err:
                return not isinstance(err.__cause__, _DryRun)
            return False  # not reached: the dry run always rolls back

        lo, hi = 1, len(cuts)  # smallest prefix that breaks: cuts[hi - 1] is the culprit
        if not cuts or not breaks(cuts):
            return False
        while lo < hi:
            mid = (lo + hi) // 2
            if breaks(cuts[:mid]):
                hi = mid
            else:
                lo = mid + 1
        bad = cuts[hi - 1]
        warnings.warn(f"group {bad.group.id} ({', '.join(bad.group.layers[:3])}) is kept whole: after the cut "
                      f"the model's own forward failed ({e.__cause__})", FrozenGroupWarning, stacklevel=user_stacklevel())
        self.skipped[bad.group.id] = "the model's forward failed after this cut"
        self.cuts = [c for c in self.cuts if c is not bad]
        if self._cost is not None:
            self.after = self._cost.footprint(removed_counts(self.cuts))
        return True

    def _freeze_mismatched(self, e: SurgeryError) -> bool:
        """Drop the cuts of the groups whose tensors came out of the wrong size; False if none."""
        cause = e.__cause__
        if not isinstance(cause, ShapeMismatch):
            return False
        wrong = set(cause.positions)
        nodes = {n.name: n for n in self.graph.traced.gm.graph.nodes}
        dropped = [c for c in self.cuts if len(c.remove) and wrong & set(c.group.channel_of)]
        if not dropped:
            return False
        def where(p: Pos) -> str:
            name = p.ref.partition("#")[0]
            source = node_source(nodes[name]) if name in nodes else None
            return f"node {name}" + (f" ({source})" if source else "")

        for c in dropped:
            places = sorted({where(p) for p in wrong if p in c.group.channel_of})
            warnings.warn(f"group {c.group.id} ({', '.join(c.group.layers[:3])}) is kept whole: after the "
                          f"cut, the model's own forward computed another size at {'; '.join(places[:3])}",
                          FrozenGroupWarning, stacklevel=user_stacklevel())
            self.skipped[c.group.id] = "a size in the code did not follow the cut"
        self.cuts = [c for c in self.cuts if c not in dropped]
        if self._cost is not None:
            self.after = self._cost.footprint(removed_counts(self.cuts))
        return True


class _DryRun(Exception):
    """Raised after a trial surgery succeeded, so that it is rolled back."""


def _dry_run() -> None:
    raise _DryRun()


def plan(model: nn.Module, example_inputs: Any, ratio: float = DEFAULT_RATIO,
         criterion: Union[str, Criterion] = "l1", scope: str = "local",
         ignore: Sequence[Any] | None = None, round_to: int | None = None,
         leaf_modules: Sequence[Any] = (), *, reduction: str = "mean", side: str = "all",
         max_layer_ratio: float | None = None, ratios: Mapping[Any, float] | None = None,
         target_macs: float | None = None, target_params: float | None = None,
         data: Iterable[Any] | None = None, loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
         baseline: Baseline | None = None, tracer: str = "auto",
         keep_outputs: Sequence[int] | None = None, freeze: Sequence[Any] | None = None,
         target_latency: float | None = None, target_latency_ms: float | None = None,
         latency: "LatencySettings | None" = None) -> Plan:
    """Trace ``model``, score every prunable group and decide what to remove (nothing is changed).

    ratio: fraction of channels removed, in [0, 1): from each group (local scope) or from all
        prunable channels ranked together (global scope). Default 0.5; a group never loses all
        its channels.
    criterion: a name in ``surgeon.criteria.CRITERIA`` ("l1", "l2", "fpgm", "bn_scale", "taylor",
        "random") or a callable (group, tensors) -> per-channel scores.
    scope: "local" (same ratio in every group; the channels of a concatenation are cut per
        producer, so each branch loses that ratio) or "global" (see ``surgeon.scope``).
    ignore: modules (or qualified names) whose *output* channels stay, as Torch-Pruning's
        ``ignored_layers``: their inputs may still shrink (``ignore=[model.fc]`` on a Linear 512 -> 10
        may give a Linear 256 -> 10). A container ignores every layer in it. A module not called as
        a layer (its tensors used functionally) keeps all its parameters, with a warning. No need
        to ignore the classifier: the model's outputs are never pruned (see ``keep_outputs``).
    freeze: modules (or qualified names) that stay exactly as they are: every group touching any of
        their parameters is kept whole, so their inputs keep their width too.
    round_to: keep channel counts multiples of this number (e.g. 8 for vectorised kernels).
    reduction: how a group's members combine per channel: "mean", "sum", "max" or "first".
    side: which members score: "all", "out" (filters and norm scales) or "in" (the consumers'
        input kernels: whole input channels are scored, then removed with their producers).
    max_layer_ratio: the most one group may lose, in (0, 1]; default 0.9 for global scope and
        targets, no cap otherwise.
    ratios: per-module overrides {module or name: ratio} for the groups holding those modules'
        output channels; those groups are cut locally, the rest as the scope says. The producers
        of one concatenation may take different ratios (each loses its own share).
    target_macs / target_params: instead of a ratio, the fraction of the original MACs /
        parameters to keep, in (0, 1]; the plan keeps at most that, and one step less of the
        removal order (one channel in global scope; the next common ratio in local scope; with
        round_to, round_to channels) would keep more. ``Plan.target`` reports both figures.
    target_latency / target_latency_ms: instead of a ratio, a latency to reach: a fraction in (0, 1]
        of the dense model's latency measured in ``latency.runtime`` (ONNX Runtime CPU by default,
        or torch eager), or milliseconds. Channels are
        allocated across groups to lose the least importance per millisecond saved (see
        ``surgeon.allocate``; ``scope`` does not apply), predicted from a cached per-layer lookup
        table (``surgeon.latency``), then the pruned model is measured and re-allocated while it
        misses by more than 5% (``LatencySettings.tolerance``). ``Plan.target`` is a ``LatencyReport`` (predicted vs measured).
    latency: ``surgeon.LatencySettings`` (threads, rounds, tolerance, cache refresh, ...).
    data, loss_fn: for "taylor": ``(inputs, target)`` batches (a list or a DataLoader; a few
        are enough, e.g. ``list(itertools.islice(loader, 8))``) and ``loss_fn(output, target)``.
    baseline: the original model's sizes, set by iterative pruning (``prune(..., steps=k)``).
    tracer: "auto" (symbolic torch.fx, falling back to running the real forward when fx fails or
        inputs are keyword arguments), "fx" or "concrete" (see ``surgeon.trace``).
    keep_outputs: indices of the model's (flattened) output tensors whose shapes must stay;
        default all. Outputs left out may lose channels (a detector's auxiliary feature maps).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    req = check_request(ratio, scope, round_to, max_layer_ratio, target_macs, target_params,
                        target_latency, target_latency_ms)
    if latency is not None and not isinstance(latency, LatencySettings):
        raise TypeError(f"latency must be a surgeon.LatencySettings, got {type(latency).__name__}")
    fn = get_criterion(criterion)
    check_reduction(reduction)
    check_side(side)
    if needs_data(fn) and (data is None or loss_fn is None):
        raise ValueError(f"criterion {getattr(fn, '__name__', fn)!r} needs gradients: pass data=[(inputs, "
                         "target), ...] (a few batches) and loss_fn=(output, target) -> loss")
    ignored = module_names(model, ignore or (), "ignore")
    frozen = module_names(model, freeze or (), "freeze")
    overrides = check_ratios(model, ratios)
    with gc_paused():  # see gcpause.py: 30% of a large model's planning time was the collector
        graph, cost, protected, found = _score(model, example_inputs, leaf_modules, tracer, keep_outputs, ignored,
                                               frozen, fn, reduction, side, overrides, baseline, data, loss_fn)
    cands, skipped, retired, used = found.candidates, found.skipped, found.retired, found.used
    if protected.strict:
        warnings.warn(f"ignored module(s) {list(protected.strict[:5])} are not called as layers (their tensors "
                      "are used functionally or inside another module), so their output side is unknown: every "
                      "group touching their parameters is kept whole, as with freeze=", UserWarning,
                      stacklevel=user_stacklevel())
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"ratios names {unused}, whose output channels are not in any prunable group "
                         "(frozen, ignored or the model's output); remove them from ratios")
    if not cands:
        why = "; ".join(f"group {k}: {v}" for k, v in list(skipped.items())[:5]) or "no group has parameters"
        raise NothingToPrune(f"{type(model).__name__} has nothing prunable: every group is frozen or "
                             f"ignored ({why})")
    if req.target is not None and req.target[0] in ("latency", "latency_ms"):
        return _latency_plan(graph, cands, skipped, cost, req, latency or LatencySettings())
    reference = baseline.footprint if baseline is not None else cost.before
    cuts, report = select(cands, req, lambda cs: cost.footprint(removed_counts(cs)), reference, tuple(retired))
    return Plan(graph, cuts, skipped, cost, report)


def _score(model: nn.Module, example_inputs: Any, leaf_modules: Sequence[Any], tracer: str,
           keep_outputs: Sequence[int] | None, ignored: list[str], frozen: list[str], fn: Any, reduction: str,
           side: str, overrides: dict[str, float], baseline: Baseline | None, data: Any, loss_fn: Any):
    """Trace, cost model, protection and scored candidates: the part of ``plan`` that only reads."""
    graph = trace(model, example_inputs, leaf_modules=leaf_modules, tracer=tracer, keep_outputs=keep_outputs)
    protected = protected_groups(graph, ignored, frozen)
    cost = cost_model(graph)
    grads = accumulate_gradients(model, data, loss_fn) if needs_data(fn) else None
    score = bind_criterion(fn, reduction, model=model, grads=grads)
    found = collect_candidates(graph, score, side, protected.reasons, overrides, baseline,
                               getattr(fn, "__name__", type(fn).__name__))
    return graph, cost, protected, found


def load_plan(model: nn.Module, example_inputs: Any, source: Any, **trace_kwargs: Any) -> Plan:
    """Trace ``model`` and rebuild a stored plan for it (nothing is changed until ``apply()``).

    ``source``: a path written by ``Plan.save`` or the dict of ``Plan.to_dict()`` (see
    ``surgeon.planfile``). ``trace_kwargs`` go to ``surgeon.trace`` (``leaf_modules``, ``tracer``,
    ``keep_outputs``). Raises PlanMismatch naming the tensor when the plan was made for another model."""
    data = read_plan(source)
    graph = trace(model, example_inputs, **trace_kwargs)
    cuts, skipped = cuts_from_dict(graph, data)
    return Plan(graph, cuts, skipped, cost_model(graph))


def _latency_plan(graph: ChannelGraph, cands: list[Candidate], skipped: dict[int, str], cost: CostModel,
                  req: Request, settings: LatencySettings) -> Plan:
    """Measure (or read the cached) latency table, then allocate for the target (``surgeon.allocate``)."""
    from .allocate import plan_for_latency
    from .latency import build_latency_model

    assert req.target is not None
    lat = build_latency_model(graph, settings, cost)
    metric, value = req.target
    ms = value * lat.dense_ms if metric == "latency" else value
    mlr = DEFAULT_MAX_LAYER_RATIO if req.max_layer_ratio is None else req.max_layer_ratio
    cuts, report = plan_for_latency(graph, cands, lat, ms, settings, mlr, req.round_to,
                                    pruned=lambda cs: copy.deepcopy(Plan(graph, cs, {})).apply())
    return Plan(graph, cuts, skipped, cost, report)
