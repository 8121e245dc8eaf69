"""Step 2: the channel-dependency graph (networkx): one ``RuleContext`` (context.py) per fx node,
handed to the node's registry rule.

Nodes are channel positions (``Pos``: one dim of one activation or parameter), with attributes
``size`` and, when the position can never shrink, ``fixed`` (a list of ``Fixed`` reasons). Edges
carry an ``IndexMap``. Every op's rule comes from the registry; whatever a rule does not couple is
fixed here, centrally, so an op we do not understand can only freeze channels, never mis-map them.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import networkx as nx
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from .capture import Traced
from .context import Fixed, Ref, RuleContext
from .indexmap import IndexMap, Pos
from .registry import OpEntry, lookup

__all__ = ["build_graph", "param_paths", "layer_positions", "iter_module_calls"]


def param_paths(model: nn.Module) -> dict[int, str]:
    """id(tensor) -> canonical qualified name of every parameter and buffer. A tensor shared by two
    modules (tied weights) gets one name, so it becomes one position and is sliced once."""
    paths: dict[int, str] = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        paths.setdefault(id(t), name)
    return paths


class _Builder:
    def __init__(self, traced: Traced, keep_outputs: Sequence[int] | None = None) -> None:
        self.traced = traced
        self.keep_outputs = keep_outputs
        self.g = nx.DiGraph()
        self.paths = param_paths(traced.model)
        self.modules = dict(traced.model.named_modules())
        self._tensor_pos: dict[tuple[Ref, int], Pos] = {}

    def tensor_refs(self, args: list[Any]) -> list[Ref]:
        refs: list[Ref] = []
        for a in args:
            if isinstance(a, dict):
                refs += self.tensor_refs(list(a.values()))
            elif isinstance(a, (list, tuple)):
                refs += self.tensor_refs(list(a))
            elif isinstance(a, fx.Node):
                m = a.meta.get("tensor_meta")
                if isinstance(m, TensorMetadata):
                    refs.append(a)
                elif isinstance(m, (tuple, list)):
                    refs += [(a, k) for k, mk in enumerate(m) if isinstance(mk, TensorMetadata)]
        return refs

    def tensor_pos(self, ref: Ref, dim: int) -> Pos:
        key = (ref, dim)
        pos = self._tensor_pos.get(key)  # rules ask for the same positions many times
        if pos is not None:
            return pos
        node, k = (ref, None) if isinstance(ref, fx.Node) else ref
        m = node.meta["tensor_meta"]
        if k is not None:
            m = m[k]
        dim %= len(m.shape)
        pos = Pos("t", node.name if k is None else f"{node.name}#{k}", dim)
        if pos not in self.g:
            self.g.add_node(pos, size=int(m.shape[dim]), fixed=[], order=len(self.g))
        self._tensor_pos[key] = pos
        return pos

    def all_positions(self, ref: Ref) -> list[Pos]:
        node, k = (ref, None) if isinstance(ref, fx.Node) else ref
        m = node.meta["tensor_meta"]
        m = m[k] if k is not None else m
        return [self.tensor_pos(ref, d) for d in range(len(m.shape))]

    def param_pos(self, t: torch.Tensor, fallback: str, dim: int) -> Pos:
        pos = Pos("p", self.paths.get(id(t), fallback), dim % max(t.dim(), 1))
        if pos not in self.g:
            self.g.add_node(pos, size=int(t.shape[pos.dim]), fixed=[], order=len(self.g))
        return pos

    def fix(self, pos: Pos, why: Fixed) -> None:
        if why not in self.g.nodes[pos]["fixed"]:
            self.g.nodes[pos]["fixed"].append(why)

    def outputs_of(self, node: fx.Node) -> list[Ref]:
        return self.tensor_refs([node])

    def run(self) -> nx.DiGraph:
        root = self.traced.gm
        for node in self.traced.gm.graph.nodes:
            if node.op == "placeholder":
                for ref in self.outputs_of(node):
                    for p in self.all_positions(ref):
                        self.fix(p, Fixed("model input", node.name, expected=True))
            elif node.op == "output":
                refs = self.tensor_refs(list(node.args))
                keep = range(len(refs)) if self.keep_outputs is None else self.keep_outputs
                bad = [i for i in keep if not -len(refs) <= i < len(refs)]
                if bad:
                    raise ValueError(f"keep_outputs lists output {bad[0]}, but the model returns "
                                     f"{len(refs)} tensors (indices 0..{len(refs) - 1}, in the order "
                                     "of a flattened output: tuples, lists, dict values, dataclass fields)")
                for i in keep:
                    for p in self.all_positions(refs[i]):
                        self.fix(p, Fixed("model output", node.name, expected=True))
            elif node.op == "get_attr":
                self._get_attr(node, root)
            else:
                self._call(node)
        return self.g

    def _get_attr(self, node: fx.Node, root: nn.Module) -> None:
        """A tensor attribute used directly in forward (a layer-scale gamma, a learned bias): it is a
        parameter position, sliced by the surgery like any weight."""
        if not isinstance(node.meta.get("tensor_meta"), TensorMetadata):
            return
        t = root
        for part in str(node.target).split("."):
            t = getattr(t, part)
        for d in range(t.dim()):
            a = self.tensor_pos(node, d)
            b = self.param_pos(t, str(node.target), d)
            self.g.add_edge(a, b, map=IndexMap.identity(t.shape[d]), node=node.name, op="get_attr")

    def _call(self, node: fx.Node) -> None:
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        ctx = RuleContext(self, node, module, str(node.target) if module is not None else None)
        ins = ctx.tensor_inputs()
        outs = self.outputs_of(node)
        if not ins and not outs:
            return  # arithmetic on sizes and other non-tensor values
        entry: OpEntry | None = lookup(node.op, node.target, module)
        if entry is None:
            reason = f"unsupported op {ctx.op_name}" + (f" at {ctx.source}" if ctx.source else "")
            for ref in ins + outs:
                for p in self.all_positions(ref):
                    self.fix(p, Fixed(reason, node.name))
            return
        if entry.shape_only:
            return
        ctx.mixing = entry.layer is not None and entry.layer.mixing
        try:
            entry.rule(ctx)
        except Exception as e:  # a rule that cannot handle this call freezes it, never guesses
            reason = f"{ctx.op_name} rule failed ({type(e).__name__}: {e})" + (f" at {ctx.source}" if ctx.source else "")
            for ref in ins + outs:
                for p in self.all_positions(ref):
                    self.fix(p, Fixed(reason, node.name))
            return
        why = Fixed(f"not mapped through {ctx.op_name}", node.name)
        for ref in ins + outs:
            if ref in ctx.unused:
                continue
            for p in self.all_positions(ref):
                if p not in ctx.touched:
                    self.fix(p, why)


def build_graph(traced: Traced, keep_outputs: Sequence[int] | None = None) -> nx.DiGraph:
    """Build the position graph of a traced model (see module docstring). ``keep_outputs``: indices
    of the (flattened) model outputs whose shapes must not change; None: all of them."""
    return _Builder(traced, keep_outputs).run()


def layer_positions(node: fx.Node, in_dim: int, out_dim: int) -> tuple[Pos, Pos]:
    """The channel positions of a layer call's first input and (first) output."""
    def pos(n: fx.Node, dim: int) -> Pos:
        m = n.meta["tensor_meta"]
        if not isinstance(m, TensorMetadata):
            k = next(i for i, mk in enumerate(m) if isinstance(mk, TensorMetadata))
            return Pos("t", f"{n.name}#{k}", dim % len(m[k].shape))
        return Pos("t", n.name, dim % len(m.shape))

    x = node.args[0] if node.args else next(v for v in node.kwargs.values() if isinstance(v, fx.Node))
    return pos(x, in_dim), pos(node, out_dim)


def iter_module_calls(traced: Traced) -> Iterator[tuple[fx.Node, str, nn.Module, OpEntry]]:
    """Every call of a registered layer: (node, qualified name, module, entry)."""
    modules = dict(traced.model.named_modules())
    for node in traced.gm.graph.nodes:
        if node.op == "call_module":
            m = modules.get(str(node.target))
            entry = lookup(node.op, node.target, m)
            if entry is not None and entry.layer is not None:
                yield node, str(node.target), m, entry
