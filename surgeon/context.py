"""What a registry rule sees of one fx node while the dependency graph is built (``RuleContext``),
and the facts rules and the graph share: why a position is fixed (``Fixed``), tuple outputs
(``is_multi``), op names for messages (``op_label``).

Rules (rules.py, reshape.py, attention.py, functional.py, layers.py) only talk to a context; the
graph builder (graph.py) makes one per node and owns the networkx graph behind it. Keeping the
context here, apart from the builder, means the registry and its rules never import graph.py.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Protocol, Union

import networkx as nx
import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from .capture import node_module, node_source
from .indexmap import IndexMap, Pos

__all__ = ["Ref", "Fixed", "RuleContext", "GraphBuilder", "op_label", "is_multi", "size_sources"]

Ref = Union[fx.Node, tuple]  # a node, or (node, k) for the k-th tensor of a tuple output


@dataclass(frozen=True)
class Fixed:
    """Why a position cannot shrink. ``expected`` fixes are the ones every model has (its own inputs
    and outputs keep their shapes): they never warn. Every other fix (an unknown op, a hard-coded
    size, a reduction over the channels...) freezes channels the user may have wanted pruned, so it
    is warned about (``FrozenGroupWarning``) when it freezes a group that has parameters."""

    reason: str
    node: str
    expected: bool = False

    def __str__(self) -> str:
        return f"{self.reason} (node {self.node})"


def is_multi(meta: Any) -> bool:
    """``meta`` describes several outputs (a tuple of them): TensorMetadata is itself a NamedTuple,
    so ``isinstance(meta, tuple)`` alone would take every tensor for a tuple."""
    return isinstance(meta, (tuple, list)) and not isinstance(meta, TensorMetadata)


def op_label(node: fx.Node, module: nn.Module | None = None) -> str:
    """Human-readable op of a node: ``Conv2d``, ``torch.cat``, ``.view``."""
    if node.op == "call_module":
        return type(module).__name__ if module is not None else str(node.target)
    if node.op == "call_method":
        return f".{node.target}"
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", "") or ""
        name = getattr(node.target, "__name__", str(node.target))
        short = {"_operator": "operator", "torch._C._nn": "F", "torch.nn.functional": "F",
                 "torch._C._VariableFunctions": "torch"}.get(mod, mod)
        return f"{short}.{name}" if short else name
    return node.op


class GraphBuilder(Protocol):
    """What a ``RuleContext`` needs of the graph builder (graph.py's ``_Builder``)."""

    g: nx.DiGraph
    modules: dict[str, nn.Module]

    def tensor_refs(self, args: list[Any]) -> list[Ref]: ...

    def tensor_pos(self, ref: Ref, dim: int) -> Pos: ...

    def param_pos(self, t: torch.Tensor, fallback: str, dim: int) -> Pos: ...

    def fix(self, pos: Pos, why: Fixed) -> None: ...


class RuleContext:
    """What a registry rule sees of one fx node while the graph is built."""

    def __init__(self, builder: GraphBuilder, node: fx.Node, module: nn.Module | None,
                 qualname: str | None) -> None:
        self._b = builder
        self.node = node
        self.module = module
        self.qualname = qualname
        self.op_name = op_label(node, module)
        self.touched: set[Pos] = set()
        self.unused: set[Any] = set()  # inputs the op does not consume (other tuple elements)
        self.mixing = False  # set for layers that normalise across channels (LayerNorm)

    # ---------------------------------------------------------------------------------- shapes
    def _meta(self, ref: Ref) -> Any:
        node, k = (ref, None) if isinstance(ref, fx.Node) else ref
        m = node.meta.get("tensor_meta")
        return m[k] if k is not None and is_multi(m) else m

    def shape(self, ref: Ref) -> tuple[int, ...]:
        m = self._meta(ref)
        assert isinstance(m, TensorMetadata), f"{ref} is not a tensor"
        return tuple(m.shape)

    def out_shape(self) -> tuple[int, ...]:
        return self.shape(self.node)

    def is_tuple(self, ref: Any) -> bool:
        """The node outputs several tensors (see ``is_multi``)."""
        return isinstance(ref, fx.Node) and is_multi(ref.meta.get("tensor_meta"))

    def tuple_len(self, node: fx.Node) -> int:
        return len(node.meta["tensor_meta"]) if self.is_tuple(node) else 1

    def n_outputs(self) -> int:
        return self.tuple_len(self.node)

    def tensor_inputs(self) -> list[Ref]:
        return self._b.tensor_refs(list(self.node.args) + list(self.node.kwargs.values()))

    # ------------------------------------------------------------------------------- positions
    def t(self, ref: Ref, dim: int) -> Pos:
        pos = self._b.tensor_pos(ref, dim)
        self.touched.add(pos)
        return pos

    def p(self, name: str, dim: int) -> Pos | None:
        """Position of dim ``dim`` of the current module's tensor ``name`` (None if it is None)."""
        assert self.module is not None
        t: Any = self.module
        for part in name.split("."):  # "out_proj.weight": a child's tensor
            t = getattr(t, part, None)
        if not isinstance(t, torch.Tensor):
            return None
        pos = self._b.param_pos(t, f"{self.qualname}.{name}", dim)
        if self.mixing:
            self._b.g.nodes[pos]["mixing"] = True
        return pos

    def couple(self, a: Pos | None, b: Pos | None, imap: IndexMap) -> None:
        if a is None or b is None:
            return
        na, nb = self._b.g.nodes[a]["size"], self._b.g.nodes[b]["size"]
        assert imap.src.size == 0 or (0 <= imap.src.min() and imap.src.max() < na
                                      and 0 <= imap.dst.min() and imap.dst.max() < nb), (
            f"{self.op_name} rule maps indices outside {a} (size {na}) or {b} (size {nb})")
        self._add(a, b, imap)

    def _add(self, a: Pos, b: Pos, imap: IndexMap) -> None:
        g = self._b.g
        if g.has_edge(a, b):  # a second map between the same positions adds pairs (one edge each)
            old = g.edges[a, b]["map"]
            imap = IndexMap(f"{old.kind}, {imap.kind}", np.concatenate([old.src, imap.src]),
                            np.concatenate([old.dst, imap.dst]))
        g.add_edge(a, b, map=imap, node=self.node.name, op=self.op_name)

    def same(self, a: Pos | None, b: Pos | None) -> None:
        if a is None or b is None:
            return
        n = self._b.g.nodes[a]["size"]
        assert n == self._b.g.nodes[b]["size"], f"identity between {a} and {b} of different sizes"
        self._add(a, b, IndexMap.identity(n))  # in range by construction: no bounds check

    def fix(self, pos: Pos, reason: str) -> None:
        """Freeze ``pos`` because of this op; the reason names the user's source line when known."""
        if self.source:
            reason = f"{reason} at {self.source}"
        self._b.fix(pos, Fixed(reason, self.node.name))

    @property
    def source(self) -> str:
        """The user's source line that made this node ("file:line"), when the tracer knows it."""
        return node_source(self.node)

    def sync_attr(self, size_arg: Any, pos: Pos) -> None:
        """``size_arg`` (an fx node of the concrete tracer) is a module's int attribute used as the
        size of ``pos``: after surgery the attribute must equal the new size of ``pos``."""
        qual, name = size_arg.meta["attr"]
        self._b.g.graph.setdefault("attr_syncs", []).append((qual, name, pos))

    def size_from(self, size_arg: Any, pos: Pos) -> None:
        """``size_arg`` (an fx node computed at run time) sizes ``pos``: it must be read off a tensor
        dim that shrinks with ``pos`` (checked once the groups are known, ``groups.check_sizes``)."""
        from .args import SizeOf
        if isinstance(size_arg, SizeOf):  # a whole shape borrowed: y's dim, made a position
            sources = [self._b.tensor_pos(size_arg.ref, size_arg.dim)]
        else:
            sources = size_sources(size_arg)
        where = f"{self.op_name} (node {self.node.name}" + (f", {self.source})" if self.source else ")")
        self._b.g.graph.setdefault("size_deps", []).append((sources, pos, where))

    def sync_heads(self, old_heads: int, old_width: int, pos: Pos, width_per_head: int) -> None:
        """A head split sized the head count at run time (``view(b, n, -1, self.head_dim)``): the
        module that made it keeps head-count / all-heads-width attributes
        (``attention.HEAD_COUNT_ATTRS`` / ``HEAD_WIDTH_ATTRS``) that must follow ``pos``."""
        from .attention import HEAD_COUNT_ATTRS, HEAD_WIDTH_ATTRS
        qual = node_module(self.node)
        m = self._b.modules.get(qual) if qual is not None else None
        if m is None:
            return
        syncs = self._b.g.graph.setdefault("attr_syncs", [])
        for name, v in vars(m).items():
            if not isinstance(v, int) or isinstance(v, bool):
                continue
            if name in HEAD_COUNT_ATTRS and int(v) == old_heads:
                syncs.append((qual, name, pos))
            elif name in HEAD_WIDTH_ATTRS and int(v) == old_width:
                syncs.append((qual, name, pos, width_per_head))

    def owner_of(self, ref: Any) -> nn.Module | None:
        """The module holding the parameter that a ``get_attr`` node reads (None otherwise)."""
        if not (isinstance(ref, fx.Node) and ref.op == "get_attr"):
            return None
        owner = str(ref.target).rpartition(".")[0]
        return self._b.modules.get(owner)

    def mark_mixing(self, pos: Pos) -> None:
        """The op normalises across the channels of ``pos``: its group is not exactly zeroable."""
        self._b.g.nodes[pos]["mixing"] = True

    def unused_input(self, ref: Ref) -> None:
        """Declare that the op does not read ``ref`` (``outputs[1]`` does not read outputs[0])."""
        self.unused.add(ref)


_SIZE_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod,
                    operator.neg}


def size_sources(v: Any) -> list[Pos] | None:
    """The tensor dims an int computed at run time was read from (``x.size(1) // 2`` -> [x dim 1]),
    through either tracer's size reads and int arithmetic; None when its origin is unknown."""
    out: list[Pos] = []
    stack = [v]
    while stack:
        n = stack.pop()
        if not isinstance(n, fx.Node) or "attr" in n.meta:
            continue  # a literal or a module attribute: not a tensor size
        if n.op == "call_function" and n.target in _SIZE_ARITHMETIC:
            stack += list(n.args)
            continue
        src, dims = None, None
        if n.op == "call_method" and n.target == "size" and len(n.args) > 1:
            src, dims = n.args[0], [n.args[1]]
        elif n.op == "call_method" and n.target == "numel":
            src = n.args[0]
        elif n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node):
            base = n.args[0]
            whole = (base.op == "call_method" and base.target == "size" and len(base.args) == 1) or (
                base.op == "call_function" and base.target is getattr and base.args[1:] == ("shape",))
            if not whole:
                return None
            src, dims = base.args[0], [n.args[1]] if isinstance(n.args[1], int) else None
            if dims is None:
                return None
        else:
            return None
        meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
        if not isinstance(meta, TensorMetadata):
            return None
        nd = len(meta.shape)
        for d in (range(nd) if dims is None else [int(d) for d in dims]):
            pos = Pos("t", src.name, d % nd)
            out.append(pos)
    return out
