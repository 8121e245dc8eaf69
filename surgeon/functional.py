"""Channel rules for functional calls that use a module's own tensors: ``F.conv2d(x, self.weight)``,
``F.linear``, ``F.batch_norm`` (timm's ``BatchNormAct2d`` and every BatchNorm subclass with its own
forward), ``F.instance_norm``, ``F.group_norm``, ``F.embedding``.

The weights arrive as ``get_attr`` nodes, whose positions the graph builder ties to the parameter
positions, so the surgery slices them like any weight and re-syncs the owning module's size
attributes through its layer spec (found by the owner's class). What a functional call takes as a
plain number (``groups``, ``num_groups``) must then still be right after the cut: these rules only
couple when it is the owner's own attribute (which the surgery updates), and fix the channels
otherwise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .indexmap import IndexMap
from .layers import couple_conv
from .args import call_arg, int_value

if TYPE_CHECKING:
    from .context import RuleContext

__all__ = ["conv", "linear", "batch_norm", "group_norm", "embedding"]




def _tensor(ctx: "RuleContext", v: Any) -> Any:
    """``v`` if it is a tensor node of this graph, else None."""
    return v if isinstance(v, fx.Node) and v.meta.get("tensor_meta") is not None else None


def _pass_through(ctx: "RuleContext", x: fx.Node, skip: int | None = None) -> None:
    n = len(ctx.shape(x))
    for d in range(n):
        if skip is None or d != skip % n:
            ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))


def conv(ctx: "RuleContext") -> None:
    """F.conv1d/2d/3d(x, weight, bias, stride, padding, dilation, groups). A grouped call couples
    like the layer only when ``groups`` is the owning conv's own attribute (the surgery updates
    it); a grouped call with any other group count keeps its channels."""
    node = ctx.node
    x, w, b = node.args[0], _tensor(ctx, call_arg(node, 1, "weight")), _tensor(ctx, call_arg(node, 2, "bias"))
    if w is None:
        return
    ctx.same(ctx.t(x, 0), ctx.t(node, 0))
    groups = int_value(call_arg(node, 6, "groups", 1))
    owner = ctx.owner_of(w)
    in_c, out_c = ctx.shape(x)[1], ctx.shape(w)[0]
    if groups != 1 and not (isinstance(owner, nn.modules.conv._ConvNd) and owner.groups == groups
                            and owner.weight is not None and owner.in_channels == in_c):
        why = f"grouped {ctx.op_name} (groups={groups}) with a group count the surgery cannot update"
        ctx.fix(ctx.t(x, 1), why)
        ctx.fix(ctx.t(node, 1), why)
        return
    couple_conv(ctx, ctx.t(x, 1), ctx.t(node, 1), ctx.t(w, 0), ctx.t(w, 1),
                ctx.t(b, 0) if b is not None else None, in_c, out_c, groups or 1)


def linear(ctx: "RuleContext") -> None:
    """F.linear(x, weight, bias): x[..., in] @ weight[out, in].T + bias[out]."""
    node = ctx.node
    x, w, b = node.args[0], _tensor(ctx, call_arg(node, 1, "weight")), _tensor(ctx, call_arg(node, 2, "bias"))
    if w is None:
        return
    _pass_through(ctx, x, skip=-1)
    ctx.same(ctx.t(x, -1), ctx.t(w, 1))
    ctx.same(ctx.t(node, -1), ctx.t(w, 0))
    if b is not None:
        ctx.same(ctx.t(node, -1), ctx.t(b, 0))


def batch_norm(ctx: "RuleContext") -> None:
    """F.batch_norm / F.instance_norm(x, running_mean, running_var, weight, bias, ...): one entry of
    each tensor per channel (dim 1). Statistics computed from the input (batch norm in training
    mode or without running stats: over every dim but 1; instance norm: over dims 2..) make those
    dims mixing, so they are fixed: timm's weight standardisation batch-norms a conv weight viewed
    as (1, out, in*k*k), and removing input channels there would change every filter's statistics."""
    node = ctx.node
    x = node.args[0]
    n = len(ctx.shape(x))
    instance = node.target is F.instance_norm
    running = call_arg(node, 1, "running_mean")
    from_input = (call_arg(node, 5, "use_input_stats", True) if instance
                  else call_arg(node, 5, "training", False) or running is None)
    mixed = set()
    if from_input is not False:  # True, or decided at run time
        mixed = set(range(2, n)) if instance else {d for d in range(n) if d != 1}
    for d in range(n):
        if d in mixed:
            ctx.fix(ctx.t(x, d), f"statistics computed over it by {ctx.op_name}")
        else:
            ctx.same(ctx.t(x, d), ctx.t(node, d))
    for i, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        t = _tensor(ctx, call_arg(node, i, name))
        if t is not None:
            ctx.same(ctx.t(x, 1), ctx.t(t, 0))


def group_norm(ctx: "RuleContext") -> None:
    """F.group_norm(x, num_groups, weight, bias): each group is normalised on its own, so removing
    whole groups is exact. ``num_groups`` must be the owning GroupNorm's attribute (the surgery
    updates it); otherwise the channels stay."""
    node = ctx.node
    x = node.args[0]
    _pass_through(ctx, x)
    num_groups = call_arg(node, 1, "num_groups")
    w, b = _tensor(ctx, call_arg(node, 2, "weight")), _tensor(ctx, call_arg(node, 3, "bias"))
    owner = ctx.owner_of(w) if w is not None else None
    num_groups = int_value(num_groups)
    if not (isinstance(owner, nn.GroupNorm) and num_groups == owner.num_groups):
        ctx.fix(ctx.t(x, 1), f"{ctx.op_name} with a group count the surgery cannot update")
        return
    c = ctx.t(x, 1)
    n = ctx.shape(x)[1]
    cpg = n // num_groups
    a = np.arange(n)
    ctx.couple(c, c, IndexMap("group-norm groups", a, a - a % cpg))
    for t in (w, b):
        if t is not None:
            ctx.same(c, ctx.t(t, 0))


def embedding(ctx: "RuleContext") -> None:
    """F.embedding(indices, weight): output[..., e] = weight[index, e]; the indices are not channels."""
    node = ctx.node
    idx, w = node.args[0], _tensor(ctx, call_arg(node, 1, "weight"))
    if w is None:
        return
    n = len(ctx.shape(idx))
    for d in range(n):
        ctx.same(ctx.t(idx, d), ctx.t(node, d))
    ctx.same(ctx.t(node, -1), ctx.t(w, 1))
