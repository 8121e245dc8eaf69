"""Channel rules for layers with parameters: which weight dims follow which tensor dims, and how a
layer's size attributes are recomputed after its tensors shrink.

Each ``LayerSpec`` keeps everything surgeon knows about one layer type in one place: the coupling
rule (used while building the graph), ``sync`` (used by the surgery to update ``in_channels``,
``num_features``...), ``check`` (the post-surgery invariant: attributes agree with tensors),
``zero_inputs`` (used by the surgical-equivalence oracle), ``zero_outputs`` (soft pruning),
``size_attrs`` (what ``surgeon.save`` stores and ``surgeon.load`` restores), ``weight_dims`` (where
criteria read input channels; also what makes a layer maskable by ``surgeon.mask``) and ``macs``
(how ``surgeon.count`` counts a call). Supporting a new layer is one spec, registered with
``registry.register_module(type, spec.couple, layer=spec)``; every other module reaches the spec
through the registry (``registry.layer_spec``), never through ``LAYER_SPECS``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from .indexmap import IndexMap, Pos

if TYPE_CHECKING:
    from .context import RuleContext

__all__ = ["LayerSpec", "LAYER_SPECS", "MAC_KINDS", "check_mac_kind", "couple_conv"]

# How ``surgeon.count`` counts one call of an op, by kind (``NodeCount.kind``). A layer names its kind
# in ``LayerSpec.macs``, a parameter-free op in its registry entry; ``surgeon.cost`` scales the same
# formulas after a removal.
MAC_KINDS: dict[str, str] = {
    "conv": "output elements x weight[1:] elements (in_channels / groups x kernel)",
    "conv_transpose": "input elements x weight[1:] elements (out_channels / groups x kernel)",
    "linear": "output elements x weight[1:] elements (in_features)",
    "matmul": "output elements x the contracted dim (last dim of the second-to-last operand)",
    "attention": "S x (query elements + output elements): q k^T (.., L, S) over E, then the weights times v "
                 "over S (F.scaled_dot_product_attention; S the key / value length)",
    "norm": "output elements",
    "pool": "output elements",
    "activation": "output elements",
    "elementwise": "output elements",
    "other": "output elements (a leaf module surgeon has no formula for: an under-count)",
    "shape": "0 (moves or creates data without arithmetic)",
}


def check_mac_kind(kind: str, what: str) -> str:
    """``kind`` if it is a key of ``MAC_KINDS``, else a ValueError naming ``what`` and the choices."""
    if kind not in MAC_KINDS:
        raise ValueError(f"{what} has MAC kind {kind!r}; choose one of {', '.join(map(repr, MAC_KINDS))} "
                         "(see layers.MAC_KINDS for each formula)")
    return kind


@dataclass(frozen=True)
class LayerSpec:
    """What surgeon knows about one layer type.

    in_dim / out_dim: the tensor dim that carries channels on the layer's input / output
        (1 for NCHW layers, -1 for Linear and LayerNorm).
    couple: adds the layer's edges to the graph.
    sync: sets the size attributes from the (already shrunk) tensors; ``n`` is the new channel
        count of the layer's input / output position (norms without affine params need it).
    check: returns a description of every attribute that disagrees with the tensors.
    zero_inputs: oracle helper, zeroes the weight slices that read the given input channels.
    zero_outputs: soft-pruning helper (``surgeon.train.soft``), zeroes what the layer contributes to
        the given output channels while keeping those entries trainable, so that they may recover;
        None where zeroing the layer's own tensors cannot silence a channel (norms that mix
        channels) or is not needed (the soft pruner then skips the layer).
    mixing: True when the layer normalises *across* channels, so removing one changes the others
        (surgical equivalence then does not hold exactly; tests use shape / ONNX parity instead).
    weight_dims: (input dim, output dim) of ``weight``: where the layer's input / output channels lie
        in its weight. Criteria score input channels there (``side="in"``), the oracle and
        ``Plan.removed`` read a functionally used layer's cuts there (``F.conv2d(x, self.weight)``),
        and a layer with weight_dims is maskable (``surgeon.mask``: channels along the output dim,
        N:M along the input dim). None: the layer has no such weight (norms, Embedding).
    size_attrs: the module attributes ``sync`` may change (``in_channels``, ``num_features``...):
        ``surgeon.save`` stores them and ``surgeon.load`` sets them on a fresh model before ``check``.
    macs: how ``surgeon.count`` counts one call, a key of ``MAC_KINDS``.
    out_shape: the output shape for an input shape, without running the layer; raises RuntimeError
        when the input does not fit, as the layer would. Shape propagation on the meta device uses
        it: a meta call costs a copy of every parameter to the meta device and torch's Python shape
        rules (MobileNetV2: 35 of the 55 ms it took to propagate shapes). None: the layer is run.
    """

    in_dim: int
    out_dim: int
    couple: Callable[["RuleContext"], None]
    sync: Callable[[nn.Module, int, int], None]
    check: Callable[[nn.Module], list[str]]
    zero_inputs: Optional[Callable[[nn.Module, list[int]], None]] = None
    zero_outputs: Optional[Callable[[nn.Module, list[int]], None]] = None
    mixing: bool = False
    notes: str = field(default="")
    weight_dims: Optional[tuple[int, int]] = None  # (input dim, output dim) of ``weight``
    size_attrs: tuple[str, ...] = ()
    macs: str = "other"
    out_shape: Optional[Callable[[nn.Module, tuple[int, ...]], tuple[int, ...]]] = None

    def __post_init__(self) -> None:
        if isinstance(self.size_attrs, str):
            raise TypeError(f"LayerSpec size_attrs must be a tuple of attribute names, got the string "
                            f"{self.size_attrs!r} (a one-name tuple needs a comma: ({self.size_attrs!r},))")
        if not all(isinstance(a, str) for a in self.size_attrs):
            raise TypeError(f"LayerSpec size_attrs must be a tuple of attribute names, got {self.size_attrs!r}")
        check_mac_kind(self.macs, "LayerSpec")


def _pass_through(ctx: "RuleContext", skip: int | None = None) -> None:
    """Every dim of input 0 is the same dim of the output (shape-preserving layers)."""
    x = ctx.tensor_inputs()[0]
    n = len(ctx.shape(x))
    for d in range(n):
        if skip is None or d != skip % n:
            ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))


# ----------------------------------------------------------------------------------- convolution
def _couple_conv(ctx: "RuleContext") -> None:
    m: nn.Conv2d = ctx.module  # type: ignore[assignment]
    x = ctx.tensor_inputs()[0]
    ctx.same(ctx.t(x, 0), ctx.t(ctx.node, 0))
    couple_conv(ctx, ctx.t(x, 1), ctx.t(ctx.node, 1), ctx.p("weight", 0), ctx.p("weight", 1),
                ctx.p("bias", 0) if m.bias is not None else None, m.in_channels, m.out_channels, m.groups)


def couple_conv(ctx: "RuleContext", xin: Pos, out: Pos, w0: Pos, w1: Pos, bias: Pos | None,
                in_channels: int, out_channels: int, groups: int) -> None:
    """The channel couplings of a (grouped) convolution, given its positions: shared by the
    module rule and ``functional.conv`` (``F.conv2d(x, self.weight, ..., self.groups)``)."""
    ctx.same(out, w0)
    if bias is not None:
        ctx.same(out, bias)
    g = groups
    ipg, opg = in_channels // g, out_channels // g
    if g == 1:
        ctx.same(xin, w1)
    elif ipg == 1:
        # depthwise (channel multiplier opg): input g feeds outputs [g*opg, (g+1)*opg); removing
        # input 3 of a 32-channel depthwise conv with opg=2 removes outputs 6 and 7, groups -> 31.
        ctx.couple(xin, out, IndexMap.block(in_channels, opg, "depthwise"))
    else:
        # grouped: channel j of every group is one unit so each group keeps the same width; input
        # c reads weight[:, c % ipg] (groups=4, ipg=8: inputs 3, 11, 19, 27 ~ weight dim 1 index 3).
        ctx.couple(xin, w1, IndexMap.modulo(in_channels, ipg))
        ctx.couple(out, out, IndexMap.modulo(out_channels, opg, "per-group out"))


def _sync_conv(m: nn.Module, n_in: int, n_out: int) -> None:
    old_ipg, old_opg = m.in_channels // m.groups, m.out_channels // m.groups
    m.out_channels = m.weight.shape[0]
    if m.groups > 1 and old_ipg == 1:  # depthwise: one group per remaining input channel
        m.groups = m.out_channels // old_opg
        m.in_channels = m.groups
    else:
        m.in_channels = m.weight.shape[1] * m.groups


def _check_conv(m: nn.Module) -> list[str]:
    bad = []
    if m.weight.shape[0] != m.out_channels or m.out_channels % m.groups:
        bad.append(f"out_channels={m.out_channels}, groups={m.groups} vs weight {tuple(m.weight.shape)}")
    if m.weight.shape[1] * m.groups != m.in_channels:
        bad.append(f"in_channels={m.in_channels}, groups={m.groups} vs weight {tuple(m.weight.shape)}")
    if m.bias is not None and m.bias.shape[0] != m.out_channels:
        bad.append(f"bias {tuple(m.bias.shape)} vs out_channels={m.out_channels}")
    return bad


def _zero_conv_inputs(m: nn.Module, channels: list[int]) -> None:
    # input c belongs to group c // ipg and is read by weight[g*opg:(g+1)*opg, c % ipg]
    ipg, opg = m.in_channels // m.groups, m.out_channels // m.groups
    with torch.no_grad():
        for c in channels:
            g = c // ipg
            m.weight[g * opg:(g + 1) * opg, c % ipg] = 0


def _zero_conv_outputs(m: nn.Module, channels: list[int]) -> None:
    # output o is filter weight[o] (grouped or not) plus bias[o]
    with torch.no_grad():
        m.weight[channels] = 0
        if m.bias is not None:
            m.bias[channels] = 0


def _couple_conv_transpose(ctx: "RuleContext") -> None:
    m: nn.ConvTranspose2d = ctx.module  # type: ignore[assignment]
    x = ctx.tensor_inputs()[0]
    ctx.same(ctx.t(x, 0), ctx.t(ctx.node, 0))
    if m.groups != 1:
        ctx.fix(ctx.t(x, 1), f"grouped {type(m).__name__} is not supported")
        return
    ctx.same(ctx.t(x, 1), ctx.p("weight", 0))  # ConvTranspose weight is (in, out/groups, k...)
    ctx.same(ctx.t(ctx.node, 1), ctx.p("weight", 1))
    if m.bias is not None:
        ctx.same(ctx.t(ctx.node, 1), ctx.p("bias", 0))


def _sync_conv_transpose(m: nn.Module, n_in: int, n_out: int) -> None:
    m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups


def _check_conv_transpose(m: nn.Module) -> list[str]:
    ok = m.weight.shape[0] == m.in_channels and m.weight.shape[1] * m.groups == m.out_channels
    ok = ok and (m.bias is None or m.bias.shape[0] == m.out_channels)
    return [] if ok else [f"in/out_channels={m.in_channels}/{m.out_channels} vs weight {tuple(m.weight.shape)}"]


def _zero_conv_transpose_inputs(m: nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        m.weight[channels] = 0


def _zero_conv_transpose_outputs(m: nn.Module, channels: list[int]) -> None:
    # weight is (in, out/groups, k...): output o belongs to group g = o // opg and is written by
    # weight[g*ipg:(g+1)*ipg, o % opg] (groups=2, 8 in, 6 out: output 4 -> weight[4:8, 1])
    ipg, opg = m.in_channels // m.groups, m.out_channels // m.groups
    with torch.no_grad():
        for o in channels:
            g = o // opg
            m.weight[g * ipg:(g + 1) * ipg, o % opg] = 0
        if m.bias is not None:
            m.bias[channels] = 0


# ----------------------------------------------------------------------------------------- linear
def _couple_linear(ctx: "RuleContext") -> None:
    m: nn.Linear = ctx.module  # type: ignore[assignment]
    x = ctx.tensor_inputs()[0]
    _pass_through(ctx, skip=-1)
    ctx.same(ctx.t(x, -1), ctx.p("weight", 1))
    ctx.same(ctx.t(ctx.node, -1), ctx.p("weight", 0))
    if m.bias is not None:
        ctx.same(ctx.t(ctx.node, -1), ctx.p("bias", 0))


def _sync_linear(m: nn.Module, n_in: int, n_out: int) -> None:
    m.out_features, m.in_features = m.weight.shape


def _check_linear(m: nn.Module) -> list[str]:
    ok = tuple(m.weight.shape) == (m.out_features, m.in_features)
    ok = ok and (m.bias is None or m.bias.shape[0] == m.out_features)
    return [] if ok else [f"in/out_features={m.in_features}/{m.out_features} vs weight {tuple(m.weight.shape)}"]


def _zero_linear_inputs(m: nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        m.weight[:, channels] = 0


def _zero_linear_outputs(m: nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        m.weight[channels] = 0
        if m.bias is not None:
            m.bias[channels] = 0


# ------------------------------------------------------------------------------------------ norms
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _couple_per_channel(ctx: "RuleContext", dim: int = 1) -> None:
    """BatchNorm / InstanceNorm / PReLU / LayerNorm: one entry of each tensor per channel."""
    x = ctx.tensor_inputs()[0]
    _pass_through(ctx)
    for name in _NORM_TENSORS:
        if ctx.p(name, 0) is not None:
            ctx.same(ctx.t(x, dim), ctx.p(name, 0))


def _zero_norm_outputs(m: nn.Module, channels: list[int]) -> None:
    """BatchNorm / InstanceNorm: zero gamma and beta of ``channels`` (running statistics stay).

    The output gamma * x_hat + beta is then exactly 0 in train and eval mode, whatever the input.
    Keeping gamma instead (and zeroing the running mean) also gives 0 while the producing filter
    is 0, but it does not survive training: with a zero filter the batch variance is 0, so the
    filter's gradient, gamma / sqrt(var + eps) * (dL/dy - mean), is amplified ~300x and one SGD
    step regrows it as a full-strength random channel (measured: a trained ResNet-20 soft-pruned
    at 50% stayed at 14% accuracy through the next epochs). With gamma = 0 the channel comes back
    only as fast as gamma learns it is useful: the optimizer's momentum moves the filter and gamma
    off zero, then dL/dgamma = sum(dL/dy * x_hat) grows the channels worth having."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            t = getattr(m, name, None)
            if isinstance(t, torch.Tensor):
                t[channels] = 0


def _sync_num_features(m: nn.Module, n_in: int, n_out: int) -> None:
    m.num_features = n_out


def _check_num_features(m: nn.Module) -> list[str]:
    bad = []
    for name in _NORM_TENSORS:
        t = getattr(m, name, None)
        if isinstance(t, torch.Tensor) and t.shape[0] != m.num_features:
            bad.append(f"num_features={m.num_features} vs {name} {tuple(t.shape)}")
    return bad


def _couple_group_norm(ctx: "RuleContext") -> None:
    m: nn.GroupNorm = ctx.module  # type: ignore[assignment]
    _couple_per_channel(ctx)
    # whole groups go together: channel c ~ first channel of its group (cpg=4: 5 ~ 4, 7 ~ 4)
    cpg = m.num_channels // m.num_groups
    c = ctx.t(ctx.node, 1)
    a = torch.arange(m.num_channels).numpy()
    ctx.couple(c, c, IndexMap("group-norm groups", a, a - a % cpg))


def _sync_group_norm(m: nn.Module, n_in: int, n_out: int) -> None:
    cpg = m.num_channels // m.num_groups
    m.num_channels, m.num_groups = n_out, n_out // cpg


def _check_group_norm(m: nn.Module) -> list[str]:
    bad = [] if m.num_channels % m.num_groups == 0 else [f"num_channels={m.num_channels} % num_groups={m.num_groups}"]
    if m.weight is not None and m.weight.shape[0] != m.num_channels:
        bad.append(f"num_channels={m.num_channels} vs weight {tuple(m.weight.shape)}")
    return bad


def _couple_layer_norm(ctx: "RuleContext") -> None:
    m: nn.LayerNorm = ctx.module  # type: ignore[assignment]
    if len(m.normalized_shape) != 1:
        _pass_through(ctx)  # normalised dims are fixed below (mixing over several dims)
        x = ctx.tensor_inputs()[0]
        for d in range(1, len(m.normalized_shape) + 1):
            ctx.fix(ctx.t(x, -d), "LayerNorm over several dims is not supported")
        return
    _couple_per_channel(ctx, dim=-1)


def _sync_layer_norm(m: nn.Module, n_in: int, n_out: int) -> None:
    m.normalized_shape = (n_out,)


def _check_layer_norm(m: nn.Module) -> list[str]:
    bad = []
    for name in ("weight", "bias"):
        t = getattr(m, name, None)
        if t is not None and tuple(t.shape) != tuple(m.normalized_shape):
            bad.append(f"normalized_shape={tuple(m.normalized_shape)} vs {name} {tuple(t.shape)}")
    return bad


def _couple_prelu(ctx: "RuleContext") -> None:
    if ctx.module.num_parameters == 1:
        _pass_through(ctx)
    else:
        _couple_per_channel(ctx)


def _sync_prelu(m: nn.Module, n_in: int, n_out: int) -> None:
    m.num_parameters = m.weight.shape[0]


def _check_prelu(m: nn.Module) -> list[str]:
    return [] if m.weight.numel() == m.num_parameters else [f"num_parameters={m.num_parameters} vs weight {tuple(m.weight.shape)}"]


def _couple_embedding(ctx: "RuleContext") -> None:
    """nn.Embedding: output[..., e] = weight[index, e]; the indices carry no channels."""
    idx = ctx.tensor_inputs()[0]
    for d in range(len(ctx.shape(idx))):
        ctx.same(ctx.t(idx, d), ctx.t(ctx.node, d))
    ctx.same(ctx.t(ctx.node, -1), ctx.p("weight", 1))


def _zero_embedding_outputs(m: nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        m.weight[:, channels] = 0


def _sync_embedding(m: nn.Module, n_in: int, n_out: int) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


def _check_embedding(m: nn.Module) -> list[str]:
    ok = tuple(m.weight.shape) == (m.num_embeddings, m.embedding_dim)
    return [] if ok else [f"num_embeddings/embedding_dim={m.num_embeddings}/{m.embedding_dim} vs weight {tuple(m.weight.shape)}"]


def _conv_out_shape(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """torch's ConvNd output size per spatial dim: (in + 2 pad - dilation (k - 1) - 1) // stride + 1
    (224, k=7, pad=3, stride=2: 112); padding "same" keeps the size, "valid" is pad 0. Other
    padding modes pad first by the same amounts, so the size is the same."""
    d = len(m.kernel_size)
    if len(shape) not in (d + 1, d + 2) or shape[-d - 1] != m.in_channels:
        raise RuntimeError(f"{type(m).__name__} expects {m.in_channels} input channels (an input of "
                           f"{d + 1} or {d + 2} dims), got an input of shape {tuple(shape)}")
    spatial = shape[-d:]
    if m.padding == "same":
        out = list(spatial)
    else:
        pad = (0,) * d if m.padding == "valid" else m.padding
        out = [(s + 2 * p - dl * (k - 1) - 1) // st + 1
               for s, p, dl, k, st in zip(spatial, pad, m.dilation, m.kernel_size, m.stride)]
    if any(o < 1 for o in out):
        raise RuntimeError(f"{type(m).__name__}: input of shape {tuple(shape)} is smaller than the kernel")
    return (*shape[:-d - 1], m.out_channels, *out)


def _linear_out_shape(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    if not shape or shape[-1] != m.in_features:
        raise RuntimeError(f"Linear expects {m.in_features} input features, got an input of shape {tuple(shape)}")
    return (*shape[:-1], m.out_features)


_CONV = LayerSpec(1, 1, _couple_conv, _sync_conv, _check_conv, _zero_conv_inputs, _zero_conv_outputs,
                  weight_dims=(1, 0), size_attrs=("in_channels", "out_channels", "groups"), macs="conv",
                  out_shape=_conv_out_shape)
_CONVT = LayerSpec(1, 1, _couple_conv_transpose, _sync_conv_transpose, _check_conv_transpose,
                   _zero_conv_transpose_inputs, _zero_conv_transpose_outputs, weight_dims=(0, 1),
                   size_attrs=("in_channels", "out_channels"), macs="conv_transpose")
_NORM = LayerSpec(1, 1, _couple_per_channel, _sync_num_features, _check_num_features,
                  zero_outputs=_zero_norm_outputs, size_attrs=("num_features",), macs="norm")


def _batch_norm_out_shape(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """BatchNorm keeps its input's shape; its per-channel tensors must fit the channel dim (1)."""
    for name in _NORM_TENSORS:
        t = getattr(m, name, None)
        if isinstance(t, torch.Tensor) and (len(shape) < 2 or t.shape[0] != shape[1]):
            raise RuntimeError(f"{type(m).__name__}.{name} has {t.shape[0]} entries but the input has "
                               f"shape {tuple(shape)}")
    return tuple(shape)


_BATCH_NORM = dataclasses.replace(_NORM, out_shape=_batch_norm_out_shape)

# The built-in layers; the registry registers each one (read a spec through ``registry.layer_spec``).
LAYER_SPECS: dict[type, LayerSpec] = {
    nn.Conv1d: _CONV, nn.Conv2d: _CONV, nn.Conv3d: _CONV,
    nn.ConvTranspose1d: _CONVT, nn.ConvTranspose2d: _CONVT, nn.ConvTranspose3d: _CONVT,
    nn.Linear: LayerSpec(-1, -1, _couple_linear, _sync_linear, _check_linear, _zero_linear_inputs,
                         _zero_linear_outputs, weight_dims=(1, 0), size_attrs=("in_features", "out_features"),
                         macs="linear", out_shape=_linear_out_shape),
    nn.Embedding: LayerSpec(0, -1, _couple_embedding, _sync_embedding, _check_embedding,
                            zero_outputs=_zero_embedding_outputs,
                            size_attrs=("num_embeddings", "embedding_dim"), macs="shape"),
    nn.BatchNorm1d: _BATCH_NORM, nn.BatchNorm2d: _BATCH_NORM, nn.BatchNorm3d: _BATCH_NORM,
    nn.InstanceNorm1d: _NORM, nn.InstanceNorm2d: _NORM, nn.InstanceNorm3d: _NORM,
    # GroupNorm / LayerNorm normalise across channels: a zeroed channel's output, gamma * (0 - mean)
    # / std + beta, depends on its neighbours, so no zero_outputs; the soft pruner's final consumer
    # zeroing still makes the removal match the soft model
    nn.GroupNorm: LayerSpec(1, 1, _couple_group_norm, _sync_group_norm, _check_group_norm,
                            size_attrs=("num_channels", "num_groups"), macs="norm"),
    nn.LayerNorm: LayerSpec(-1, -1, _couple_layer_norm, _sync_layer_norm, _check_layer_norm, mixing=True,
                            size_attrs=("normalized_shape",), macs="norm"),
    nn.PReLU: LayerSpec(1, 1, _couple_prelu, _sync_prelu, _check_prelu,  # PReLU(0) = 0: nothing to zero
                        size_attrs=("num_parameters",), macs="activation"),
}
