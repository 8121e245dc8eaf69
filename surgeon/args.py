"""Call arguments as the rules read them, with the provenance the tracers give ints.

A size or dim in a recorded call is a literal int, or an fx node: read off a tensor at run time
(``x.size(1)``), an int attribute of a module (``self.num_heads``, see ``record.attribute_ints``), or
arithmetic on those. ``call_arg`` gives rules reading *dims* plain values; rules reading *sizes*
(reshape.py) keep the nodes and ask ``size_kind``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch.fx as fx

__all__ = ["call_arg", "int_value", "size_kind", "shown", "SizeOf"]


def call_arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` / ``name`` of a call. An int the concrete tracer recorded as a node (a dim
    read from ``self.dim``, a size) comes back as its value: rules reading dims need the number;
    rules reading *sizes* look at ``node.args`` themselves, where provenance is kept."""
    v = node.args[i] if len(node.args) > i else node.kwargs.get(name, default)
    if isinstance(v, (tuple, list)):  # dims from a tuple attribute: (1, 2)
        return type(v)(v.meta["value"] if isinstance(v, fx.Node) and isinstance(v.meta.get("value"), int)
                       else v for v in v)
    if isinstance(v, fx.Node) and isinstance(v.meta.get("value"), int):
        return v.meta["value"]
    return v


def int_value(v: Any) -> int | None:
    """The value of an int argument: a literal, or a node of the concrete tracer / an attribute
    node that knows its value; None when only known at run time (a symbolic fx proxy)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return int(v)
    if isinstance(v, fx.Node) and isinstance(v.meta.get("value"), int):
        return v.meta["value"]
    return None


def shown(v: Any) -> Any:
    """A size argument as the user wrote it evaluates: its value when known."""
    value = int_value(v)
    return value if value is not None else v


class SizeOf(NamedTuple):
    """A requested size read off another tensor's dim as a whole shape (``x.reshape_as(y)``)."""

    ref: Any
    dim: int


def size_kind(v: Any) -> str:
    """How a requested size of a view / reshape / split was written.

    "free": -1, or computed from a tensor's size at run time (``x.size(1) // 2``): it follows the
    tensors when they shrink. "attr": a module's int attribute read as is (``self.num_heads``,
    recorded by the concrete tracer): it can follow if the surgery updates the attribute.
    "literal": typed in the code, or arithmetic on attributes only: it stays as it is.
    """
    if isinstance(v, SizeOf):
        return "free"
    if isinstance(v, fx.Node):
        return v.meta.get("size_kind", "free")
    return "free" if v == -1 else "literal"
