"""Channel rules for ops that move channels between dims or split them into pieces: flatten /
view / reshape (merging and splitting dims: channel shuffle, attention heads), reshape_as, expand,
chunk / split / unbind / stack, pixel_shuffle / pixel_unshuffle, channel_shuffle.

The hard part is the sizes: a view's requested size may be a literal (stays after a cut: fixed),
computed at run time from a tensor's size (follows, if read off the same group: ``ctx.size_from``
registers it for ``groups.check_sizes``), or a module attribute (follows once the surgery updates
it: ``ctx.sync_attr``). See ``args.size_kind``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

from .args import SizeOf, call_arg, shown, size_kind
from .indexmap import IndexMap

if TYPE_CHECKING:
    from .context import RuleContext

__all__ = ["flatten", "view", "reshape", "reshape_as", "expand", "chunk", "split", "unbind", "stack",
           "pixel_shuffle", "pixel_unshuffle", "channel_shuffle"]


def _merge_chunks(s: Sequence[int], o: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape into chunks of input dims and output dims with equal products.

    (2, 64, 7, 7) -> (2, 3136): chunks ([0], [0]), ([1, 2, 3], [1]). Size-1 dims are left out of
    every chunk. Returns None when the sizes do not line up.
    """
    si = [d for d in range(len(s)) if s[d] != 1]
    oj = [d for d in range(len(o)) if o[d] != 1]
    chunks, i, j = [], 0, 0
    while i < len(si) and j < len(oj):
        ins, outs = [si[i]], [oj[j]]
        pi, pj = s[si[i]], o[oj[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(si):
                pi *= s[si[i]]
                ins.append(si[i])
                i += 1
            elif pj < pi and j < len(oj):
                pj *= o[oj[j]]
                outs.append(oj[j])
                j += 1
            else:
                return None
        chunks.append((ins, outs))
    return chunks if i == len(si) and j == len(oj) else None


def _couple_reshape(ctx: "RuleContext", size_args: list[Any] | None, source: Any = None) -> None:
    """Shared by flatten / view / reshape / squeeze / unsqueeze.

    The input and output dims are matched in chunks of equal size products (``_merge_chunks``):
    - one dim to one dim: identity;
    - several dims merged into one: the *first* (outermost) input dim maps block-wise onto the
      merged dim (channel c of C x H x W -> [c*H*W, (c+1)*H*W)); the others are fixed;
    - one dim split into several: exactly one output dim may change, the "free" one: the dim whose
      requested size is -1 or computed at run time, else the outermost whose size is a module
      attribute (``self.num_heads``: whole heads), and input index c maps onto its index
      ``(c // inner) % size`` (inner: product of the sizes after it). A channel shuffle
      ``view(b, 2, c // 2, h, w)`` thus couples c with c % (C/2); a head split
      ``view(b, n, self.num_heads, self.head_dim)`` couples c with head c // head_dim.
    A requested output size that is a hard-coded int would keep its old value after pruning, so
    that dim is fixed (a warning names it); a size read from a module attribute is recorded for
    the surgery to update (``ctx.sync_attr``).
    """
    x = source if source is not None else ctx.tensor_inputs()[0]
    s, out = ctx.shape(x), ctx.out_shape()
    chunks = _merge_chunks(s, out)
    if chunks is None:
        return

    def requested(o: int) -> Any:
        if size_args is None:
            return -1  # flatten / squeeze / unsqueeze take dims, never sizes
        return size_args[o] if o < len(size_args) else None

    for ins, outs in chunks:
        if len(outs) == 1:
            o = outs[0]
            kind = size_kind(requested(o))
            if kind == "literal":
                why = f"hard-coded size {shown(requested(o))} in {ctx.op_name}"
                for d in ins:
                    ctx.fix(ctx.t(x, d), why)
                ctx.fix(ctx.t(ctx.node, o), why)
                continue
            k = 1
            for d in ins[1:]:
                k *= s[d]
            ctx.couple(ctx.t(x, ins[0]), ctx.t(ctx.node, o), IndexMap.block(s[ins[0]], k) if k > 1
                       else IndexMap.identity(s[ins[0]]))
            if kind == "attr":
                ctx.sync_attr(requested(o), ctx.t(ctx.node, o))
            elif isinstance(requested(o), (fx.Node, SizeOf)):
                ctx.size_from(requested(o), ctx.t(ctx.node, o))
        elif len(ins) == 1:
            kinds = [size_kind(requested(o)) for o in outs]
            computed = [i for i, k in enumerate(kinds) if k == "free" and requested(outs[i]) != -1]
            inferred = [i for i, k in enumerate(kinds) if requested(outs[i]) == -1]
            attrs = [i for i, k in enumerate(kinds) if k == "attr"]
            free = computed + inferred
            # a size computed at run time decides; else the outermost of the module attributes and
            # the -1 (inferred from the rest, it adapts either way): whole heads for both
            # reshape(b, n, 3, self.num_heads, -1) and view(b, n, -1, self.head_dim)
            if len(computed) == 1:
                f = computed[0]
            elif not computed and len(inferred) <= 1 and (attrs or inferred):
                f = min(attrs + inferred)
            else:
                if free:
                    why = f"{ctx.op_name} splits a dim into several sizes computed at run time"
                else:  # every piece hard-coded: pruning would need new literals
                    why = f"hard-coded sizes {[shown(requested(o)) for o in outs]} in {ctx.op_name}"
                ctx.fix(ctx.t(x, ins[0]), why)
                continue
            inner = 1
            for o in outs[f + 1:]:
                inner *= out[o]
            n = s[ins[0]]
            src = np.arange(n)
            ctx.couple(ctx.t(x, ins[0]), ctx.t(ctx.node, outs[f]),
                       IndexMap(f"split /{inner} %{out[outs[f]]}", src, (src // inner) % out[outs[f]]))
            if isinstance(requested(outs[f]), (fx.Node, SizeOf)) and kinds[f] == "free":
                ctx.size_from(requested(outs[f]), ctx.t(ctx.node, outs[f]))
            if kinds[f] == "attr":
                ctx.sync_attr(requested(outs[f]), ctx.t(ctx.node, outs[f]))
            elif f < len(outs) - 1:  # whole blocks (heads) counted at run time
                ctx.sync_heads(out[outs[f]], n, ctx.t(ctx.node, outs[f]), inner)


def flatten(ctx: "RuleContext") -> None:
    """flatten / squeeze / unsqueeze and nn.Flatten: their arguments are dims, never sizes."""
    _couple_reshape(ctx, None)


def view(ctx: "RuleContext") -> None:
    """x.view(*sizes) / x.reshape(*sizes) / torch.reshape(x, sizes)."""
    node = ctx.node
    rest = list(node.args[1:]) or [node.kwargs.get("shape", node.kwargs.get("size"))]
    sizes = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
    if len(sizes) == 1 and isinstance(sizes[0], fx.Node):
        sizes = None  # a whole shape computed at run time; the post-surgery shape check guards it
    _couple_reshape(ctx, list(sizes) if sizes is not None else None)


reshape = view


def reshape_as(ctx: "RuleContext") -> None:
    """x.reshape_as(y) / x.view_as(y): a view to y's sizes, each read off y at run time (y is only
    read for its shape)."""
    x, y = ctx.node.args[0], ctx.node.args[1]
    if not isinstance(y, fx.Node) or not isinstance(y.meta.get("tensor_meta"), TensorMetadata):
        return
    ctx.unused_input(y)
    _couple_reshape(ctx, [SizeOf(y, d) for d in range(len(ctx.shape(y)))], source=x)


def expand(ctx: "RuleContext") -> None:
    """x.expand(*sizes): dims kept (-1, or computed at run time with the same size) pass through;
    new leading dims and broadcast size-1 dims couple to nothing; a hard-coded size stays: fixed."""
    x = ctx.tensor_inputs()[0]
    node = ctx.node
    rest = list(node.args[1:]) or [node.kwargs.get("size")]
    sizes = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
    s, out = ctx.shape(x), ctx.out_shape()
    off = len(out) - len(s)
    for d in range(len(s)):
        req = sizes[off + d] if off + d < len(sizes) else -1
        if s[d] != out[off + d]:
            continue  # broadcast from size 1
        if size_kind(req) == "literal":
            ctx.fix(ctx.t(x, d), f"hard-coded size {shown(req)} in {ctx.op_name}")
        else:
            ctx.same(ctx.t(x, d), ctx.t(node, off + d))
            if isinstance(req, fx.Node) and size_kind(req) == "free":
                ctx.size_from(req, ctx.t(node, off + d))


def _pieces(ctx: "RuleContext", dim: int) -> None:
    """Dims other than the split dim pass through to every piece of a split / chunk."""
    x = ctx.tensor_inputs()[0]
    for k in range(ctx.n_outputs()):
        for d in range(len(ctx.shape(x))):
            if d != dim:
                ctx.same(ctx.t(x, d), ctx.t((ctx.node, k), d))


def chunk(ctx: "RuleContext") -> None:
    """x.chunk(n, dim): piece sizes are recomputed from the tensor at run time, so pruning stays
    valid if every piece loses the same local indices: element j of piece k (input k*size + j)
    is coupled with element j of every other piece."""
    x = ctx.tensor_inputs()[0]
    s = ctx.shape(x)
    dim = call_arg(ctx.node, 2, "dim", 0)
    if not isinstance(dim, int):
        return
    dim %= len(s)
    n = ctx.n_outputs()
    _pieces(ctx, dim)
    size = ctx.shape((ctx.node, 0))[dim]
    if any(ctx.shape((ctx.node, k))[dim] != size for k in range(n)) or size * n != s[dim]:
        return  # uneven pieces: the split point would move after pruning
    for k in range(n):
        # piece k element j is input element k*size + j
        ctx.couple(ctx.t((ctx.node, k), dim), ctx.t(x, dim), IndexMap.offset(size, k * size, "chunk"))
        if k:
            ctx.same(ctx.t((ctx.node, 0), dim), ctx.t((ctx.node, k), dim))


def split(ctx: "RuleContext") -> None:
    """torch.split(x, sizes, dim). Hard-coded sizes would stay after a cut, so the split dim is fixed
    (other dims pass through) unless every size is a module attribute (``x.split((self.c, self.c),
    1)``, a list attribute ``self.splits``, or one ``self.width`` for equal pieces): then piece k's
    element j is input element offset_k + j, pieces sized by the same attribute lose the same
    local indices (so they stay equal), and the surgery sets each attribute to its piece's new size."""
    x = ctx.tensor_inputs()[0]
    dim = call_arg(ctx.node, 2, "dim", 0)
    if not isinstance(dim, int):
        return
    dim %= len(ctx.shape(x))
    _pieces(ctx, dim)
    raw = ctx.node.args[1] if len(ctx.node.args) > 1 else ctx.node.kwargs.get("split_size_or_sections")
    sizes = raw  # sizes keep their provenance (attribute nodes), unlike call_arg's values
    if isinstance(raw, fx.Node) and size_kind(raw) == "attr":
        _equal_pieces(ctx, x, dim, raw)
        return
    if not (isinstance(sizes, (list, tuple)) and sizes and len(sizes) == ctx.n_outputs()
            and all(size_kind(v) == "attr" for v in sizes)):
        ctx.fix(ctx.t(x, dim), f"hard-coded split sizes in {ctx.op_name}")
        return
    first: dict[Any, int] = {}
    off = 0
    for k, v in enumerate(sizes):
        n = ctx.shape((ctx.node, k))[dim]
        piece = ctx.t((ctx.node, k), dim)
        ctx.couple(piece, ctx.t(x, dim), IndexMap.offset(n, off, "split"))
        key = v.meta["attr"]
        if key in first:
            ctx.same(ctx.t((ctx.node, first[key]), dim), piece)
        else:
            first[key] = k
        ctx.sync_attr(v, piece)
        off += n


def _equal_pieces(ctx: "RuleContext", x: Any, dim: int, size: fx.Node) -> None:
    """x.split(self.width, dim): pieces of one attribute's size (Res2Net). Element j of every piece
    is one channel (so the pieces stay equal and their number stays), and the attribute follows."""
    n = ctx.n_outputs()
    width = ctx.shape((ctx.node, 0))[dim]
    if any(ctx.shape((ctx.node, k))[dim] != width for k in range(n)):
        ctx.fix(ctx.t(x, dim), f"uneven split in {ctx.op_name}")
        return
    for k in range(n):
        piece = ctx.t((ctx.node, k), dim)
        ctx.couple(piece, ctx.t(x, dim), IndexMap.offset(width, k * width, "split"))
        if k:
            ctx.same(ctx.t((ctx.node, 0), dim), piece)
    ctx.sync_attr(size, ctx.t((ctx.node, 0), dim))


def unbind(ctx: "RuleContext") -> None:
    """x.unbind(dim): piece k is x[k] along ``dim`` (that dim is consumed: fixed); every other dim
    d of x is dim d (before it) or d - 1 (after it) of every piece."""
    x = ctx.tensor_inputs()[0]
    n = len(ctx.shape(x))
    dim = call_arg(ctx.node, 1, "dim", 0)
    if not isinstance(dim, int):
        return
    dim %= n
    for k in range(ctx.n_outputs()):
        for d in range(n):
            if d != dim:
                ctx.same(ctx.t(x, d), ctx.t((ctx.node, k), d if d < dim else d - 1))


def stack(ctx: "RuleContext") -> None:
    """torch.stack(tensors, dim): a new dim of size len(tensors) (fixed); every input's dim d is the
    output's dim d (before the new one) or d + 1 (after it)."""
    inputs = ctx.tensor_inputs()
    out = ctx.out_shape()
    dim = call_arg(ctx.node, 1, "dim", 0)
    if not isinstance(dim, int) or len(inputs) != len(ctx.node.args[0]):
        return
    dim %= len(out)
    for x in inputs:
        for d in range(len(ctx.shape(x))):
            ctx.same(ctx.t(x, d), ctx.t(ctx.node, d if d < dim else d + 1))


def _pixel_blocks(ctx: "RuleContext", r: Any, deep: Any, shallow: Any, kind: str) -> None:
    """Channel c of the ``shallow`` side is channels [c*r*r, (c+1)*r*r) of the ``deep`` side; the
    batch dim passes, the spatial dims are rearranged (fixed)."""
    if not isinstance(r, int):
        return
    x = ctx.tensor_inputs()[0]
    ctx.same(ctx.t(x, 0), ctx.t(ctx.node, 0))
    ctx.couple(ctx.t(shallow, 1), ctx.t(deep, 1), IndexMap.block(ctx.shape(shallow)[1], r * r, kind))


def pixel_shuffle(ctx: "RuleContext", r: Any = None) -> None:
    """(B, C*r*r, H, W) -> (B, C, H*r, W*r): output channel c is input channels [c*r*r, (c+1)*r*r)."""
    r = call_arg(ctx.node, 1, "upscale_factor") if r is None else r
    _pixel_blocks(ctx, r, deep=ctx.tensor_inputs()[0], shallow=ctx.node, kind="pixel-shuffle")


def pixel_unshuffle(ctx: "RuleContext", r: Any = None) -> None:
    """(B, C, H, W) -> (B, C*r*r, H/r, W/r): input channel c becomes output channels [c*r*r, (c+1)*r*r)."""
    r = call_arg(ctx.node, 1, "downscale_factor") if r is None else r
    _pixel_blocks(ctx, r, deep=ctx.node, shallow=ctx.tensor_inputs()[0], kind="pixel-unshuffle")


def channel_shuffle(ctx: "RuleContext", groups: Any = None) -> None:
    """F.channel_shuffle(x, g): input channel c = i * (C/g) + j (group i, slot j) lands at output
    j * g + i. The group count is fixed, so slot j goes from every group at once (c ~ c % (C/g))."""
    x = ctx.tensor_inputs()[0]
    g = call_arg(ctx.node, 1, "groups") if groups is None else groups
    s = ctx.shape(x)
    if not isinstance(g, int) or s[1] % g:
        return
    for d in range(len(s)):
        if d != 1:
            ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))
    cpg = s[1] // g
    c = np.arange(s[1])
    xin = ctx.t(x, 1)
    ctx.couple(xin, xin, IndexMap.modulo(s[1], cpg, "shuffle slot"))
    ctx.couple(xin, ctx.t(ctx.node, 1), IndexMap("channel-shuffle", c, (c % cpg) * g + c // cpg))
