"""MACs and parameter counting, per FX node, for judging what pruning bought.

Why our own counter: the pruning loop needs per-node costs it can attribute to
channel groups, needs functional ops (``F.conv2d``, ``x + y``, ``torch.cat``)
to be visible, and needs conventions we can state precisely.  Hook-based
counters (thop, ptflops, torch-pruning's) only see ``nn.Module`` calls.

What is counted (for the batch in ``example_inputs``, *not* per sample: a
batch of 8 costs 8x a batch of 1 for every op here):

* ``conv``: ``Conv{1,2,3}d`` / ``F.conv{1,2,3}d``:
  ``output_elements * (in_channels / groups) * prod(kernel_size)``.
* ``conv_transpose``: ``ConvTranspose{1,2,3}d`` / ``F.conv_transpose*``:
  ``input_elements * (out_channels / groups) * prod(kernel_size)`` (each input
  element is scattered into ``out_channels/groups`` channels x kernel taps).
* ``linear``: ``Linear`` / ``F.linear``: ``output_elements * in_features``.
* ``matmul``: ``@``, ``torch.matmul/mm/bmm/addmm/baddbmm``:
  ``output_elements * inner_dim``.
* ``attention``: ``F.scaled_dot_product_attention(q, k, v)``:
  ``S * (query_elements + output_elements)`` (q k^T, then the weights times v;
  S the key length). The softmax and masking are not counted.
* ``norm`` (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm, LRN and
  their functional forms), ``pool`` (every pooling incl. adaptive),
  ``activation`` (ReLU, GELU, SiLU, Softmax, ...) and ``elementwise``
  (``+``, ``*``, ``torch.add``, interpolation, reductions such as ``mean``,
  and any other op that produces a tensor): the number of *output* elements.
  This is a deliberate, simple proxy; it under-counts reductions and pools
  (whose real cost scales with the input) but these are <1-2% of a CNN.
* ``shape`` (view/reshape/flatten/permute/cat/split/getitem/pad/dropout/
  Identity/...): 0, they move data but do no arithmetic.
* Bias additions are not MACs and are not counted.
* ``other``: any other leaf module (RNNs, MultiheadAttention, ...): output
  elements, i.e. a large under-count; trace through or extend if it matters.

An op's kind comes from the op registry (``surgeon.registry.mac_kind``): a
layer's ``LayerSpec.macs``, a parameter-free op's entry; the formulas are
listed in ``surgeon.layers.MAC_KINDS``.  A function or method the registry
does not know counts as ``elementwise``.

Parameters: the ``numel`` of every parameter of the model (buffers excluded),
whether or not the traced forward uses it, shared/tied parameters once.  A
node's ``params`` are the parameters it is the first to use, so per-node
params add up to at most :attr:`Counts.params`.

Method: ``torch.fx.symbolic_trace`` + ``ShapeProp`` gives every node's shape.
If tracing (or shape propagation) fails, e.g. on data-dependent Python control
flow, we fall back to forward hooks on *leaf* modules: functional ops
(``F.relu``, ``x + y``, ``torch.matmul``) are then invisible, so MACs are a
lower bound.  :attr:`Counts.method` says which was used.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .args import call_arg
from .registry import mac_kind
from .capture import ExampleInputs, as_example_inputs, eval_mode

__all__ = ["Counts", "NodeCount", "count", "format_count", "contracted_operand", "attention_terms"]


@dataclass(frozen=True)
class NodeCount:
    """Cost of one FX node (or one leaf-module call in hook mode).

    ``name`` is the FX node name (the module path in hook mode); ``op`` is what
    ran: the module class (``"Conv2d"``), the function (``"torch.relu"``,
    ``"operator.add"``) or the tensor method (``"Tensor.view"``); ``module`` is
    the module's qualified path for module calls, else ``None``; ``kind`` is
    the category that decided the formula (see the module docstring).
    """

    name: str
    op: str
    kind: str
    macs: int
    params: int
    module: str | None = None


@dataclass
class Counts:
    """Total MACs for the batch given, total parameters, and the per-node list."""

    macs: int
    params: int
    per_node: list[NodeCount] = field(default_factory=list)
    method: str = "fx"
    batch_size: int | None = None

    def by_kind(self) -> dict[str, int]:
        """MACs per category (``conv``, ``linear``, ``norm``, ...)."""
        out: dict[str, int] = {}
        for n in self.per_node:
            out[n.kind] = out.get(n.kind, 0) + n.macs
        return out

    def __str__(self) -> str:
        return f"{format_count(self.macs)}MACs, {format_count(self.params)} params"


# ----------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------

def _module_kind(m: nn.Module) -> str:
    """Category of a leaf module: its registry entry's (subclasses count like their base)."""
    return mac_kind("call_module", None, m)


def _qualname(target: Any) -> str:
    """Readable name of an FX target: ``Tensor.view``, ``F.relu``, ``operator.add``."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    name = getattr(target, "__name__", repr(target))
    mod = getattr(target, "__module__", None) or ""
    if any(target is v for v in vars(operator).values()):
        mod = "operator"
    elif mod.startswith("torch.nn.functional"):
        mod = "F"
    elif mod.startswith("torch"):
        mod = "torch"
    return f"{mod}.{name}" if mod else name


# ----------------------------------------------------------------------------
# formulas, shared by the FX and the hook path
# ----------------------------------------------------------------------------


def _numel(shape: Sequence[int] | None) -> int:
    return math.prod(int(s) for s in shape) if shape is not None else 0


def _weighted_macs(
    kind: str,
    out_shape: Sequence[int] | None,
    in_shape: Sequence[int] | None,
    weight_shape: Sequence[int] | None,
) -> int:
    """MACs of conv / conv_transpose / linear given the weight's shape.

    Weight layouts: conv ``[out, in/groups, *k]``, transposed conv
    ``[in, out/groups, *k]``, linear ``[out, in]``, so ``prod(weight[1:])`` is
    the per-element fan for all three; no need to know ``groups``.
    """
    if weight_shape is None:
        return _numel(out_shape)
    fan = _numel(weight_shape[1:])
    if kind == "conv_transpose":
        return _numel(in_shape) * fan
    return _numel(out_shape) * fan


def _module_macs(m: nn.Module, kind: str, in_shape: Sequence[int] | None,
                 out_shape: Sequence[int] | None) -> int:
    if kind in ("conv", "conv_transpose", "linear"):
        weight = getattr(m, "weight", None)  # a registered layer of these kinds keeps its weight there
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        return _weighted_macs(kind, out_shape, in_shape, shape)
    if kind == "shape":
        return 0
    return _numel(out_shape)


# ----------------------------------------------------------------------------
# FX path
# ----------------------------------------------------------------------------


def _first_shape(meta: Any) -> tuple[int, ...] | None:
    """Shape of the first tensor in a node's ``tensor_meta`` (may be nested)."""
    if meta is None:
        return None
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        return tuple(int(s) for s in meta.shape)
    if isinstance(meta, (list, tuple)):
        for item in meta:
            shape = _first_shape(item)
            if shape is not None:
                return shape
    if isinstance(meta, dict):
        for item in meta.values():
            shape = _first_shape(item)
            if shape is not None:
                return shape
    return None


def _node_shape(node: Any) -> tuple[int, ...] | None:
    return _first_shape(node.meta.get("tensor_meta")) if isinstance(node, fx.Node) else None


def _arg(node: fx.Node, index: int, name: str) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name)


def _count_fx(model: nn.Module, inputs: ExampleInputs,
              gm: fx.GraphModule | None = None) -> list[NodeCount]:
    if gm is None:
        gm = fx.symbolic_trace(model)
        if inputs.kwargs:
            raise TypeError("symbolic tracing takes positional inputs")
        ShapeProp(gm).propagate(*inputs.args)
    seen: set[int] = set()

    def fresh_params(params: Iterator[nn.Parameter]) -> int:
        total = 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total

    rows: list[NodeCount] = []
    for node in gm.graph.nodes:
        out_shape = _node_shape(node)
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            kind = _module_kind(m)
            in_shape = _node_shape(node.args[0]) if node.args else None
            macs = _module_macs(m, kind, in_shape, out_shape) if out_shape is not None else 0
            # a leaf layer's own table: parameters() walks the module tree, 10x slower per call
            own = (p for p in m._parameters.values() if p is not None) if not m._modules else m.parameters()
            rows.append(NodeCount(node.name, type(m).__name__, kind, macs, fresh_params(own), str(node.target)))
        elif node.op in ("call_function", "call_method"):
            kind = mac_kind(node.op, node.target) if out_shape is not None else "shape"
            if kind in ("conv", "conv_transpose", "linear"):
                macs = _weighted_macs(kind, out_shape, _node_shape(_arg(node, 0, "input")),
                                      _node_shape(_arg(node, 1, "weight")))
            elif kind == "matmul":
                a = _node_shape(contracted_operand(node))
                macs = _numel(out_shape) * (a[-1] if a else 1)
            elif kind == "attention":
                macs = sum(t for t, _ in attention_terms(node))
            elif kind == "shape":
                macs = 0
            else:
                macs = _numel(out_shape)
            rows.append(NodeCount(node.name, _qualname(node.target), kind, macs, 0))
        elif node.op == "get_attr":
            obj = _get_attr(gm, str(node.target))
            params = fresh_params(iter([obj])) if isinstance(obj, nn.Parameter) else 0
            if params:
                rows.append(NodeCount(node.name, "get_attr", "param", 0, params, str(node.target)))
    return rows


def contracted_operand(node: fx.Node) -> Any:
    """The operand of a matmul-kind node whose last dim is summed over: the second-to-last operand
    (``a`` in ``a @ b``, ``torch.bmm(a, b)``, ``torch.addmm(c, a, b)``, ``c.baddbmm(a, b)``)."""
    operands = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
    return operands[-2] if len(operands) > 1 else (operands[0] if operands else None)


def attention_terms(node: fx.Node) -> list[tuple[int, list[tuple[Any, int]]]]:
    """The two products of ``F.scaled_dot_product_attention(q, k, v)`` as (MACs, sizes): q k^T
    costs S per query element, the weights times v S per output element. ``sizes``: (node, dim) of
    every size in the formula (``surgeon.cost`` scales each term by them after a removal). Grouped
    query attention (fewer key / value heads) costs the same per query head."""
    q, k = node.args[0], call_arg(node, 1, "key")
    q_shape, k_shape, out_shape = _node_shape(q), _node_shape(k), _node_shape(node)
    if q_shape is None or k_shape is None or out_shape is None:
        return [(_numel(out_shape) if out_shape else 0, [(node, d) for d in range(len(out_shape or ()))])]
    s, kd = k_shape[-2], len(k_shape) - 2
    return [(_numel(q_shape) * s, [(q, d) for d in range(len(q_shape))] + [(k, kd)]),
            (_numel(out_shape) * s, [(node, d) for d in range(len(out_shape))] + [(k, kd)])]


def _get_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------
# hook fallback
# ----------------------------------------------------------------------------


def _tensor_shape(x: Any) -> tuple[int, ...] | None:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (list, tuple)):
        for item in x:
            shape = _tensor_shape(item)
            if shape is not None:
                return shape
    if isinstance(x, dict):
        return _tensor_shape(list(x.values()))
    return None


def _count_hooks(model: nn.Module, inputs: ExampleInputs) -> list[NodeCount]:
    rows: list[NodeCount] = []
    seen: set[int] = set()
    calls: dict[str, int] = {}

    def make_hook(path: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(m: nn.Module, args: Any, output: Any) -> None:
            kind = _module_kind(m)
            out_shape = _tensor_shape(output)
            macs = _module_macs(m, kind, _tensor_shape(args), out_shape) if out_shape else 0
            params = 0
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params += p.numel()
            calls[path] = calls.get(path, 0) + 1
            base = path or type(m).__name__
            name = base if calls[path] == 1 else f"{base}#{calls[path]}"
            rows.append(NodeCount(name, type(m).__name__, kind, macs, params, path))
        return hook

    handles = [
        m.register_forward_hook(make_hook(path))
        for path, m in model.named_modules()
        if not any(True for _ in m.children())  # leaves (the root too, if it is one)
    ]
    try:
        inputs.call(model)
    finally:
        for h in handles:
            h.remove()
    return rows


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------


def count(model: nn.Module, example_inputs: Any,
          traced: fx.GraphModule | None = None) -> Counts:
    """Count MACs (for the batch in ``example_inputs``) and parameters of ``model``.

    The model runs once in eval mode under ``torch.no_grad`` (so BatchNorm
    running statistics are not touched) and every submodule's train/eval flag
    is restored.  See the module docstring for exactly what is counted.
    ``traced``: a GraphModule of ``model`` whose nodes already carry
    ``tensor_meta`` (``surgeon.trace`` makes one); counting then reuses it
    instead of tracing and running the model again.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_example_inputs(example_inputs)

    params = sum(p.numel() for p in model.parameters())  # parameters() dedups shared ones
    with eval_mode(model), torch.no_grad():
        try:
            rows, method = _count_fx(model, inputs, traced), "fx"
        except Exception:  # untraceable model: see "Method" in the module docstring
            rows, method = _count_hooks(model, inputs), "hooks"
    first = inputs.tensors()[0]
    batch = int(first.shape[0]) if first.dim() > 0 else None
    return Counts(sum(r.macs for r in rows), params, rows, method, batch)


_UNITS = ("", "K", "M", "G", "T", "P", "E")


def format_count(n: float) -> str:
    """Human-readable count with 3 significant digits: ``"4.11 G"``, ``"25.6 M"``.

    Decimal (SI) prefixes, as MAC and parameter counts are conventionally
    quoted; counts below 1000 are printed as they are (``"512"``).
    """
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"format_count expects a number, got {type(n).__name__}")
    if not math.isfinite(n):
        raise ValueError(f"format_count expects a finite number, got {n}")
    sign = "-" if n < 0 else ""
    v = abs(float(n))
    unit = 0
    while v >= 999.5 and unit < len(_UNITS) - 1:
        v /= 1000.0
        unit += 1
    if unit == 0 and float(n).is_integer():
        return f"{sign}{int(v)}"
    digits = 2 if v < 9.995 else 1 if v < 99.95 else 0
    text = f"{sign}{v:.{digits}f}"
    return f"{text} {_UNITS[unit]}" if unit else text
