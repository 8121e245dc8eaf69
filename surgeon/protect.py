"""Which groups stay whole because the user said so: ``ignore=`` and ``freeze=`` of ``surgeon.plan``.

- ``ignore=[model.fc]`` keeps fc's *output* channels (Torch-Pruning's ``ignored_layers``): every group
  holding fc's output (its ``weight[c]`` rows, its bias, the tensor it returns) stays whole, while the
  group holding fc's *input* may still shrink, taking fc's ``weight[:, c]`` columns with it. For a
  Linear 512 -> 10 at ratio 0.5 that gives a Linear 256 -> 10.
- ``freeze=[model.fc]`` keeps every tensor of fc as it is: every group touching any of its
  parameters stays whole (fc stays 512 -> 10, so the layer feeding it keeps 512 outputs).

Which side is which comes from each call of the layer in the traced graph (``LayerSpec.in_dim`` /
``out_dim`` through ``graph.layer_positions``). A group holding both the layer's input and its output
(a BatchNorm, a depthwise conv) is the output's, so it stays. An ignored module whose parameters are
not reached through such a call (tensors used in ``forward`` as ``F.conv2d(x, self.weight)``, a
layer-scale ``gamma`` owned by a block, the ``out_proj`` inside ``nn.MultiheadAttention``) has no
known sides: its groups are kept whole as with ``freeze``, and ``Protected.strict`` names it.

The model's outputs never need either option: they are fixed by the graph itself ("model output").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .trace import ChannelGraph
from .graph import iter_module_calls, layer_positions
from .indexmap import Pos

__all__ = ["Protected", "protected_groups", "owner_name", "within"]


def owner_name(path: str) -> str:
    """Qualified name of the module owning a parameter path ("layer1.0.conv1.weight" -> "layer1.0.conv1")."""
    return path.rsplit(".", 1)[0] if "." in path else ""


def within(module: str, names: Iterable[str]) -> bool:
    """True when ``module`` is one of ``names`` or inside one of them ("" is the whole model)."""
    return any(n == "" or module == n or module.startswith(n + ".") for n in names)


@dataclass(frozen=True)
class Protected:
    """reasons: group id -> why ``ignore`` / ``freeze`` keeps it whole. strict: ignored modules with
    no known input / output side (not called as a layer), whose groups were all kept whole."""

    reasons: dict[int, str] = field(default_factory=dict)
    strict: tuple[str, ...] = ()


def _layer_sides(graph: ChannelGraph, names: list[str]) -> dict[str, tuple[set[Pos], set[Pos]]]:
    """Module name -> (input positions, output positions) over all its calls (a shared layer has
    several), for the registered layers called inside ``names``."""
    sides: dict[str, tuple[set[Pos], set[Pos]]] = {}
    for node, qn, _, entry in iter_module_calls(graph.traced):
        if not within(qn, names):
            continue
        try:
            pin, pout = layer_positions(node, entry.layer.in_dim, entry.layer.out_dim)
        except (KeyError, StopIteration):  # no tensor input or no recorded shape: sides unknown (strict)
            continue
        ins, outs = sides.setdefault(qn, (set(), set()))
        ins.add(pin)
        outs.add(pout)
    return sides


def protected_groups(graph: ChannelGraph, ignore: Iterable[str] = (), freeze: Iterable[str] = ()) -> Protected:
    """The groups that ``ignore`` (keep these modules' output channels) and ``freeze`` (keep every
    tensor of these modules) keep whole; names are qualified module names, containers included."""
    ignore, freeze = list(ignore), list(freeze)
    if not ignore and not freeze:
        return Protected()
    sides = _layer_sides(graph, ignore) if ignore else {}
    reasons: dict[int, str] = {}
    strict: dict[str, None] = {}
    for g in graph.groups:
        held = g.channel_of.keys()
        why, unknown = None, None
        for p in g.params:
            owner = owner_name(p.ref)
            if within(owner, freeze):
                why = f"holds a parameter of frozen module {owner!r}"
            elif within(owner, ignore) and owner not in sides:
                unknown = unknown or owner
            elif within(owner, ignore):
                ins, outs = sides[owner]
                if outs & held or not ins & held:  # its output, or a dim inside it (attention heads)
                    why = f"holds the output channels of ignored module {owner!r}"
            if why:
                break
        if why is None:  # an ignored layer without parameters of its own (BatchNorm(affine=False))
            hit = next((qn for qn, (_, outs) in sides.items() if outs & held), None)
            why = f"holds the output channels of ignored module {hit!r}" if hit is not None else None
        if why is None and unknown is not None:
            strict.setdefault(unknown, None)
            why = (f"holds a parameter of ignored module {unknown!r}, which is not called as a layer, so all "
                   "its parameters are kept")
        if why:
            reasons[g.id] = why
    return Protected(reasons, tuple(strict))
