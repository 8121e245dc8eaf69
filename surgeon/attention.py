"""Attention: ``F.scaled_dot_product_attention``, matrix products, and ``nn.MultiheadAttention``.

What may shrink, and why it stays exact (the surgical-equivalence oracle):
- **whole heads**: head h's rows of q, k and v and its columns of the output projection go
  together; removing them equals zeroing that head's slice of the output projection's input,
  because heads never mix before the output projection.
- **the value head dim** (``v[..., e]`` -> ``out[..., e]``): each output feature reads one value
  feature.
- **not the query/key head dim**: it is summed over in ``q @ k^T`` (and sets the default softmax
  scale ``1/sqrt(d)``), so removing it changes every score; it is fixed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .indexmap import IndexMap
from .args import call_arg

if TYPE_CHECKING:
    from .context import RuleContext

__all__ = ["sdpa", "matmul", "MHA_SPEC", "HEAD_COUNT_ATTRS", "HEAD_WIDTH_ATTRS"]

# Attributes that attention classes keep next to their projections (Hugging Face, timm, fairseq
# style). When a head split ``view(b, n, -1, self.head_dim)`` sizes the head count at run time, these
# attributes are not read by the view, but they describe the module (and other code reads them): an
# attribute of the module that made the split, with one of these names and the old value, follows.
HEAD_COUNT_ATTRS = frozenset({"num_heads", "num_attention_heads", "n_heads", "n_head", "heads",
                              "num_head"})
HEAD_WIDTH_ATTRS = frozenset({"all_head_size", "inner_dim"})  # heads x head size




def _batch_dims(ctx: "RuleContext", refs: list[Any], out_nd: int, tail: int) -> None:
    """Leading (broadcast) dims, aligned from the right past the last ``tail`` dims: equal sizes are
    the same channel (heads, batch)."""
    out = ctx.out_shape()
    for r in refs:
        s = ctx.shape(r)
        off = out_nd - len(s)
        for d in range(len(s) - tail):
            if off + d >= 0 and s[d] == out[off + d]:
                ctx.same(ctx.t(r, d), ctx.t(ctx.node, off + d))


def sdpa(ctx: "RuleContext") -> None:
    """F.scaled_dot_product_attention(q (.., L, E), k (.., S, E), v (.., S, Ev), attn_mask) ->
    (.., L, Ev). Heads and batch pass through (the mask's too, so a per-head mask keeps up), the
    query length maps to the output's, v's feature dim to the output's; E is summed over: fixed."""
    node = ctx.node
    q, k, v = node.args[0], call_arg(node, 1, "key"), call_arg(node, 2, "value")
    if call_arg(node, 7, "enable_gqa", False):
        return
    mask = call_arg(node, 3, "attn_mask")
    out_nd = len(ctx.out_shape())
    refs = [q, k, v] + ([mask] if isinstance(mask, fx.Node) else [])
    _batch_dims(ctx, refs, out_nd, 2)
    ctx.same(ctx.t(q, -2), ctx.t(node, -2))
    ctx.same(ctx.t(v, -1), ctx.t(node, -1))
    ctx.same(ctx.t(k, -2), ctx.t(v, -2))
    for r, d in ((q, -1), (k, -1)):
        ctx.fix(ctx.t(r, d), f"summed over in {ctx.op_name} (query/key head dim)")


def matmul(ctx: "RuleContext") -> None:
    """a (.., n, k) @ b (.., k, m) -> (.., n, m): batch dims broadcast, n and m pass through, k is
    summed over (fixed). 1-d operands are left alone (fixed)."""
    node = ctx.node
    a, b = node.args[0], node.args[1] if len(node.args) > 1 else call_arg(node, 1, "other")
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return
    if len(ctx.shape(a)) < 2 or len(ctx.shape(b)) < 2:
        return
    _batch_dims(ctx, [a, b], len(ctx.out_shape()), 2)
    ctx.same(ctx.t(a, -2), ctx.t(node, -2))
    ctx.same(ctx.t(b, -1), ctx.t(node, -1))
    ctx.fix(ctx.t(a, -1), f"summed over in {ctx.op_name}")
    ctx.fix(ctx.t(b, -2), f"summed over in {ctx.op_name}")


# ------------------------------------------------------------------------ nn.MultiheadAttention
def _mha_supported(m: nn.MultiheadAttention) -> str:
    if not m._qkv_same_embed_dim:
        return "separate q/k/v projection weights"
    if m.bias_k is not None or m.add_zero_attn:
        return "add_bias_kv / add_zero_attn"
    return ""


def _couple_mha(ctx: "RuleContext") -> None:
    """nn.MultiheadAttention(q, k, v) -> (out, weights), packed in_proj (3E, E), out_proj (E, E).

    The module's forward derives ``head_dim = embed_dim // num_heads`` and projects E -> E, so its
    inner width must equal the residual width E: inner channel j is coupled with residual channel j
    (as other pruners do for this module), and inner channels go by whole heads (j ~ j - j % hd).
    So E loses whole head-sized blocks, and each lost block takes a head with it.
    """
    m: nn.MultiheadAttention = ctx.module  # type: ignore[assignment]
    node = ctx.node
    why = _mha_supported(m)
    ins = [a for a in list(node.args[:3]) + [node.kwargs.get(k) for k in ("query", "key", "value")]
           if isinstance(a, fx.Node)]
    out = (node, 0)
    if why:
        for x in ins:
            ctx.fix(ctx.t(x, -1), f"nn.MultiheadAttention with {why}")
        return
    q = ins[0]
    for d in range(len(ctx.shape(q)) - 1):
        ctx.same(ctx.t(q, d), ctx.t(out, d))
    E, hd = m.embed_dim, m.head_dim
    w_in = ctx.p("in_proj_weight", 1)
    for x in ins:
        ctx.same(ctx.t(x, -1), w_in)
    rows = ctx.p("in_proj_weight", 0)
    inner = ctx.p("out_proj.weight", 1)
    j = np.arange(E)
    for part in range(3):  # rows j, E + j, 2E + j are q, k, v of inner channel j
        ctx.couple(inner, rows, IndexMap(f"qkv+{part * E}", j, j + part * E))
        if m.in_proj_bias is not None:
            ctx.couple(inner, ctx.p("in_proj_bias", 0), IndexMap(f"qkv+{part * E}", j, j + part * E))
    ctx.couple(inner, inner, IndexMap(f"heads of {hd}", j, j - j % hd))
    ctx.same(inner, w_in)
    ctx.same(ctx.t(out, -1), ctx.p("out_proj.weight", 0))
    if m.out_proj.bias is not None:
        ctx.same(ctx.t(out, -1), ctx.p("out_proj.bias", 0))


def _sync_mha(m: nn.Module, n_in: int, n_out: int) -> None:
    E = m.in_proj_weight.shape[1]
    m.embed_dim = m.kdim = m.vdim = E
    m.num_heads = E // m.head_dim
    m.out_proj.in_features, m.out_proj.out_features = m.out_proj.weight.shape[1], m.out_proj.weight.shape[0]


def _check_mha(m: nn.Module) -> list[str]:
    E = m.embed_dim
    bad = []
    if tuple(m.in_proj_weight.shape) != (3 * E, E):
        bad.append(f"embed_dim={E} vs in_proj_weight {tuple(m.in_proj_weight.shape)}")
    if m.num_heads * m.head_dim != E:
        bad.append(f"num_heads={m.num_heads} x head_dim={m.head_dim} != embed_dim={E}")
    if tuple(m.out_proj.weight.shape) != (E, E):
        bad.append(f"embed_dim={E} vs out_proj.weight {tuple(m.out_proj.weight.shape)}")
    return bad


def _zero_mha_inputs(m: nn.Module, channels: list[int]) -> None:
    # residual channel j and inner channel j go together (see _couple_mha): zero the in_proj
    # columns reading residual j and the out_proj columns reading inner j.
    with torch.no_grad():
        m.in_proj_weight[:, channels] = 0
        m.out_proj.weight[:, channels] = 0


def _mha_spec() -> Any:
    from .layers import LayerSpec
    return LayerSpec(-1, -1, _couple_mha, _sync_mha, _check_mha, _zero_mha_inputs,
                     size_attrs=("embed_dim", "kdim", "vdim", "num_heads"), macs="other")


MHA_SPEC = _mha_spec()
