"""Step 6: physical surgery. Replace every affected parameter / buffer by a smaller tensor, update
the layers' size attributes, then check the post-conditions; restore everything if any step fails.

Post-conditions (each one has a test proving it fires):
1. every registered layer's attributes agree with its tensors (``LayerSpec.check``);
2. the model still runs on the example inputs, and every activation position has the size the plan
   predicts (original size minus removed indices). A symbolic graph is re-run on the pruned tensors
   (surgery never changes the code); a concrete trace, or a graph whose Python read module int
   attributes, is traced again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from .errors import SurgeryError
from .context import is_multi
from .graph import iter_module_calls, layer_positions
from .indexmap import Pos
from .record import write_attribute
from .registry import layer_spec
from .capture import Traced, rerun_shapes, submodule, trace_fx

if TYPE_CHECKING:
    from .trace import ChannelGraph

__all__ = ["apply_removal", "resolve_tensor", "check_layers", "Snapshot", "ShapeMismatch"]


def resolve_tensor(model: nn.Module, path: str) -> torch.Tensor:
    owner_name, _, name = path.rpartition(".")
    owner = submodule(model, owner_name)
    t = getattr(owner, name)
    assert isinstance(t, torch.Tensor), f"{path} is not a tensor"
    return t


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """id(tensor) -> every (module, attribute name, kind) that holds it (tied weights: several)."""
    holders: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for m in model.modules():
        for kind, table in (("param", m._parameters), ("buffer", m._buffers)):
            for name, t in table.items():
                if t is not None:
                    holders.setdefault(id(t), []).append((m, name, kind))
        for name, v in vars(m).items():
            if isinstance(v, torch.Tensor) and not name.startswith("_"):
                holders.setdefault(id(v), []).append((m, name, "attr"))
    return holders


class Snapshot:
    """References to the tensors and attributes of some modules. Surgery never edits a tensor in
    place (index_select makes new ones), so restoring the references restores the model exactly."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self._saved = [(m, dict(m._parameters), dict(m._buffers),
                        {k: v for k, v in vars(m).items() if not k.startswith("_")}) for m in modules]

    def restore(self) -> None:
        for m, params, buffers, attrs in self._saved:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            for k in [k for k in vars(m) if not k.startswith("_") and k not in attrs]:
                delattr(m, k)
            for k, v in attrs.items():
                object.__setattr__(m, k, v)


def check_layers(model: nn.Module, traced: Traced) -> list[str]:
    """Every registered layer's size attributes versus its tensors."""
    bad = []
    for _, qn, m, entry in iter_module_calls(traced):
        bad += [f"{qn} ({type(m).__name__}): {msg}" for msg in entry.layer.check(m)]
    return list(dict.fromkeys(bad))


def _new_sizes(graph: "ChannelGraph", removed: dict[Pos, np.ndarray]) -> dict[Pos, int]:
    return {p: graph.size(p) - len(idx) for p, idx in removed.items() if len(idx)}


class ShapeMismatch(SurgeryError):
    """The pruned model's own forward computed a tensor of another size than the plan predicted
    (``positions``): some size in the code did not follow the cut."""

    def __init__(self, message: str, positions: list[Pos]) -> None:
        super().__init__(message)
        self.positions = positions


def _aligned_names(old: Any, new: Any) -> dict[str, Any]:
    """Old node name -> the new trace's TensorMetadata for the same node.

    When both traces ran the same ops in the same order, nodes match by name. A concrete trace
    can take another path after the cut (a detection head rebuilds its cached anchor grid because
    the feature shape changed): then layer calls match by (module, k-th call) and the model
    outputs by position, which is what the shapes are checked on.
    """
    def ops(g: Any) -> list[tuple[str, Any]]:
        return [(n.op, n.target) for n in g.graph.nodes]

    new_nodes = list(new.graph.nodes)
    if ops(old) == ops(new):
        return {n.name: m.meta.get("tensor_meta") for n, m in zip(old.graph.nodes, new_nodes)}
    def calls(g: Any) -> dict[tuple[str, int], Any]:
        seen: dict[str, int] = {}
        out = {}
        for n in g.graph.nodes:
            if n.op == "call_module":
                k = seen[str(n.target)] = seen.get(str(n.target), -1) + 1
                out[(str(n.target), k)] = n
        return out
    new_calls = calls(new)
    aligned = {n.name: new_calls[key].meta.get("tensor_meta")
               for key, n in calls(old).items() if key in new_calls}
    old_out = [n for n in old.graph.nodes if n.op == "output"][0]
    new_out = [n for n in new_nodes if n.op == "output"][0]
    for a, b in zip(old_out.all_input_nodes, new_out.all_input_nodes):
        aligned.setdefault(a.name, b.meta.get("tensor_meta"))
    return aligned


def _shape_check(graph: "ChannelGraph", removed: dict[Pos, np.ndarray], inputs: Any) -> None:
    """Run the pruned model's own forward and compare every activation's shape with the prediction:
    the symbolic graph re-run on the pruned tensors (``capture.rerun_shapes``), or a new trace
    where only that is right (concrete traces, graphs reading module int attributes)."""
    shapes = rerun_shapes(graph.traced) if graph.traced.inputs is inputs else None
    if shapes is None:
        new = trace_fx(graph.model, inputs, graph.traced.leaf_modules, method=graph.traced.method)
        shapes = _aligned_names(graph.traced.gm, new.gm)
    bad: list[str] = []
    wrong: list[Pos] = []
    for pos in graph.nx.nodes:
        if pos.kind != "t":
            continue
        name, _, k = pos.ref.partition("#")
        meta = shapes.get(name)
        if meta is None:
            continue
        if k:
            meta = meta[int(k)] if is_multi(meta) else None
        if meta is None or not isinstance(meta, TensorMetadata):
            continue
        want = graph.size(pos) - len(removed.get(pos, ()))
        got = int(meta.shape[pos.dim]) if pos.dim < len(meta.shape) else -1
        if got != want:
            bad.append(f"node {name} dim {pos.dim}: expected {want} channels, got {got}")
            wrong.append(pos)
    if bad:
        raise ShapeMismatch("pruned model computes tensors of unexpected shapes: " + "; ".join(bad[:5]), wrong)


def _attribute_updates(graph: "ChannelGraph", removed: dict[Pos, np.ndarray]) -> dict[tuple[str, str], int]:
    """Module int attributes the forward uses as sizes (``self.num_heads`` in a head split) and the
    value each must take: the new size of the position it sizes. Two uses that disagree are an
    error (raised before anything changes)."""
    values: dict[tuple[str, str], int] = {}
    for qual, name, pos, *scale in graph.nx.graph.get("attr_syncs", []):
        new = (graph.size(pos) - len(removed.get(pos, ()))) * (scale[0] if scale else 1)
        if values.setdefault((qual, name), new) != new:
            raise SurgeryError(f"{qual}.{name} sizes two tensors that would shrink differently "
                               f"({values[(qual, name)]} vs {new}); nothing was changed")
    return values


def apply_removal(graph: "ChannelGraph", removed: dict[Pos, np.ndarray], inputs: Any,
                  extra_check: Callable[[], None] | None = None) -> None:
    """Physically remove ``removed`` (position -> sorted indices) from ``graph.model``, atomically.

    ``extra_check`` runs after the built-in post-conditions and inside the same rollback scope
    (``Plan.apply(verify=True)`` passes the surgical-equivalence oracle here).
    """
    model = graph.model
    holders = _holders(model)
    cuts: dict[str, list[tuple[int, np.ndarray]]] = {}
    for pos, idx in removed.items():
        if pos.kind == "p" and len(idx):
            cuts.setdefault(pos.ref, []).append((pos.dim, idx))
    new_sizes = _new_sizes(graph, removed)
    calls = [c for c in iter_module_calls(graph.traced)]
    touched_layers = []
    for node, qn, m, entry in calls:
        spec = entry.layer
        pin, pout = layer_positions(node, spec.in_dim, spec.out_dim)
        if pin in new_sizes or pout in new_sizes:
            touched_layers.append((m, spec, new_sizes.get(pin, graph.size(pin)),
                                   new_sizes.get(pout, graph.size(pout))))
    owners = {id(h[0]): h[0] for path in cuts for h in holders[id(resolve_tensor(model, path))]}
    # Subclasses of known layers with their own forward (torchvision's LayerNorm2d) are traced
    # through, so their tensors are cut as plain attributes; their size attributes still need syncing.
    called = {id(m) for m, *_ in touched_layers}
    for path, dims in cuts.items():
        owner_name = path.rpartition(".")[0]
        owner = submodule(model, owner_name)
        spec = layer_spec(owner)
        if spec is not None and id(owner) not in called:
            n = graph.size(Pos("p", path, dims[0][0])) - len(dims[0][1])
            touched_layers.append((owner, spec, n, n))
            called.add(id(owner))
    for m, *_ in touched_layers:
        owners[id(m)] = m
    attr_values = _attribute_updates(graph, removed)
    for (qual, _), _v in attr_values.items():
        m = submodule(model, qual)
        owners[id(m)] = m
    snap = Snapshot(list(owners.values()))
    kept: dict[tuple[bytes, int, Any], torch.Tensor] = {}  # a group's tensors mostly lose the same indices

    def keep_index(n: int, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        key = (np.asarray(idx, dtype=np.int64).tobytes(), n, device)
        if key not in kept:
            keep = np.ones(n, dtype=bool)
            keep[idx] = False
            kept[key] = torch.as_tensor(np.flatnonzero(keep), device=device)
        return kept[key]

    try:
        for path, dims in cuts.items():
            old = resolve_tensor(model, path)
            new = old.detach()
            for dim, idx in dims:
                new = new.index_select(dim, keep_index(new.shape[dim], idx, new.device))
            if new.data_ptr() == old.data_ptr():
                new = new.clone()  # only a dim with nothing removed: never share storage with `old`
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            for owner, name, kind in holders[id(old)]:  # tied tensors stay tied
                table = {"param": owner._parameters, "buffer": owner._buffers}.get(kind)
                if table is not None:
                    table[name] = new
                else:
                    object.__setattr__(owner, name, new)
        synced: set[int] = set()
        for m, spec, n_in, n_out in touched_layers:
            if id(m) not in synced:  # a layer called twice is synced once
                spec.sync(m, n_in, n_out)
                synced.add(id(m))
        for (qual, name), value in attr_values.items():
            write_attribute(model, qual, name, value)
        bad = check_layers(model, graph.traced)
        if bad:
            raise SurgeryError("layer attributes disagree with their tensors after surgery: " + "; ".join(bad[:5]))
        _shape_check(graph, removed, inputs)
        if extra_check is not None:
            extra_check()
    except Exception as e:
        snap.restore()
        if isinstance(e, AssertionError) and not isinstance(e, SurgeryError):
            raise type(e)(f"{e}. The model was restored unchanged.") from e
        if isinstance(e, SurgeryError):
            raise SurgeryError(f"{e}. The model was restored unchanged.") from e
        raise SurgeryError(f"surgery failed ({type(e).__name__}: {e}); the model was restored unchanged.") from e
