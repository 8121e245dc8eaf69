"""surgeon: a structured-pruning graph surgeon for PyTorch.

Data flow, one module each: trace (torch.fx + shapes) -> graph (networkx channel positions) ->
groups (coupled channels) -> criteria (scores) -> plan -> surgery (physical removal) -> export
(ONNX + onnxruntime parity) -> bench.

    import surgeon
    graph = surgeon.trace(model, x)            # graph.nx, graph.groups, graph.summary()
    plan = surgeon.plan(model, x, ratio=0.5)   # plan.removed(), plan.summary()
    plan.apply()                               # prunes in place, atomically
    surgeon.export_onnx(model, x, "model.onnx")
"""
from __future__ import annotations

from .checkpoint import load, save
from .cost import Footprint
from .count import count
from .criteria import CRITERIA, REDUCTIONS, accumulate_gradients
from .trace import ChannelGraph, FrozenGroupWarning, trace
from .errors import LatencyTargetWarning, NothingToPrune, SurgeryError, TraceFailure, ValueDependentWarning
from .groups import Group
from .indexmap import IndexMap, Pos
from .latency import LatencySettings
from .mask import mask, remove_masks, sparsity
from .plan import GroupCut, Plan, load_plan, plan
from .planfile import PlanMismatch
from .regularize import bn_l1_penalty, bn_l1_subgradient_
from .schedule import prune, prune_iteratively
from .scope import TargetReport
from .verify import EquivalenceError, assert_equivalent, zeroed_reference
from .weights import load_weights

__all__ = [
    "trace", "plan", "prune", "mask", "remove_masks", "sparsity", "export_onnx", "save", "load",
    "count", "ChannelGraph", "Group", "Plan", "GroupCut", "Pos", "IndexMap", "CRITERIA",
    "TraceFailure", "NothingToPrune", "SurgeryError", "FrozenGroupWarning", "EquivalenceError",
    "ValueDependentWarning", "LatencyTargetWarning", "load_plan", "PlanMismatch",
    "zeroed_reference", "assert_equivalent", "Footprint", "REDUCTIONS", "accumulate_gradients",
    "bn_l1_penalty", "bn_l1_subgradient_", "prune_iteratively", "TargetReport", "load_weights",
    "LatencySettings", "LatencyReport",
]


def __getattr__(name: str):  # export imports onnx lazily: keep `import surgeon` light
    if name == "export_onnx":
        from .export import export_onnx
        return export_onnx
    if name == "LatencyReport":
        from .allocate import LatencyReport
        return LatencyReport
    raise AttributeError(f"module 'surgeon' has no attribute {name!r}")
