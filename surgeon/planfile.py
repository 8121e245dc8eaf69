"""Plans as data: which entries of which tensors a plan removes, as a readable JSON document that
re-applies to a fresh instance of the same model.

A plan found once can then be shipped, reviewed and reproduced, and the same decision can be applied
to several copies of a model: every rank of a distributed job (``surgeon.train.distributed``), or
the initial weights of a lottery ticket (``surgeon.train.lottery``), whose survivors must be exactly
the trained model's survivors.

The document names tensors, not group numbers: for every group the plan cuts, the indices each of
its parameters loses along each dim, with the tensor's size. Loading traces the target model again,
finds the group holding those tensors and checks that the stored indices are exactly what removing
those channels takes there; anything else (another architecture, another width, a tensor that no
longer exists) is refused with a message naming the tensor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Union

import numpy as np

from .indexmap import Pos

from .scope import GroupCut

if TYPE_CHECKING:
    from .plan import Plan
    from .trace import ChannelGraph

__all__ = ["FORMAT", "PlanMismatch", "plan_to_dict", "save_plan", "read_plan", "cuts_from_dict", "trace_options"]

FORMAT = "surgeon-plan-v1"
# The options of ``surgeon.plan`` that change the trace: ``load_plan`` must trace with the same ones.
TRACE_OPTIONS = ("leaf_modules", "tracer", "keep_outputs")


def trace_options(plan_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The trace options among ``plan_kwargs``, for ``load_plan`` to trace the model alike."""
    return {k: v for k, v in plan_kwargs.items() if k in TRACE_OPTIONS}


class PlanMismatch(ValueError):
    """A stored plan does not fit the model it is loaded for."""


def plan_to_dict(plan: "Plan") -> dict[str, Any]:
    """The plan as JSON-able data: per cut group, each parameter's removed indices per dim."""
    groups = []
    for cut in plan.cuts:
        if not len(cut.remove):
            continue
        removed = cut.group.removed_indices(cut.remove)
        tensors = [{"tensor": p.ref, "dim": p.dim, "size": int(len(cut.group.channel_of[p])),
                    "remove": [int(i) for i in removed[p]]}
                   for p in sorted(cut.group.params, key=lambda p: (p.ref, p.dim))]
        groups.append({"channels": int(cut.group.n), "keep": int(cut.kept), "tensors": tensors})
    return {"format": FORMAT, "model": type(plan.model).__name__, "groups": groups}


def save_plan(plan: "Plan", path: Union[str, os.PathLike]) -> Path:
    """Write ``plan_to_dict(plan)`` to ``path`` (indented JSON) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan_to_dict(plan), indent=1) + "\n")
    return path


def read_plan(source: Union[str, os.PathLike, Mapping[str, Any]]) -> dict[str, Any]:
    """A stored plan: a path written by ``Plan.save`` or the dict of ``Plan.to_dict()``, checked to
    be one (PlanMismatch otherwise)."""
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        try:
            data = json.loads(Path(source).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no plan file at {source}") from None
        except json.JSONDecodeError as e:
            raise PlanMismatch(f"{source} is not a plan file (invalid JSON: {e})") from None
    if data.get("format") != FORMAT or not isinstance(data.get("groups"), list):
        raise PlanMismatch(f"not a surgeon plan (expected format {FORMAT!r} with a 'groups' list, got "
                           f"format {data.get('format')!r}); write plans with plan.save(path)")
    return data


def cuts_from_dict(graph: "ChannelGraph", data: Mapping[str, Any]) -> tuple[list[GroupCut], dict[int, str]]:
    """The cuts a stored plan (``read_plan``) makes in ``graph`` (the target model's trace), and the
    groups it leaves whole with why. Raises PlanMismatch naming the tensor when the plan was made
    for another model. ``surgeon.load_plan`` (plan.py) traces, calls this and builds the Plan."""
    model = graph.model
    where: dict[Pos, Any] = {p: g for g in graph.groups for p in g.params}
    cuts: list[GroupCut] = []
    seen: set[int] = set()
    for k, stored in enumerate(data["groups"]):
        tensors = stored.get("tensors") or []
        if not tensors:
            raise PlanMismatch(f"group {k} of the plan lists no tensors")
        first = Pos("p", tensors[0]["tensor"], int(tensors[0]["dim"]))
        g = where.get(first)
        if g is None:
            raise PlanMismatch(f"the plan cuts {first} but {type(model).__name__} has no prunable channel "
                               "position there: the plan was made for another model")
        if g.id in seen:
            raise PlanMismatch(f"the plan cuts the group of {first} twice")
        seen.add(g.id)
        if not g.prunable:
            raise PlanMismatch(f"the plan cuts {first}, whose group is kept whole in this model "
                               f"({g.frozen_reason()})")
        want = {Pos("p", t["tensor"], int(t["dim"])): t for t in tensors}
        if set(want) != set(g.params):
            extra = sorted(map(str, set(want) - set(g.params)))[:3]
            missing = sorted(map(str, set(g.params) - set(want)))[:3]
            raise PlanMismatch(f"the group of {first} couples other tensors in this model than in the plan "
                               f"(only in the plan: {extra}; only here: {missing}): made for another model")
        for p, t in want.items():
            if int(t["size"]) != len(g.channel_of[p]):
                raise PlanMismatch(f"{p} has {len(g.channel_of[p])} entries here, {t['size']} in the plan: "
                                   "the plan was made for another model (or this one was pruned since)")
        parts = []
        for p, t in want.items():  # a concatenation's producers each hold only some of the channels
            idx = np.asarray(t["remove"], dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= len(g.channel_of[p])):
                raise PlanMismatch(f"the plan removes index {int(idx.max())} of {p}, which has "
                                   f"{len(g.channel_of[p])} entries")
            parts.append(g.channel_of[p][idx])
        channels = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        if len(channels) >= g.n:
            raise PlanMismatch(f"the plan removes every channel of the group of {first}")
        for p, got in g.removed_indices(channels).items():
            if p in want and sorted(want[p]["remove"]) != got.tolist():
                raise PlanMismatch(f"the plan's indices for {p} are not what removing the same channels takes "
                                   "in this model: made for another model")
        cuts.append(GroupCut(g, channels, np.zeros(g.n)))
    skipped = {g.id: g.frozen_reason() or "not cut by the loaded plan"
               for g in graph.groups if g.id not in seen and g.n > 1}
    return cuts, skipped
