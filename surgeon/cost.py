"""What a plan costs and saves, before it is applied: MACs and parameters after a removal.

``surgeon.count`` gives the MACs of every fx node of the unpruned model. Each of its formulas is a
product of sizes (conv: output elements x input channels per group x kernel; linear: output
elements x input features; norms, activations, elementwise ops: output elements), so after a
removal a node costs its original MACs times the product, over the sizes in its formula, of
(new size / old size). Attention is a sum of two such products (q k^T and the weights times v),
each scaled by its own sizes. A parameter's size is the product of its dims. Both are exact, which
lets the target search try many candidate removals without copying or re-counting the model; tests
compare the prediction with ``count`` on the pruned model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

from .count import Counts, attention_terms, contracted_operand, count, format_count
from .graph import param_paths
from .indexmap import Pos

if TYPE_CHECKING:
    from .trace import ChannelGraph

__all__ = ["Footprint", "CostModel"]


@dataclass(frozen=True)
class Footprint:
    """MACs (for the example batch) and parameters of a model."""

    macs: int
    params: int

    def __str__(self) -> str:
        return f"{format_count(self.macs)}MACs, {format_count(self.params)} params"


def _dims(node: fx.Node) -> list[Pos]:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if not isinstance(meta, TensorMetadata):
        return []
    return [Pos("t", node.name, d) for d in range(len(meta.shape))]


class CostModel:
    """MACs and params of ``graph.model`` after removing some indices of some positions.
    ``node_terms``: per fx node, its MACs as (MACs, positions whose sizes scale them) terms (what
    ``surgeon.latency`` scales the time of the ops it does not measure by)."""

    def __init__(self, graph: "ChannelGraph", counts: Counts) -> None:
        self.before = Footprint(int(counts.macs), int(counts.params))
        self._size = {p: graph.size(p) for p in graph.nx.nodes}
        nodes = {n.name: n for n in graph.traced.gm.graph.nodes}
        if counts.method == "hooks":  # count could not fx-trace (it has no leaf_modules): rows are
            calls: dict[str, int] = {}  # module paths, "path#k" for a module's k-th call
            for n in graph.traced.gm.graph.nodes:
                if n.op == "call_module":
                    k = calls[str(n.target)] = calls.get(str(n.target), 0) + 1
                    nodes[str(n.target) if k == 1 else f"{n.target}#{k}"] = n
        modules = dict(graph.model.named_modules())
        paths = param_paths(graph.model)
        self._macs: list[tuple[int, list[Pos]]] = []
        self.node_terms: dict[str, list[tuple[int, list[Pos]]]] = {}  # fx node name -> its MACs terms
        for row in counts.per_node:
            if row.macs:
                node = nodes.get(row.name)
                terms = self._terms(node, row.kind, row.macs, modules, paths) if node is not None else [(row.macs, [])]
                terms = [(m, [p for p in ps if p in self._size]) for m, ps in terms]
                self._macs += terms
                if node is not None:
                    self.node_terms[node.name] = terms
        self._params: list[tuple[int, list[Pos]]] = []
        for name, p in graph.model.named_parameters():  # shared parameters are listed once
            dims = [Pos("p", name, d) for d in range(p.dim())]
            self._params.append((p.numel(), [d for d in dims if d in self._size]))

    @staticmethod
    def _terms(node: fx.Node, kind: str, macs: int, modules: dict,
               paths: dict[int, str]) -> list[tuple[int, list[Pos]]]:
        """The node's MACs as (MACs, positions whose sizes multiply into them) terms: one term, or
        attention's two products, each with its own sizes (see the module docstring)."""
        if kind == "attention":
            return [(m, [Pos("t", n.name, d) for n, d in sizes if isinstance(n, fx.Node)])
                    for m, sizes in attention_terms(node)]
        if kind not in ("conv", "conv_transpose", "linear", "matmul"):
            return [(macs, _dims(node))]
        sized = _dims(node.args[0]) if kind == "conv_transpose" else _dims(node)  # input / output elements
        if kind == "matmul":
            operand = contracted_operand(node)
            reduced = _dims(operand)[-1:] if operand is not None else []
        elif node.op == "call_module":
            weight = getattr(modules[str(node.target)], "weight", None)
            reduced = [Pos("p", paths[id(weight)], 1)] if weight is not None and id(weight) in paths else []
        else:  # F.conv2d(x, w) / F.linear(x, w): dim 1 of the weight argument
            w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            reduced = _dims(w)[1:2] if isinstance(w, fx.Node) else []
        return [(macs, sized + reduced)]

    def _scale(self, positions: list[Pos], removed: Mapping[Pos, int]) -> float:
        f = 1.0
        for p in positions:
            k = removed.get(p, 0)
            if k:
                f *= (self._size[p] - k) / self._size[p]
        return f

    def footprint(self, removed: Mapping[Pos, int]) -> Footprint:
        """MACs and params once ``removed[pos]`` indices are gone from each position."""
        macs = sum(m * self._scale(ps, removed) for m, ps in self._macs)
        params = sum(n * self._scale(ps, removed) for n, ps in self._params)
        return Footprint(int(round(macs)), int(round(params)))


def cost_model(graph: "ChannelGraph") -> CostModel:
    """Count the unpruned model (``surgeon.count``) and wrap it for predictions."""
    return CostModel(graph, count(graph.model, graph.traced.inputs, traced=graph.traced.gm))
