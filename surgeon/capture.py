"""Step 1 of the data flow: capture the model as an fx graph (symbolic tracing plus shape
propagation, or ``record.py``'s concrete recording). ``surgeon.trace`` (``trace.py``) builds on it.

We need two things from the user's model before we can reason about channels: the op-level graph
(``torch.fx``) and the shape of every intermediate tensor (``ShapeProp``), because index maps such as
"flatten turns channel c into features [c*H*W, (c+1)*H*W)" depend on the sizes.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ContextManager, Iterable, Iterator, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from .errors import TraceFailure, ValueDependentWarning
from .record import SizeInt, failing_user_frame, make_attr_node, user_frames, user_source, user_stacklevel
from .shapes import record_shapes

__all__ = ["Traced", "trace_fx", "rerun_shapes", "node_source", "node_module", "submodule", "as_input_tuple", "as_example_inputs",
           "ExampleInputs", "eval_mode", "TRACERS"]


@dataclass(frozen=True)
class ExampleInputs:
    """The example inputs as the model takes them: positional ``args`` and keyword ``kwargs``
    (``input_ids=..., attention_mask=...``). Non-tensor values are passed through as they are."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def call(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in list(self.args) + list(self.kwargs.values()) if isinstance(t, torch.Tensor)]

    def describe(self) -> str:
        """``of shape (1, 3, 224, 224)``, or the keyword names with their shapes."""
        parts = [str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__ for t in self.args]
        parts += [f"{k}={tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
                  for k, v in self.kwargs.items()]
        return ", ".join(parts)


def as_example_inputs(example_inputs: Any) -> ExampleInputs:
    """Normalise ``example_inputs``: a Tensor, a tuple / list of positional inputs, or a dict of
    keyword inputs. The one place that checks them, so every entry point reports the same error."""
    if isinstance(example_inputs, ExampleInputs):
        return example_inputs
    if isinstance(example_inputs, torch.Tensor):
        return ExampleInputs((example_inputs,), {})
    if isinstance(example_inputs, dict):
        bad = [k for k in example_inputs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"keyword example_inputs need str keys (argument names of forward), got {bad[0]!r}")
        ex = ExampleInputs((), dict(example_inputs))
    elif isinstance(example_inputs, (tuple, list)):
        ex = ExampleInputs(tuple(example_inputs), {})
    else:
        raise TypeError("example_inputs must be a torch.Tensor, a tuple of positional inputs or a dict "
                        f"of keyword inputs, got {type(example_inputs).__name__}; pass e.g. "
                        "torch.randn(1, 3, 224, 224) or {'input_ids': ids, 'attention_mask': mask}")
    if not ex.tensors():
        first = next(iter(ex.kwargs.values())) if ex.kwargs else ex.args[0] if ex.args else None
        where = "example_inputs" if ex.kwargs else "example_inputs[0]"
        if first is None and not ex.kwargs and not ex.args:
            raise ValueError("example_inputs is empty: the model needs at least one input tensor")
        raise TypeError(f"{where} must be a torch.Tensor, got {type(first).__name__}: the model needs "
                        "at least one input tensor, e.g. torch.randn(1, 3, 224, 224)")
    return ex


def as_input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Positional tensor inputs only (what the ONNX exporters and the MAC counter's fallback take)."""
    if isinstance(example_inputs, dict):
        raise TypeError("this step takes positional tensor inputs; keyword example_inputs (a dict) "
                        "are supported by trace / plan / prune / verify")
    ex = as_example_inputs(example_inputs)
    for i, t in enumerate(ex.args):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"example_inputs[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return tuple(ex.args)


@contextmanager
def module_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Run ``model`` in train (``training=True``) or eval mode; afterwards every module gets back its
    *own* flag (a model in train mode with one frozen BatchNorm in eval keeps it that way)."""
    modes = [(m, m.training) for m in model.modules()]
    if any(mode != training for _, mode in modes):  # already there: skip train()'s walk of setattrs
        model.train(training)
    try:
        yield model
    finally:
        for m, mode in modes:
            vars(m)["training"] = mode  # a plain attribute: skip nn.Module.__setattr__ (ResNet-50: 1 ms)


def eval_mode(model: nn.Module) -> ContextManager[nn.Module]:
    """``module_mode(model, False)``: eval mode, every module's own flag restored afterwards."""
    return module_mode(model, False)


class _Tracer(fx.Tracer):
    """fx tracer that also treats the user's ``leaf_modules`` as opaque calls."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: set[str]) -> None:
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names
        self._attr_nodes: dict[Any, fx.Node] = {}

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        """Also notes the user's source line (cheaper than fx's ``record_stack_traces``)."""
        node = super().create_node(*args, **kwargs)
        if node.op in ("call_function", "call_method"):  # layers are named by their qualname
            source = user_source(2)
            if source:
                node.meta["source"] = source
        return node

    def create_arg(self, a: Any) -> Any:
        """A module's int attribute (``self.num_heads``, see ``record.attribute_ints``) becomes an
        ``attribute_int`` node, so rules can tell it from a literal."""
        if isinstance(a, SizeInt) and a.kind == "attr":
            node = self._attr_nodes.get(a.attr)
            if node is None:
                node = self._attr_nodes[a.attr] = make_attr_node(self.graph, a)
            return node
        return super().create_arg(a)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self._leaf_names or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


@dataclass
class Traced:
    """A traced model: the fx graph module plus the shapes every node produced."""

    model: nn.Module
    gm: "RecordedGraph"  # the fx graph and the model's modules / tensors by name (either tracer)
    inputs: Any  # the example inputs as the user gave them (Tensor, tuple or dict)
    leaf_modules: tuple[Any, ...] = ()  # re-used when the pruned model is traced again
    method: str = "fx"  # which tracer produced the graph: "fx" (symbolic) or "concrete"

    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.gm.graph.nodes)

    def meta(self, node: fx.Node) -> Any:
        """TensorMetadata (or nested tuple of them) of ``node``'s output, None for non-tensors."""
        return node.meta.get("tensor_meta")

    def shape(self, node: fx.Node, index: int | None = None) -> tuple[int, ...] | None:
        m = self.meta(node)
        if index is not None:
            if not isinstance(m, (tuple, list)) or index >= len(m):
                return None
            m = m[index]
        return tuple(m.shape) if isinstance(m, TensorMetadata) else None


def _user_frame(exc: BaseException) -> str:
    """" at file:line (code)" where the user's code failed, or ""."""
    where = failing_user_frame(exc)
    return f" at {where}" if where else ""


def submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` through the ``_modules`` dicts: the same module, several times
    faster (a plan looks modules up thousands of times); anything unusual (a missing name, a None
    child) goes to ``get_submodule`` for its answer or its error."""
    m: Any = model
    try:
        for part in name.split(".") if name else ():
            m = m._modules[part]
    except (KeyError, AttributeError):
        return model.get_submodule(name)
    return m if isinstance(m, nn.Module) else model.get_submodule(name)


def node_source(node: fx.Node) -> str:
    """"file:line" of the user's code that made ``node`` (either tracer notes it), or ""."""
    return node.meta.get("source", "")


def node_module(node: fx.Node) -> str | None:
    """Qualified name of the innermost module whose forward made ``node`` (either tracer)."""
    if "module" in node.meta:
        return node.meta["module"]
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    last = list(stack.values())[-1]
    return last[0] if isinstance(last, tuple) else str(last)


def _in_root_forward(model: nn.Module, exc: BaseException) -> bool:
    """Did the failing user frame run in the root module's own forward (where a leaf cannot help)?"""
    frames = user_frames(exc)
    code = getattr(type(model).forward, "__code__", None)
    return bool(frames) and code is not None and frames[-1].filename == code.co_filename and (
        frames[-1].name == code.co_name and code.co_firstlineno <= (frames[-1].lineno or 0))


class RecordedGraph:
    """What surgeon reads of a traced model: the fx graph, and the model's submodules and tensors
    by qualified name (plus ``constants``: tensors symbolic fx made attributes while tracing,
    ``_tensor_constant0``). Not an ``fx.GraphModule``: nothing runs the graph as code, and building
    one (copying the module tree, generating and compiling Python) cost MobileNetV2 11 ms a trace."""

    def __init__(self, model: nn.Module, graph: fx.Graph, constants: dict[str, Any] | None = None) -> None:
        self.graph = graph
        self._model = model
        self._constants = constants or {}

    def get_submodule(self, target: str) -> nn.Module:
        return submodule(self._model, target)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if "_model" not in d:  # half-built (copy.deepcopy asks for __setstate__ first)
            raise AttributeError(name)
        if name in d["_constants"]:
            return d["_constants"][name]
        return getattr(d["_model"], name)


def _resolve_leaves(model: nn.Module, leaf_modules: Iterable[Any]) -> tuple[tuple[type, ...], set[str]]:
    types: list[type] = []
    names: set[str] = set()
    by_id = {id(m): n for n, m in model.named_modules()}
    for leaf in leaf_modules:
        if isinstance(leaf, type):
            types.append(leaf)
        elif isinstance(leaf, str):
            if leaf not in dict(model.named_modules()):
                raise ValueError(f"leaf_modules names {leaf!r}, which is not a submodule of the model")
            names.add(leaf)
        elif isinstance(leaf, nn.Module) and id(leaf) in by_id:
            names.add(by_id[id(leaf)])
        else:
            raise ValueError(f"leaf_modules entry {leaf!r} is not a module type, a submodule or its name")
    return tuple(types), names


def _refuse_masked(model: nn.Module) -> None:
    """Masks (torch.nn.utils.prune) and parametrizations recompute ``weight`` from other tensors on
    every forward; slicing ``weight`` alone would be undone, so ask for them to be removed first."""
    from torch.nn.utils import parametrize, prune

    for name, m in model.named_modules():
        if any(isinstance(h, prune.BasePruningMethod) for h in m._forward_pre_hooks.values()):
            raise ValueError(f"module {name or type(model).__name__} carries a torch.nn.utils.prune mask; "
                             "make it permanent first with surgeon.remove_masks(model) "
                             "(or torch.nn.utils.prune.remove(module, 'weight'))")
        if parametrize.is_parametrized(m):
            raise ValueError(f"module {name or type(model).__name__} has parametrizations; remove them first "
                             "with torch.nn.utils.parametrize.remove_parametrizations(module, name)")


TRACERS = ("auto", "fx", "concrete")


class _SymbolicTraceError(RuntimeError):
    """fx's symbolic tracer (not the shape propagation that follows) failed."""


def _trace_symbolic(model: nn.Module, ex: ExampleInputs, leaf_types: tuple[type, ...],
                    leaf_names: set[str]) -> RecordedGraph:
    tracer = _Tracer(leaf_types, leaf_names)
    before = set(vars(model))
    try:
        graph = tracer.trace(model)
    except Exception as e:
        raise _SymbolicTraceError(str(e)) from e
    # constant tensors fx set on the root while tracing (removed again when attribute_ints restores it)
    constants = {k: v for k, v in vars(model).items() if k not in before}
    gm = RecordedGraph(model, graph, constants)
    record_shapes(gm, model, ex.args)
    return gm


def rerun_shapes(traced: Traced) -> dict[str, Any] | None:
    """Each node's output metadata by node name, from running the *recorded* symbolic graph again
    on the model as it is now (after surgery), or None where only a new trace is right: a concrete
    trace (a record of one run: the pruned model may take another path) or a graph that reads
    module int attributes (Python control flow on them was fixed when it was traced). Surgery
    changes tensors and size attributes, never the code, so for other symbolic graphs this is what
    a new trace would compute, without tracing again. The graph's own metadata is left alone.
    Raises TraceFailure, as a new trace would, when the forward fails."""
    if traced.method != "fx":
        return None
    if any("attr" in n.meta for n in traced.gm.graph.nodes):
        return None
    out: dict[str, Any] = {}
    model = traced.model
    try:
        with eval_mode(model):
            record_shapes(traced.gm, model, as_example_inputs(traced.inputs).args, into=out)
    except Exception as e:
        raise TraceFailure(f"running {type(model).__name__} on the example inputs failed{_user_frame(e)}: "
                           f"{type(e).__name__}: {e}") from e
    return out


def _trace_concrete(model: nn.Module, ex: ExampleInputs, leaf_types: tuple[type, ...],
                    leaf_names: set[str]) -> RecordedGraph:
    from .record import RecordFailure, record
    from .registry import lookup

    def is_leaf(m: nn.Module, qualname: str) -> bool:
        if qualname in leaf_names or (leaf_types and isinstance(m, leaf_types)):
            return True
        entry = lookup("call_module", qualname, m)
        return entry is not None

    try:
        with torch.no_grad():
            graph, value_reads = record(model, ex.args, ex.kwargs, is_leaf)
    except RecordFailure as e:
        where = f" at {e.where}" if e.where else ""
        raise TraceFailure(
            f"running {type(model).__name__} on example inputs of shape {ex.describe()} failed{where}: {e}. "
            "Pass example inputs with the shape (and dtype, argument names) the model expects, "
            "batch first, e.g. (1, 3, 224, 224)."
        ) from e.__cause__
    if value_reads:
        warnings.warn(
            f"{type(model).__name__}'s forward reads tensor values at {', '.join(value_reads[:3])} "
            "(e.g. `if x.sum() > 0`): the recorded graph is the path these example inputs took. "
            "Branches other inputs take are not checked; pass inputs that exercise the usual path.",
            ValueDependentWarning, stacklevel=user_stacklevel())
    return RecordedGraph(model, graph)


def trace_fx(model: nn.Module, example_inputs: Any, leaf_modules: Sequence[Any] = (),
             method: str = "auto") -> Traced:
    """Trace ``model`` and record the shape of every intermediate tensor.

    method: "fx" traces symbolically (fast; fails on Python that depends on values), "concrete"
    runs the model's real forward on the example inputs and records what ran (see record.py),
    "auto" (default) tries fx first and falls back to concrete when fx cannot trace the model or
    the inputs are keyword arguments. The model is left exactly as it was (modes, attributes).
    Raises TraceFailure naming the failing code (in the user's model) and what to do about it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in TRACERS:
        raise ValueError(f"tracer must be one of {TRACERS}, got {method!r}")
    ex = as_example_inputs(example_inputs)
    _refuse_masked(model)
    leaf_types, leaf_names = _resolve_leaves(model, leaf_modules)
    symbolic_ok = not ex.kwargs and all(isinstance(a, torch.Tensor) for a in ex.args)
    fx_error: BaseException | None = None
    from .record import attribute_ints
    from .registry import is_known_layer
    # attribute_ints: module ints read as sizes with provenance, and every module's attributes
    # (caches a forward sets, e.g. anchor grids) restored afterwards: tracing changes nothing.
    with eval_mode(model), attribute_ints(model, is_known_layer):
        if method == "fx" or (method == "auto" and symbolic_ok):
            try:
                gm = _trace_symbolic(model, ex, leaf_types, leaf_names)
                return Traced(model=model, gm=gm, inputs=example_inputs,
                              leaf_modules=tuple(leaf_modules), method="fx")
            except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError...
                if isinstance(e, _SymbolicTraceError):
                    e = e.__cause__ or e
                    fx_error = e
                if method == "fx":
                    leaf = ("" if _in_root_forward(model, e) else ", or mark the submodule that "
                            "contains it as a leaf (leaf_modules=[...]; its channels are then frozen)")
                    raise TraceFailure(
                        f"torch.fx could not trace {type(model).__name__}{_user_frame(e)}: "
                        f"{type(e).__name__}: {e}. Use tracer='concrete' (runs the real forward)"
                        f"{leaf}."
                    ) from e
        try:
            rg = _trace_concrete(model, ex, leaf_types, leaf_names)
        except TraceFailure as e:
            if fx_error is not None:
                e.args = (f"{e.args[0]} (torch.fx had failed first{_user_frame(fx_error)}: "
                          f"{type(fx_error).__name__}: {fx_error})",)
            raise
    return Traced(model=model, gm=rg, inputs=example_inputs, leaf_modules=tuple(leaf_modules),
                  method="concrete")
