"""Channel rules for parameter-free ops that keep channels in their dim: how each dim of an op's
inputs maps onto its outputs (ops that move channels between dims: reshape.py).

A rule receives a ``RuleContext`` (see graph.py) for one fx node and calls ``ctx.same`` /
``ctx.couple`` for every pair of dims it knows to be the same channel. Whatever a rule leaves
uncoupled is *fixed* by the graph builder (it can never shrink), so a rule that is unsure simply
says nothing, or calls ``ctx.fix`` with a reason that is shown to the user.
"""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

from .args import call_arg, int_value
from .indexmap import IndexMap

if TYPE_CHECKING:
    from .context import RuleContext

__all__ = [
    "elementwise", "channelwise", "pad", "reduce", "along_dim", "permute", "transpose", "cat",
    "getitem", "layer_norm", "shape_only", "constant", "like_first", "roll", "tensor_attribute",
]


def elementwise(ctx: "RuleContext") -> None:
    """Unary / binary / n-ary elementwise ops with numpy broadcasting: dims aligned from the right
    with equal sizes are the same channel; a broadcast (size-1) dim couples to nothing."""
    out = ctx.out_shape()
    for x in ctx.tensor_inputs():
        s = ctx.shape(x)
        off = len(out) - len(s)
        for d, size in enumerate(s):
            if off + d >= 0 and size == out[off + d]:
                ctx.same(ctx.t(x, d), ctx.t(ctx.node, off + d))


def like_first(ctx: "RuleContext") -> None:
    """x.type_as(y) / x.to(y) / x.new_zeros(...): the output is x (or a tensor made from x's dtype and
    device); the other tensor is read for its dtype or device only."""
    x = ctx.node.args[0]
    refs = ctx.tensor_inputs()
    for ref in refs:
        if ref is not x:
            ctx.unused_input(ref)
    if ctx.node.target in ("type_as", "to") and isinstance(ctx.node.meta.get("tensor_meta"), TensorMetadata):
        for d in range(len(ctx.shape(x))):
            ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))
    else:  # new_full / new_zeros...: a fresh tensor whose sizes are arguments: x is not read
        ctx.unused_input(x)


def channelwise(ctx: "RuleContext") -> None:
    """Pooling, interpolation: batch and channel dims pass through, spatial dims are resized."""
    x = ctx.tensor_inputs()[0]
    s, out = ctx.shape(x), ctx.out_shape()
    for d in range(min(2, len(s), len(out))):
        if s[d] == out[d]:
            ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))


def pad(ctx: "RuleContext") -> None:
    """F.pad pads the last len(pad)//2 dims; the others pass through, and so does a padded dim
    whose two amounts are 0 (Swin pads (0, 0, 0, pad_r, 0, pad_b): the channels are untouched)."""
    x = ctx.tensor_inputs()[0]
    s = ctx.shape(x)
    amounts = call_arg(ctx.node, 1, "pad", ())
    if not isinstance(amounts, (tuple, list)):
        return  # computed at run time: keep everything fixed
    padded = len(amounts) // 2
    for d in range(len(s)):
        k = len(s) - 1 - d  # pairs run from the last dim backwards
        if k < padded and not (int_value(amounts[2 * k]) == 0 and int_value(amounts[2 * k + 1]) == 0):
            continue
        ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))


def _dims(value: Any, ndim: int) -> list[int] | None:
    if value is None:
        return None
    values = value if isinstance(value, (tuple, list)) else [value]
    if not all(isinstance(v, int) for v in values):
        return None
    return sorted(v % ndim for v in values)


def reduce(ctx: "RuleContext") -> None:
    """mean / sum / amax ... over some dims: the kept dims pass through, the reduced ones are fixed
    (removing a channel that is summed over would change the result, not zero a slice of it)."""
    x = ctx.tensor_inputs()[0]
    s, out = ctx.shape(x), ctx.out_shape()
    reduced = _dims(call_arg(ctx.node, 1, "dim"), len(s))
    if reduced is None:
        return  # full reduction or dims computed at run time
    keepdim = len(out) == len(s)
    j = 0
    for d in range(len(s)):
        if d in reduced:
            ctx.fix(ctx.t(x, d), f"reduced over by {ctx.op_name}")
            if keepdim:
                j += 1
            continue
        ctx.same(ctx.t(x, d), ctx.t(ctx.node, j))
        j += 1


def along_dim(ctx: "RuleContext", dim: Any = None) -> None:
    """softmax-like ops that normalise along one dim: that dim mixes, the others pass through."""
    x = ctx.tensor_inputs()[0]
    s = ctx.shape(x)
    if dim is None:
        dim = call_arg(ctx.node, 1, "dim")
    if not isinstance(dim, int):
        return
    for d in range(len(s)):
        if d == dim % len(s):
            ctx.fix(ctx.t(x, d), f"normalised over by {ctx.op_name}")
        else:
            ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))


def permute(ctx: "RuleContext") -> None:
    """Output dim i is input dim perm[i]."""
    x = ctx.tensor_inputs()[0]
    node = ctx.node
    rest = list(node.args[1:]) or [node.kwargs.get("dims")]
    perm = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
    perm = [int_value(p) for p in perm]  # dims may come from an attribute (torchvision's Permute)
    if not all(isinstance(p, int) for p in perm):
        return
    n = len(ctx.shape(x))
    for i, p in enumerate(perm):
        ctx.same(ctx.t(x, p % n), ctx.t(node, i))


def transpose(ctx: "RuleContext") -> None:
    x = ctx.tensor_inputs()[0]
    n = len(ctx.shape(x))
    d0, d1 = call_arg(ctx.node, 1, "dim0"), call_arg(ctx.node, 2, "dim1")
    if not (isinstance(d0, int) and isinstance(d1, int)):
        return
    perm = list(range(n))
    perm[d0 % n], perm[d1 % n] = perm[d1 % n], perm[d0 % n]
    for i, p in enumerate(perm):
        ctx.same(ctx.t(x, p), ctx.t(ctx.node, i))


def cat(ctx: "RuleContext") -> None:
    """torch.cat: input k lands at offset sum(sizes[:k]) along the cat dim; other dims identity."""
    out = ctx.out_shape()
    dim = call_arg(ctx.node, 1, "dim", 0)
    inputs = ctx.tensor_inputs()
    if not isinstance(dim, int) or len(inputs) != len(ctx.node.args[0]):
        return  # non-tensor entries or a run-time dim
    dim %= len(out)
    off = 0
    for x in inputs:
        s = ctx.shape(x)
        for d in range(len(s)):
            if d == dim:
                ctx.couple(ctx.t(x, d), ctx.t(ctx.node, d), IndexMap.offset(s[d], off))
            else:
                ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))
        off += s[dim]


def roll(ctx: "RuleContext") -> None:
    """torch.roll(x, shifts, dims): rolled dims are permuted (fixed); the others pass through."""
    x = ctx.tensor_inputs()[0]
    n = len(ctx.shape(x))
    dims = call_arg(ctx.node, 2, "dims")
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)) or not all(isinstance(int_value(d), int) for d in dims):
        return  # no dims: a flattened roll, everything fixed
    rolled = {int_value(d) % n for d in dims}
    for d in range(n):
        if d not in rolled:
            ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))


def constant(ctx: "RuleContext") -> None:
    """A tensor the forward used but did not compute (a cached grid): its dims stay as they are."""


def getitem(ctx: "RuleContext") -> None:
    """``outputs[k]`` of a tuple-producing op, or basic slicing of a tensor (``x[:, :, 1:]``)."""
    src, index = ctx.node.args[0], ctx.node.args[1]
    if ctx.is_tuple(src):
        if not isinstance(ctx.node.meta.get("tensor_meta"), TensorMetadata):
            for ref in ctx.tensor_inputs():  # picks a non-tensor element
                ctx.unused_input(ref)
            return
        if isinstance(index, int):
            for d in range(len(ctx.out_shape())):
                ctx.same(ctx.t((src, index), d), ctx.t(ctx.node, d))
            for ref in ctx.tensor_inputs():
                if ref != (src, index % ctx.tuple_len(src)):
                    ctx.unused_input(ref)
        return
    if isinstance(index, fx.Node) and isinstance(index.meta.get("tensor_meta"), TensorMetadata):
        # x[idx] with an index tensor (a lookup table, Swin's relative position bias): dim 0 is
        # gathered (fixed); dims 1.. follow the index's dims unchanged
        k = len(ctx.shape(index))
        for d in range(1, len(ctx.shape(src))):
            ctx.same(ctx.t(src, d), ctx.t(ctx.node, k + d - 1))
        return
    items = index if isinstance(index, tuple) else (index,)
    items = tuple(int_value(i) if isinstance(i, fx.Node) and int_value(i) is not None else i for i in items)
    ok = all(isinstance(i, (slice, int)) or i is Ellipsis or i is None for i in items)
    if not ok or list(items).count(Ellipsis) > 1:
        return  # tensor (advanced) indexing: fixed
    s = ctx.shape(src)
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        e = items.index(Ellipsis)
        items = items[:e] + (slice(None),) * (len(s) - used) + items[e + 1:]
    items = items + (slice(None),) * (len(s) - sum(1 for i in items if i is not None))
    j = 0  # output dim
    d = 0  # input dim
    for it in items:
        if it is None:  # a new size-1 dim
            j += 1
            continue
        if isinstance(it, int):  # x[:, 0]: the dim is consumed, one element picked
            ctx.fix(ctx.t(src, d), f"indexed by {ctx.op_name}")
        elif it == slice(None):
            ctx.same(ctx.t(src, d), ctx.t(ctx.node, j))
            j += 1
        else:  # a partial slice keeps hard positions: fixed
            ctx.fix(ctx.t(src, d), f"sliced by {ctx.op_name}")
            j += 1
        d += 1


def layer_norm(ctx: "RuleContext") -> None:
    """F.layer_norm(x, normalized_shape, weight, bias): over the last dim only (the channels of a
    channels-last tensor); weight / bias are tensors used directly in forward. Mixes channels."""
    x = ctx.node.args[0]
    shape = call_arg(ctx.node, 1, "normalized_shape")
    s = ctx.shape(x)
    for d in range(len(s) - 1):
        ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))
    if not isinstance(shape, (tuple, list)) or len(shape) != 1:
        return  # normalised over several dims: those stay fixed
    last = ctx.t(x, -1)
    ctx.same(last, ctx.t(ctx.node, -1))
    ctx.mark_mixing(last)
    for i, name in ((2, "weight"), (3, "bias")):
        w = call_arg(ctx.node, i, name)
        if isinstance(w, fx.Node):
            ctx.same(last, ctx.t(w, 0))


def tensor_attribute(ctx: "RuleContext") -> None:
    """getattr(x, name): ``x.shape`` / ``x.dtype`` read no channels; ``x.T`` / ``x.mT`` swap the last
    two dims; ``x.data`` is x; any other tensor attribute is fixed."""
    x, name = ctx.node.args[0], ctx.node.args[1]
    if not isinstance(ctx.node.meta.get("tensor_meta"), TensorMetadata):
        for ref in ctx.tensor_inputs():
            ctx.unused_input(ref)
        return
    n = len(ctx.shape(x))
    if name == "data":
        perm = list(range(n))
    elif name == "mT" or (name == "T" and n == 2):
        perm = list(range(n - 2)) + [n - 1, n - 2]
    else:
        return
    for i, p in enumerate(perm):
        ctx.same(ctx.t(x, p), ctx.t(ctx.node, i))


def shape_only(ctx: "RuleContext") -> None:
    """x.size() / x.shape / x.dim(): reading a size couples and fixes nothing."""


GETITEM = operator.getitem
