"""``surgeon.trace``: model + example inputs -> ChannelGraph (fx trace, position graph, groups)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import networkx as nx
from torch import nn

from .gcpause import gc_paused
from .record import user_stacklevel
from .graph import build_graph
from .groups import Group, check_sizes, find_groups
from .indexmap import Pos
from .capture import Traced, trace_fx

__all__ = ["ChannelGraph", "trace", "FrozenGroupWarning"]


class FrozenGroupWarning(UserWarning):
    """A group with parameters was frozen because of an op surgeon does not understand."""


@dataclass
class ChannelGraph:
    """The result of ``surgeon.trace``.

    nx: networkx.DiGraph whose nodes are channel positions (``Pos``: activation or parameter, dim)
        with ``size`` and ``fixed`` attributes, and whose edges carry an ``IndexMap`` under ``map``.
    groups: coupled channel groups (only components that hold parameters).
    traced: the fx GraphModule and the shapes of the original model.
    """

    traced: Traced
    nx: nx.DiGraph
    groups: list[Group]
    warnings: list[str] = field(default_factory=list)
    keep_outputs: tuple[int, ...] | None = None  # outputs whose shapes stay (None: all)

    @property
    def model(self) -> nn.Module:
        return self.traced.model

    def size(self, pos: Pos) -> int:
        return self.nx.nodes[pos]["size"]

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def summary(self, max_members: int = 4) -> str:
        """A table: group, channels, prunable or frozen (and why), and the parameters in it."""
        rows = [("group", "channels", "state", "members")]
        for g in self.groups:
            params = [f"{p.ref}[{p.dim}]" for p in g.params]
            more = f" +{len(params) - max_members} more" if len(params) > max_members else ""
            state = "prunable" if g.prunable else f"frozen: {g.frozen_reason()}"
            rows.append((str(g.id), str(g.n), state, ", ".join(params[:max_members]) + more))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        n_ok = len(self.prunable_groups())
        tracer = "symbolic torch.fx" if self.traced.method == "fx" else "recording the real forward"
        lines.append(f"{len(self.groups)} groups, {n_ok} prunable, {len(self.groups) - n_ok} frozen "
                     f"(traced by {tracer})")
        return "\n".join(lines)


def trace(model: nn.Module, example_inputs: Any, leaf_modules: Sequence[Any] = (),
          warn: bool = True, tracer: str = "auto", keep_outputs: Sequence[int] | None = None
          ) -> ChannelGraph:
    """Trace ``model`` with torch.fx and build its channel-dependency graph.

    ``example_inputs`` is a Tensor or a tuple of Tensors of the shape the model expects.
    ``leaf_modules`` (module types, submodules or their names) are kept opaque by fx: use it for
    code fx cannot trace; their channels are frozen. Groups frozen by ops surgeon does not
    understand are reported with a ``FrozenGroupWarning`` naming the node and op.

    ``example_inputs`` may also be a dict of keyword inputs (``{"input_ids": ids, ...}``).
    ``tracer``: "fx" traces symbolically; "concrete" runs the model's real forward and records every
    torch call (works on shape checks, loops over chunks, ``*args/**kwargs``, dataclass outputs);
    "auto" (default) tries fx and falls back to concrete. ``graph.traced.method`` says which ran.
    ``keep_outputs``: indices of the model's output tensors (flattened: tuples, lists, dict values,
    dataclass fields, in order) whose shapes must stay; default all. E.g. ``[0]`` for a detector
    whose extra outputs are features kept only for a training loss.
    """
    with gc_paused():  # see gcpause.py
        traced = trace_fx(model, example_inputs, leaf_modules, method=tracer)
        g = build_graph(traced, keep_outputs)
        check_sizes(g)
        groups = find_groups(g)
    notes = []
    weights: set[str] | None = None  # buffers alone (index tables) are no loss
    for gr in groups:
        if gr.unexpected_fixes and gr.n > 1:
            weights = weights if weights is not None else {name for name, _ in model.named_parameters()}
        if gr.unexpected_fixes and gr.n > 1 and any(p.ref in weights for p in gr.params):  # type: ignore[operator]
            notes.append(f"group {gr.id} ({', '.join(gr.layers[:3])}) is frozen: {gr.frozen_reason()}")
    if warn:
        for note in notes:
            warnings.warn(note, FrozenGroupWarning, stacklevel=user_stacklevel())
    return ChannelGraph(traced, g, groups, notes, None if keep_outputs is None else tuple(keep_outputs))
