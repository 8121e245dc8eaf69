"""Shape propagation: run a recorded fx graph and note every node's output ``TensorMetadata``.

``capture`` runs it once after tracing (the shapes index maps depend on) and once after surgery
(the post-condition that the pruned model computes the sizes the plan predicts). Both runs are on
the meta device whenever every leaf module is one surgeon knows: shapes without arithmetic.

Why not fx's ``ShapeProp`` / ``Interpreter``: on a model of many small ops (MobileNetV2: 310
nodes) the per-node overhead is the cost, not the ops. This loop keeps what shape propagation
needs and nothing else, and skips running what the registry already knows the shape of:

- ``same_shape`` ops (activations, dropout): the output is the input's metadata;
- ``broadcast`` ops (``a + b``, ``torch.mul``...) on floating tensors of one dtype: the broadcast
  shape, in that dtype (torch's meta kernels for these are Python decompositions costing a third
  of a millisecond a call);
- layers with a ``LayerSpec.out_shape`` (conv, linear, batch norm): their formula, without copying
  their parameters to the meta device.

Everything else runs, on meta tensors (a module surgeon does not know runs on real tensors: its
forward may cache tensors, YOLO's anchors, that must never end up on the meta device).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx as fx
from torch import nn
from torch.fx.node import map_aggregate, map_arg
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from .record import read_attribute

if TYPE_CHECKING:
    from .capture import RecordedGraph

__all__ = ["record_shapes"]

# how a node's output is found on the meta device (decided once per graph, see _how)
_SAME, _BROADCAST, _SPEC, _RUN = "same", "broadcast", "spec", "run"
_SCALARS = (int, float, bool)


def _fetch(model: nn.Module, gm: "RecordedGraph", target: str) -> Any:
    """A module / tensor of the live model by qualified name (after surgery: its new tensors); fx's
    own constants (``_tensor_constant0``, made while tracing) from the recorded graph."""
    obj: Any = model
    try:
        for part in target.split("."):
            mods = getattr(obj, "_modules", None)
            obj = mods[part] if mods is not None and part in mods else getattr(obj, part)
        return obj
    except AttributeError:
        return getattr(gm, target)


def _how(node: fx.Node, module: nn.Module | None) -> str:
    from .registry import lookup
    op = node.op
    if op not in ("call_function", "call_module"):
        return _RUN
    entry = lookup(op, node.target, module)
    if entry is None:
        return _RUN
    if entry.same_shape:
        return _SAME
    if entry.broadcast:
        return _BROADCAST
    if entry.layer is not None and entry.layer.out_shape is not None:
        return _SPEC
    return _RUN


def _same(args: tuple, kwargs: dict) -> Any:
    """The one tensor input, when it is the first argument and the only tensor; else None."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    if any(isinstance(a, torch.Tensor) for a in args[1:]) or any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return None
    return args[0]


def _broadcast(target: Any, args: tuple, kwargs: dict) -> Any:
    """A meta tensor of the broadcast shape, when every operand is a floating tensor of one dtype
    or a plain Python number (type promotion then keeps that dtype); else None (run the op)."""
    if "out" in kwargs or any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or any(not isinstance(a, (torch.Tensor, *_SCALARS)) for a in args):
        return None
    dtype = tensors[0].dtype
    if not dtype.is_floating_point or any(t.dtype != dtype for t in tensors):
        return None
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    name = getattr(target, "__name__", "")
    if name.startswith("i") and isinstance(args[0], torch.Tensor) and shape != args[0].shape:
        return None  # an in-place op cannot grow its target: let it run and raise
    return torch.empty(shape, dtype=dtype, device="meta")


class _ShapeRecorder:
    """One run of ``gm.graph`` on ``model``'s current tensors. Metadata goes on the nodes
    (``node.meta["tensor_meta"]``) or, when ``into`` is given, into that dict by node name."""

    def __init__(self, gm: "RecordedGraph", model: nn.Module, meta: bool, into: dict[str, Any] | None) -> None:
        self.gm = gm
        self.model = model
        self.on_meta = meta
        self.into = into

    def _module_call(self, mod: nn.Module, args: tuple, kwargs: dict) -> Any:
        if not self.on_meta:
            return mod(*args, **kwargs)
        saved = []
        try:  # parameters swapped for meta copies for the call only
            for sub in mod.modules():
                for table in (sub._parameters, sub._buffers):
                    for k, v in table.items():
                        if v is not None:
                            saved.append((table, k, v))
                            table[k] = v.to("meta")
            return mod(*args, **kwargs)
        finally:
            for table, k, v in saved:
                table[k] = v

    def _value(self, n: fx.Node, args: tuple, kwargs: dict, how: str, mod: nn.Module | None) -> Any:
        op = n.op
        if self.on_meta and how != _RUN:
            if how == _SAME:
                out = _same(args, kwargs)
                if out is not None:
                    return out  # on meta a tensor is only its metadata: no need for a new one
            elif how == _BROADCAST:
                out = _broadcast(n.target, args, kwargs)
                if out is not None:
                    return out
            elif how == _SPEC:
                from .registry import output_shape
                shape = output_shape(mod, args, kwargs)  # None for a call the formula does not cover
                if shape is not None:
                    return torch.empty(shape, dtype=args[0].dtype, device="meta")
        if op == "call_function":
            return n.target(*args, **kwargs)
        if op == "call_method":
            self_obj, *rest = args
            return getattr(self_obj, n.target)(*rest, **kwargs)
        if op == "call_module":
            return self._module_call(mod, args, kwargs)
        raise RuntimeError(f"shape propagation: unexpected node op {op!r} ({n.name})")

    def run(self, *inputs: Any) -> None:
        gm, env = self.gm, {}
        plan = _node_plan(gm, self.model)
        free = None if self.on_meta else _last_uses(gm)
        if self.on_meta:
            inputs = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in inputs)
        pending = iter(inputs)
        lookup: Callable[[fx.Node], Any] = env.__getitem__
        for n in gm.graph.nodes:
            op = n.op
            if op == "placeholder":
                target = str(n.target)
                if target.startswith("*"):
                    value: Any = list(pending)
                else:
                    try:
                        value = next(pending)
                    except StopIteration:
                        if not n.args:
                            raise RuntimeError(f"expected a positional input for {target}") from None
                        value = n.args[0]  # the parameter's default
            elif op == "output":
                return None
            elif "attr" in n.meta:  # a module's int attribute (record.attribute_int): read it now
                value = read_attribute(self.model, *n.meta["attr"])
            elif op == "get_attr":
                value = _fetch(self.model, gm, str(n.target))
                if self.on_meta and isinstance(value, torch.Tensor):
                    value = value.to("meta")
            else:
                how, mod = plan[n.name]
                args = map_arg(n.args, lookup)
                kwargs = map_arg(n.kwargs, lookup)
                value = self._value(n, args, kwargs, how, mod)  # type: ignore[arg-type]
            env[n] = value
            self._note(n, value)
            if free is not None:
                for dead in free.get(n, ()):
                    del env[dead]
        return None

    def _note(self, n: fx.Node, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            m: Any = _extract_tensor_metadata(value, include_contiguity=False)  # memory formats: unused, slow on meta
        elif isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
            m = map_aggregate(value, lambda v: _extract_tensor_metadata(v, include_contiguity=False)
                              if isinstance(v, torch.Tensor) else v)
        else:
            return
        if self.into is not None:
            self.into[n.name] = m
        else:
            n.meta["tensor_meta"] = m


def _node_plan(gm: "RecordedGraph", model: nn.Module) -> dict[str, tuple[str, nn.Module | None]]:
    """Per call node: how its output is found on meta, and its module. Decided once per graph
    (surgery changes tensors, never the graph or the modules' types), kept on ``gm``."""
    plan = gm.__dict__.get("_shape_plan")  # by node name: a deep copy's nodes are new objects
    if plan is None or plan[0] is not model or plan[1] is not gm.graph:
        nodes = {}
        for n in gm.graph.nodes:
            mod = _fetch(model, gm, str(n.target)) if n.op == "call_module" else None
            nodes[n.name] = (_how(n, mod), mod)
        plan = gm.__dict__["_shape_plan"] = (model, gm.graph, nodes)
    return plan[2]


def _last_uses(gm: "RecordedGraph") -> dict[fx.Node, list[fx.Node]]:
    """Node -> the values no node after it reads (freed there in a run on real tensors)."""
    seen: set[fx.Node] = set()
    out: dict[fx.Node, list[fx.Node]] = {}
    for n in reversed(gm.graph.nodes):
        for used in n.all_input_nodes:
            if used not in seen:
                seen.add(used)
                out.setdefault(n, []).append(used)
    return out


def record_shapes(gm: "RecordedGraph", model: nn.Module, args: tuple, into: dict[str, Any] | None = None) -> None:
    """Run ``gm`` on positional ``args`` and note every node's output metadata (on the nodes, or
    ``into``). On the meta device unless a leaf is a module surgeon does not know."""
    plan = _node_plan(gm, model)
    from .registry import is_known_layer
    on_meta = all(n.op != "call_module" or is_known_layer(plan[n.name][1]) for n in gm.graph.nodes)
    with torch.no_grad():
        if on_meta:
            try:
                _ShapeRecorder(gm, model, True, into).run(*args)
                return
            except Exception:  # an op without a meta kernel, or data-dependent code in a leaf
                if into is not None:
                    into.clear()
        _ShapeRecorder(gm, model, False, into).run(*args)

