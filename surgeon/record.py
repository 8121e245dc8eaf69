"""Concrete tracing: run the model's own Python on the example inputs and record every torch call.

Symbolic ``torch.fx`` replaces tensors by proxies, so ordinary Python fails on it: a shape check
(``if h % 32``), iterating over ``x.chunk(2, 1)``, ``isinstance`` / dtype checks, ``*args`` and
``**kwargs``, dataclass outputs. This tracer executes the real forward instead, under a
``TorchFunctionMode`` that sees every torch function and tensor method, and writes what ran into an
``fx.Graph`` with the same node kinds and targets as a symbolic trace (``call_module`` for layers
the registry knows, ``call_function`` with the function object, ``call_method`` with the method
name). The op registry therefore applies unchanged: one entry per op, whichever tracer ran.

**Sizes keep their provenance.** After real execution a size computed at run time
(``x.view(x.size(0), -1)``) and a literal (``x.view(-1, 512)``) are both plain ints. Here they are
not: ``x.size()`` / ``x.shape`` return ``SizeInt`` values that remember the fx node they came from,
and arithmetic on them records ``operator`` nodes, so a reshape's argument is an ``fx.Node`` when it
was computed from a tensor's size and a literal int when it was typed in the code. Integer
attributes of the model's modules (``self.num_heads``) are read as ``SizeInt`` of kind ``"attr"``
while the model runs (restored afterwards), so a rule can tell "hard-coded 12" from "the module's
``num_heads``, which the surgery can update". Whatever loses its provenance (``int(x / 2)``,
``math`` functions) becomes a literal, which rules treat as fixed: the safe direction.

The model is never changed: every module's training flag and every int attribute is restored, the
forward runs under ``torch.no_grad()`` in eval mode, and a failure leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import inspect
import operator
import os
import re
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.overrides import TorchFunctionMode

__all__ = ["SizeInt", "record", "read_attribute", "write_attribute", "user_source", "user_frames", "failing_user_frame", "is_library_file", "constant_tensor", "attribute_int", "attribute_ints", "make_attr_node",
           "flatten_tensors", "RecordFailure"]

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_SURGEON_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_DIRS = (_TORCH_DIR + os.sep, _SURGEON_DIR + os.sep)  # the separator: not torchvision/


def is_library_file(filename: str) -> bool:
    """A frame of torch or surgeon itself (never the place to point a user at)."""
    return filename.startswith(_LIBRARY_DIRS) or filename.startswith("<")


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by this function's caller that points at the
    innermost frame outside torch and surgeon: the user's line, however deep inside surgeon the
    warning is raised (``plan`` -> ``trace``, ``prune`` -> ``plan``...)."""
    f = sys._getframe(1)
    level = 1
    while f is not None and f.f_code.co_filename.startswith(_LIBRARY_DIRS):
        f = f.f_back
        level += 1
    return level if f is not None else 1


def user_source(depth: int = 1) -> str:
    """"file:line" of the innermost caller frame outside torch and surgeon: the user's line."""
    f = sys._getframe(depth)
    while f is not None:
        if not is_library_file(f.f_code.co_filename):
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return ""


class RecordFailure(RuntimeError):
    """The model's forward raised while being recorded; ``where`` is the user's source line."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


def constant_tensor() -> None:
    """fx target of a tensor that the recorded forward used but did not compute from its inputs or
    parameters (a cached anchor grid, a tensor made at import time). Never called."""
    raise RuntimeError("constant_tensor is a graph marker, not a function")


def attribute_int() -> None:
    """fx target of a module's int attribute read by forward (``self.num_heads``);
    ``node.meta["attr"]`` is ``(module qualname, attribute name)``. Never called: shape propagation
    reads the attribute itself (``shapes.record_shapes``)."""
    raise RuntimeError("attribute_int is a graph marker, not a function")


_active: "_Recorder | None" = None


class SizeInt(int):
    """An int that remembers the fx node it came from.

    kind: ``"size"`` when it was read off a tensor (or computed from such reads): it follows the
    tensors when they shrink; ``"attr"`` when it is a module's int attribute read as is
    (``attr`` = (module qualname, attribute name); its node is made by the tracer that meets it:
    the recorder, or the symbolic tracer's ``create_arg``). Arithmetic records an ``operator``
    node while a recording runs; afterwards, or under symbolic tracing, it gives a plain int.
    """

    def __new__(cls, value: int, node: fx.Node | None, kind: str,
                attr: tuple[str, str] | None = None) -> "SizeInt":
        obj = super().__new__(cls, value)
        obj.node = node
        obj.kind = kind
        obj.attr = attr
        return obj

    def __reduce__(self) -> Any:  # deepcopy / pickle of a model holding one: a plain int
        return (int, (int(self),))

    def __deepcopy__(self, memo: Any) -> int:
        return int(self)


def _arith(op: Callable[[Any, Any], Any], reverse: bool = False) -> Callable[..., Any]:
    def method(self: SizeInt, other: Any) -> Any:
        a, b = (other, self) if reverse else (self, other)
        value = op(int(a) if isinstance(a, SizeInt) else a, int(b) if isinstance(b, SizeInt) else b)
        rec = _active
        if rec is None or rec.depth or not isinstance(value, int) or isinstance(value, bool):
            return value  # a float (x / 2) or a comparison: provenance ends here (safe: literal)
        kinds = {x.kind for x in (a, b) if isinstance(x, SizeInt)}
        node = rec.graph.call_function(op, (rec.value_arg(a), rec.value_arg(b)))
        rec.note_source(node)
        kind = "size" if "size" in kinds else "expr"
        node.meta["size_kind"] = "free" if kind == "size" else "literal"
        node.meta["value"] = value
        return SizeInt(value, node, kind)
    return method


for _name, _op in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("floordiv", operator.floordiv), ("mod", operator.mod)]:
    setattr(SizeInt, f"__{_name}__", _arith(_op))
    setattr(SizeInt, f"__r{_name}__", _arith(_op, reverse=True))
SizeInt.__neg__ = lambda self: _arith(operator.mul)(self, -1)  # type: ignore[assignment]


# dunder methods of Tensor -> the operator function fx records for them (r-forms swap operands)
_DUNDER = {
    "__add__": operator.add, "__sub__": operator.sub, "__mul__": operator.mul,
    "__truediv__": operator.truediv, "__floordiv__": operator.floordiv, "__mod__": operator.mod,
    "__pow__": operator.pow, "__matmul__": operator.matmul, "__and__": operator.and_,
    "__or__": operator.or_, "__xor__": operator.xor, "__neg__": operator.neg,
    "__invert__": operator.invert, "__getitem__": operator.getitem, "__setitem__": operator.setitem,
    "__iadd__": operator.iadd, "__isub__": operator.isub, "__imul__": operator.imul,
    "__itruediv__": operator.itruediv, "__eq__": operator.eq, "__ne__": operator.ne,
    "__lt__": operator.lt, "__le__": operator.le, "__gt__": operator.gt, "__ge__": operator.ge,
}
_RDUNDER = {"__radd__": operator.add, "__rsub__": operator.sub, "__rmul__": operator.mul,
            "__rtruediv__": operator.truediv, "__rpow__": operator.pow, "__rmatmul__": operator.matmul,
            "__rfloordiv__": operator.floordiv}
_VALUE_READS = {"__bool__", "item", "tolist", "__int__", "__float__", "__index__"}
# properties read through Tensor's getset descriptors that are not data flow
_PASSIVE_PROPERTIES = {"dtype", "device", "requires_grad", "is_cuda", "layout", "ndim", "is_sparse",
                       "is_quantized", "is_meta", "names", "grad_fn", "is_leaf", "itemsize", "nbytes",
                       "is_mps", "is_nested", "output_nr", "_version", "is_cpu", "grad"}
_PASSIVE_METHODS = {"dim", "ndimension", "is_contiguous", "is_floating_point", "is_complex",
                    "get_device", "element_size", "data_ptr", "storage_offset", "stride",
                    "__len__", "__bool__", "__format__", "__repr__", "__hash__", "__index__",
                    "__int__", "__float__", "tolist", "item", "__array__", "__iter__", "__contains__",
                    "__reduce_ex__", "__deepcopy__", "has_names", "is_inference", "is_signed",
                    "untyped_storage", "_is_view", "__dlpack__", "__dlpack_device__"}


def _is_tensor_method(func: Any) -> bool:
    owner = getattr(func, "__objclass__", None)
    if owner is not None:
        return issubclass(owner, torch._C.TensorBase)
    qual = getattr(func, "__qualname__", "") or ""
    return qual.startswith(("Tensor.", "TensorBase.", "_TensorBase."))


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a nested output: tensors, tuples / lists, dicts (Hugging Face ``ModelOutput``
    is one), dataclasses; in order, each tensor object once."""
    found: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            if id(o) not in seen:
                seen.add(id(o))
                found.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            for f in dataclasses.fields(o):
                walk(getattr(o, f.name))

    walk(obj)
    return found


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, is_leaf: Callable[[nn.Module, str], bool]) -> None:
        super().__init__()
        self.graph = fx.Graph()
        self.model = model
        self.is_leaf = is_leaf
        self.names = {id(m): n for n, m in model.named_modules()}
        self.params: dict[int, str] = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            self.params.setdefault(id(t), name)
        self.node_of: dict[int, fx.Node] = {}
        self.alive: list[Any] = []  # keeps every recorded tensor alive so ids are never reused
        self.depth = 0  # > 0 inside a leaf module: its internals are not recorded
        self.module_stack = [""]  # qualnames of the (non-leaf) modules whose forward is running
        self.attr_nodes: dict[Any, fx.Node] = {}
        self.value_reads: list[str] = []  # source lines where Python read a computed tensor's value

    # ------------------------------------------------------------------------------ provenance
    def note_source(self, node: fx.Node) -> None:
        """``node.meta["source"]``: the user's line that made the node."""
        source = user_source(2)
        if source:
            node.meta["source"] = source

    def note_value_read(self, how: str) -> None:
        """Python read a computed tensor's *value* (``if x.sum() > 0``, ``x.item()``): the recorded
        graph is the path this example took."""
        where = user_source(2)
        if where and where not in self.value_reads:
            self.value_reads.append(where)

    def _bind(self, t: torch.Tensor, node: fx.Node) -> None:
        self.node_of[id(t)] = node
        self.alive.append(t)

    def tensor_node(self, t: torch.Tensor) -> fx.Node:
        node = self.node_of.get(id(t))
        if node is not None:
            return node
        path = self.params.get(id(t))
        if path is not None:
            node = self.graph.get_attr(path)
        else:
            node = self.graph.call_function(constant_tensor, ())
            self.note_source(node)
        self.depth += 1
        try:
            node.meta["tensor_meta"] = _extract_tensor_metadata(t)
        finally:
            self.depth -= 1
        self._bind(t, node)
        return node

    def value_arg(self, v: Any) -> Any:
        """A call argument as fx stores it: tensors and SizeInts become their nodes."""
        if isinstance(v, torch.Tensor):
            return self.tensor_node(v)
        if isinstance(v, SizeInt):
            return v.node if v.node is not None else self.attr_node(v)
        if isinstance(v, torch.Size):
            return tuple(self.value_arg(x) for x in v)
        if isinstance(v, (list, tuple)):
            out = [self.value_arg(x) for x in v]
            return type(v)(out) if type(v) in (list, tuple) else tuple(out)
        if isinstance(v, dict):
            return {k: self.value_arg(x) for k, x in v.items()}
        if isinstance(v, slice):
            return slice(self.value_arg(v.start), self.value_arg(v.stop), self.value_arg(v.step))
        return v

    def attr_node(self, v: SizeInt) -> fx.Node:
        node = self.attr_nodes.get(v.attr)
        if node is None:
            node = make_attr_node(self.graph, v)
            self.attr_nodes[v.attr] = node
        return node

    def _sizes(self, t: torch.Tensor, node: fx.Node, dims: range) -> list[SizeInt]:
        out = []
        for d in dims:
            n = self.graph.call_method("size", (self.tensor_node(t), d))
            n.meta["size_kind"] = "free"
            n.meta["value"] = int(t.shape[d])
            out.append(SizeInt(int(t.shape[d]), n, "size"))
        return out

    # ------------------------------------------------------------------------------- recording
    def record_call(self, kind: str, target: Any, args: tuple, kwargs: dict, result: Any) -> Any:
        self.depth += 1  # our own bookkeeping below calls tensor methods: never record them
        try:
            return self._record_call(kind, target, args, kwargs, result)
        finally:
            self.depth -= 1

    def _record_call(self, kind: str, target: Any, args: tuple, kwargs: dict, result: Any) -> Any:
        node = self.graph.create_node(kind, target, tuple(self.value_arg(a) for a in args),
                                      {k: self.value_arg(v) for k, v in kwargs.items()})
        self.note_source(node)
        node.meta["module"] = self.module_stack[-1]
        if isinstance(result, torch.Tensor):
            node.meta["tensor_meta"] = _extract_tensor_metadata(result)
            self._bind(result, node)
        elif isinstance(result, (tuple, list)) and any(isinstance(r, torch.Tensor) for r in result):
            node.meta["tensor_meta"] = tuple(_extract_tensor_metadata(r) if isinstance(r, torch.Tensor)
                                             else None for r in result)
            for k, r in enumerate(result):
                if isinstance(r, torch.Tensor):
                    item = self.graph.call_function(operator.getitem, (node, k))
                    item.meta["tensor_meta"] = node.meta["tensor_meta"][k]
                    self._bind(r, item)
        return result

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.depth:
            return result
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a Tensor property: x.shape, x.T, x.dtype...
            prop = getattr(getattr(func, "__self__", None), "__name__", "")
            if prop == "shape" and isinstance(result, torch.Size):
                x = args[0]
                return torch.Size(self._sizes(x, self.tensor_node(x), range(len(result))))
            if prop in _PASSIVE_PROPERTIES or not isinstance(result, torch.Tensor):
                return result
            return self.record_call("call_function", getattr, (args[0], prop), {}, result)
        if _is_tensor_method(func):
            if name in _VALUE_READS and args and id(args[0]) in self.node_of:
                node = self.node_of[id(args[0])]
                if node.op not in ("get_attr",) and node.target is not constant_tensor:
                    self.note_value_read(name)
            if name in _PASSIVE_METHODS:
                return result
            x = args[0]
            if name == "size":
                if isinstance(result, torch.Size):
                    return torch.Size(self._sizes(x, self.tensor_node(x), range(len(result))))
                d = args[1] if len(args) > 1 else kwargs.get("dim")
                return self._sizes(x, self.tensor_node(x), range(int(d) % x.dim(), int(d) % x.dim() + 1))[0]
            if name == "numel":
                n = self.graph.call_method("numel", (self.tensor_node(x),))
                n.meta["size_kind"] = "free"
                return SizeInt(int(result), n, "size")
            if name in _RDUNDER:
                return self.record_call("call_function", _RDUNDER[name], (args[1], args[0]), {}, result)
            if name in _DUNDER:
                return self.record_call("call_function", _DUNDER[name], args, kwargs, result)
            if name.startswith("__"):
                return result
            return self.record_call("call_method", name, args, kwargs, result)
        return self.record_call("call_function", func, args, kwargs, result)

    def call_module(self, module: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        name = self.names.get(id(module))
        if self.depth or name is None:
            return forward(*args, **kwargs)
        if not self.is_leaf(module, name):
            self.module_stack.append(name)
            try:
                return forward(*args, **kwargs)
            finally:
                self.module_stack.pop()
        self.depth += 1
        try:
            result = forward(*args, **kwargs)
        finally:
            self.depth -= 1
        return self.record_call("call_module", name, args, kwargs, result)


def read_attribute(model: nn.Module, qual: str, name: str) -> int:
    """The current value of module ``qual``'s int attribute ``name`` (``"splits[1]"``: an element)."""
    base, _, index = name.partition("[")
    value = getattr(model.get_submodule(qual) if qual else model, base)
    return int(value[int(index[:-1])] if index else value)


def write_attribute(model: nn.Module, qual: str, name: str, value: int) -> None:
    """Set module ``qual``'s int attribute ``name``; an element of a list / tuple attribute replaces
    the whole sequence (never edits it), so a snapshot of the old one restores it exactly."""
    owner = model.get_submodule(qual) if qual else model
    base, _, index = name.partition("[")
    if index:
        seq = getattr(owner, base)
        items = list(seq)
        items[int(index[:-1])] = value
        object.__setattr__(owner, base, type(seq)(items))
    else:
        object.__setattr__(owner, name, value)


def make_attr_node(graph: fx.Graph, v: SizeInt) -> fx.Node:
    """The graph node of an attribute-backed SizeInt (see ``attribute_int``)."""
    qual, name = v.attr
    node = graph.create_node("call_function", attribute_int, (), {},
                             name=re.sub(r"\W", "_", f"attr_{qual}_{name}").strip("_"))
    node.meta["attr"] = (qual, name)
    node.meta["size_kind"] = "attr"
    node.meta["value"] = int(v)
    return node


def is_size_value(v: Any) -> bool:
    """An int, or a non-empty list / tuple of ints (split sizes, timm's ``self.splits``): what a
    module attribute that a forward may read as a size looks like. ``bool`` is not an int here."""
    return type(v) is int or (type(v) in (list, tuple) and len(v) > 0 and all(type(e) is int for e in v))


@contextmanager
def attribute_ints(model: nn.Module, known_layer: Callable[[nn.Module], bool] = lambda m: False
                   ) -> Iterator[None]:
    """Module int attributes read as ``SizeInt`` (kind "attr") while the model runs or is traced.
    Every module's attributes are restored afterwards, including caches its forward set (a
    detection head's anchor grid): tracing must leave the model exactly as it was. Layers the
    registry knows (``known_layer``: conv, BN...) run as opaque calls and cache nothing: skipped."""
    modules = [(q, m) for q, m in model.named_modules() if not known_layer(m)]
    saved = [(m, dict(vars(m))) for _, m in modules]
    try:
        for qual, m in modules:
            for k, v in list(vars(m).items()):
                if k.startswith("_") or not is_size_value(v):
                    continue
                if type(v) is int:
                    object.__setattr__(m, k, SizeInt(v, None, "attr", (qual, k)))
                else:  # split sizes kept as a list (timm's MixedConv2d ``self.splits``)
                    object.__setattr__(m, k, type(v)(SizeInt(e, None, "attr", (qual, f"{k}[{i}]"))
                                                     for i, e in enumerate(v)))
        yield
    finally:
        for m, attrs in saved:
            d = vars(m)
            d.clear()
            d.update(attrs)


@contextmanager
def _module_calls(rec: _Recorder) -> Iterator[None]:
    """Route every nn.Module call through the recorder (leaf layers become call_module nodes)."""
    original = nn.Module._call_impl

    def call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return rec.call_module(self, lambda *a, **k: original(self, *a, **k), args, kwargs)

    nn.Module._call_impl = call  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module._call_impl = original  # type: ignore[method-assign]


def user_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The traceback's frames in the user's code (outside torch and surgeon)."""
    return [f for f in traceback.extract_tb(exc.__traceback__) if not is_library_file(f.filename)]


def failing_user_frame(exc: BaseException) -> str:
    """"file:line (code)" of the innermost traceback frame outside torch and surgeon."""
    frames = user_frames(exc)
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno} ({(f.line or '').strip()})"


def record(model: nn.Module, args: tuple, kwargs: dict,
           is_leaf: Callable[[nn.Module, str], bool]) -> tuple[fx.Graph, list[str]]:
    """Run ``model(*args, **kwargs)``; return the recorded fx.Graph and the source lines where the
    forward branched on a computed tensor's value (the graph is the path this example took).

    Call with the model already in the mode it should run in, under ``torch.no_grad()`` and
    ``attribute_ints(model)`` (which also restores every module's attributes afterwards).
    Raises RecordFailure (with the user's failing line) when the forward raises.
    """
    global _active
    if _active is not None:
        raise RuntimeError("surgeon.record is not re-entrant: a recording is already running")
    rec = _Recorder(model, is_leaf)
    try:
        sig = inspect.signature(model.forward)
        pos_names = [p.name for p in sig.parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        pos_names = []
    for i, a in enumerate(args):
        base = pos_names[i] if i < len(pos_names) else f"input_{i}"
        _placeholders(rec, base, a)
    for k, v in kwargs.items():
        _placeholders(rec, k, v)
    _active = rec
    try:
        with _module_calls(rec), rec:
            out = model(*args, **kwargs)
    except Exception as e:
        raise RecordFailure(f"{type(e).__name__}: {e}", failing_user_frame(e)) from e
    finally:
        _active = None
    rec.graph.output(tuple(rec.tensor_node(t) for t in flatten_tensors(out)))
    _drop_unused_attr_nodes(rec.graph)
    return rec.graph, rec.value_reads


def _placeholders(rec: _Recorder, base: str, value: Any) -> None:
    for j, t in enumerate(flatten_tensors(value)):
        node = rec.graph.placeholder(base if j == 0 else f"{base}_{j}")
        node.meta["tensor_meta"] = _extract_tensor_metadata(t)
        rec._bind(t, node)


_SIZE_ARITH = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod, attribute_int}


def _drop_unused_attr_nodes(graph: fx.Graph) -> None:
    """Size reads and int arithmetic nobody used (``B, C, H, W = x.shape`` reads four)."""
    for node in reversed(list(graph.nodes)):
        if node.users or "tensor_meta" in node.meta:
            continue
        if (node.op == "call_method" and node.target in ("size", "numel")) or (
                node.op == "call_function" and node.target in _SIZE_ARITH):
            graph.erase_node(node)
