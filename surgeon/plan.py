"""Step 5: the plan. Decide which channels of which groups go, show it, then apply it.

``surgeon.plan(...)`` only reads the model; ``Plan.apply()`` performs the surgery (atomically).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch
from torch import nn

from .criteria import Criterion, get_criterion
from .dependency import ChannelGraph, trace
from .errors import NothingToPrune
from .graph import iter_module_calls
from .groups import Group
from .indexmap import Pos
from .surgery import apply_removal, resolve_tensor

__all__ = ["Plan", "GroupCut", "plan", "prune"]


@dataclass
class GroupCut:
    """The decision for one group: which of its channels are removed, and their scores."""

    group: Group
    remove: np.ndarray
    scores: np.ndarray

    @property
    def kept(self) -> int:
        return self.group.n - len(self.remove)


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be a number in [0, 1) (the fraction of channels removed per "
                         f"group), got {ratio!r}")
    return float(ratio)


def _ignored_names(model: nn.Module, ignore: Iterable[Any] | None) -> set[str]:
    names: set[str] = set()
    by_id = {id(m): n for n, m in model.named_modules()}
    all_names = set(by_id.values())
    for item in ignore or ():
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise ValueError(f"ignore lists a {type(item).__name__} that is not a submodule of the "
                                 "model; pass modules of this model or their qualified names")
            names.add(by_id[id(item)])
        elif isinstance(item, str):
            if item not in all_names:
                close = sorted(n for n in all_names if item in n)[:5]
                raise ValueError(f"ignore names {item!r}, which is not a module of the model"
                                 + (f"; did you mean one of {close}?" if close else ""))
            names.add(item)
        else:
            raise TypeError(f"ignore entries must be modules or qualified names, got {type(item).__name__}")
    return names


def _is_under(path: str, names: set[str]) -> bool:
    owner = path.rsplit(".", 1)[0] if "." in path else ""
    return any(owner == n or owner.startswith(n + ".") or n == "" for n in names)


def _n_remove(n: int, ratio: float, round_to: int | None) -> int:
    """Channels to remove from a group of n: floor(ratio * n), keeping at least one channel and,
    with round_to, a kept count that is a multiple of round_to (ratio 0.5, n=100, round_to=8:
    keep 48)."""
    kept = n - math.floor(ratio * n + 1e-9)
    if round_to and n >= round_to:
        kept = max(round_to, int(round(kept / round_to)) * round_to)
    return n - min(max(kept, 1), n)


def _choose(group: Group, scores: np.ndarray, k: int) -> np.ndarray:
    """The k lowest-scored channels, then give back one channel to any position that would be left
    empty (a concat input whose channels all scored low must keep one, or its conv vanishes)."""
    order = np.argsort(scores, kind="stable")
    remove = set(order[:k].tolist())
    for pos, ch in group.channel_of.items():
        present = set(ch.tolist())
        if present <= remove:
            remove.discard(max(present, key=lambda c: scores[c]))
    return np.asarray(sorted(remove), dtype=np.int64)


class Plan:
    """Which channels of which groups to remove. Nothing changes until ``apply()``."""

    def __init__(self, graph: ChannelGraph, cuts: list[GroupCut], skipped: dict[int, str]) -> None:
        self.graph = graph
        self.cuts = cuts
        self.skipped = skipped  # group id -> why it is not cut
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
        lose = {p.ref.rsplit(".", 1)[0] for p, idx in pos.items() if p.kind == "p" and len(idx)}
        result: dict[str, dict[str, list[int]]] = {}
        for node, qn, _, entry in iter_module_calls(self.graph.traced):
            if qn not in lose or qn in result:
                continue
            x = node.args[0]
            pin = Pos("t", x.name, entry.layer.in_dim % len(x.meta["tensor_meta"].shape))
            pout = Pos("t", node.name, entry.layer.out_dim % len(node.meta["tensor_meta"].shape))
            result[qn] = {"out": pos.get(pout, np.zeros(0, int)).tolist(),
                          "in": pos.get(pin, np.zeros(0, int)).tolist()}
        for p, idx in pos.items():  # tensors used directly in forward (layer-scale gammas)
            owner = p.ref.rsplit(".", 1)[0] if "." in p.ref else ""
            if p.kind == "p" and len(idx) and owner not in result:
                result[owner] = {"out": idx.tolist(), "in": idx.tolist()}
        return dict(sorted(result.items()))

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
        return "\n".join(lines)

    def apply(self, verify: bool = False) -> nn.Module:
        """Physically prune the model in place and return it.

        Atomic: if any step or post-condition fails, the model is restored exactly and a
        SurgeryError is raised. ``verify=True`` also runs the surgical-equivalence oracle
        (needs a deep copy of the model; see ``surgeon.verify``).
        """
        if self.applied:
            raise ValueError("this plan was already applied; make a new plan for the pruned model")
        reference = None
        if verify:
            from .verify import zeroed_reference
            reference = zeroed_reference(self.model, self.removed())
        check = None
        if reference is not None:
            from .verify import assert_equivalent

            def check() -> None:
                assert_equivalent(reference, self.model, self.graph.traced.inputs)
        apply_removal(self.graph, self.removed_positions(), self.graph.traced.inputs, check)
        self.applied = True
        return self.model


def plan(model: nn.Module, example_inputs: Any, ratio: float = 0.5,
         criterion: Union[str, Criterion] = "l1", scope: str = "local",
         ignore: Sequence[Any] | None = None, round_to: int | None = None,
         leaf_modules: Sequence[Any] = ()) -> Plan:
    """Trace ``model``, score every prunable group and decide what to remove (nothing is changed).

    ratio: fraction of channels removed from each prunable group (local scope), in [0, 1);
        a group never loses all its channels.
    criterion: "l1" (default), "l2", or a callable (group, tensors) -> per-channel scores.
    ignore: modules (or qualified names) that must stay untouched: every group that would change
        any of their parameters is kept whole. Output layers never need it: the model's outputs
        are never pruned.
    round_to: keep channel counts multiples of this number (e.g. 8 for vectorised kernels).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ratio = _check_ratio(ratio)
    score = get_criterion(criterion)
    if scope != "local":
        raise ValueError(f"unknown scope {scope!r}; choose 'local'")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive integer or None, got {round_to!r}")
    ignored = _ignored_names(model, ignore)
    graph = trace(model, example_inputs, leaf_modules=leaf_modules)
    cuts: list[GroupCut] = []
    skipped: dict[int, str] = {}
    for g in graph.groups:
        if not g.prunable:
            if g.n > 1:
                skipped[g.id] = g.frozen_reason()
            continue
        if any(_is_under(p.ref, ignored) for p in g.params):
            skipped[g.id] = "touches an ignored module"
            continue
        tensors = {p.ref: resolve_tensor(model, p.ref) for p in g.params}
        with torch.no_grad():
            scores = np.asarray(score(g, tensors), dtype=np.float64)
        if scores.shape != (g.n,):
            raise ValueError(f"criterion returned scores of shape {scores.shape} for group {g.id} "
                             f"with {g.n} channels; it must return one score per channel")
        cuts.append(GroupCut(g, _choose(g, scores, _n_remove(g.n, ratio, round_to)), scores))
    if not cuts:
        why = "; ".join(f"group {k}: {v}" for k, v in list(skipped.items())[:5]) or "no group has parameters"
        raise NothingToPrune(f"{type(model).__name__} has nothing prunable: every group is frozen or "
                             f"ignored ({why})")
    return Plan(graph, cuts, skipped)


def prune(model: nn.Module, example_inputs: Any, ratio: float = 0.5,
          criterion: Union[str, Criterion] = "l1", **kwargs: Any) -> nn.Module:
    """``plan(...)`` then ``apply()``: prune ``model`` in place and return it."""
    verify = kwargs.pop("verify", False)
    return plan(model, example_inputs, ratio=ratio, criterion=criterion, **kwargs).apply(verify=verify)
