"""The one op registry: fx target -> how channels flow through it, and what a call costs.

Keys are what fx puts in ``node.target``: a module *type* for ``call_module`` nodes, the function
object itself for ``call_function`` nodes (``torch.cat``, ``operator.add``, ``F.relu``), the method
name for ``call_method`` nodes (``"view"``). Supporting a new op means adding one entry here; a
layer with parameters brings its ``LayerSpec`` (layers.py), which every other module reads through
``layer_spec`` (sizes to save, weight dims, maskability, MAC kind).
Ops without a rule freeze every channel they touch, with a warning that names the node and op; some
of them still have an entry, so that ``surgeon.count`` knows their MAC kind.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import attention, functional, reshape, rules
from .layers import LAYER_SPECS, LayerSpec, check_mac_kind
from .record import attribute_int, constant_tensor

__all__ = ["OpEntry", "lookup", "is_known_layer", "keeps_shape", "output_shape", "layer_spec", "registered_layers", "mac_kind", "register_function",
           "register_method", "register_module"]


@dataclass(frozen=True)
class OpEntry:
    """rule: adds the op's couplings; None for an op surgeon only counts (its channels freeze as an
    unknown op's do). layer: set for layers with parameters. shape_only: the op only reads sizes
    (x.size(1)), so it must not fix the dims of its input. macs: how ``surgeon.count`` counts one
    call, a key of ``layers.MAC_KINDS``; a layer's is its ``LayerSpec.macs``, else "elementwise".
    same_shape: the op's output has the shape and dtype of its one tensor input (activations,
    dropout): shape propagation on the meta device skips running it (several of torch's meta
    kernels for these are Python decompositions costing milliseconds a call). broadcast: the
    output has the broadcast shape of the tensor operands (``a + b``, ``torch.mul``), which shape
    propagation computes instead of running the op (see ``shapes.py``)."""

    rule: Optional[Callable[..., None]]
    layer: Optional[LayerSpec] = None
    shape_only: bool = False
    macs: Optional[str] = None
    same_shape: bool = False
    broadcast: bool = False

    def __post_init__(self) -> None:
        if self.layer is not None:
            if self.macs is not None and self.macs != self.layer.macs:
                raise ValueError(f"an op with a layer counts as its LayerSpec says (macs={self.layer.macs!r}), "
                                 f"got macs={self.macs!r}: set it in the LayerSpec")
            object.__setattr__(self, "macs", self.layer.macs)
        elif self.macs is None:
            object.__setattr__(self, "macs", "elementwise")
        check_mac_kind(self.macs, "a registry entry")  # type: ignore[arg-type]


_MODULES: dict[type, OpEntry] = {}
_FUNCTIONS: dict[Any, OpEntry] = {}
# Functions of optional packages, keyed by "module.name" so the core never imports them.
_FUNCTIONS_BY_NAME: dict[str, OpEntry] = {
    "torchvision.ops.stochastic_depth.stochastic_depth": OpEntry(rules.elementwise),  # scales whole samples
}
_METHODS: dict[str, OpEntry] = {}


def register_module(module_type: type, rule: Callable[..., None], layer: LayerSpec | None = None,
                    macs: str | None = None, same_shape: bool = False) -> None:
    """Register a module type: its channel rule and, for a layer with parameters, its ``LayerSpec``
    (size attributes, weight dims, MAC kind: everything else surgeon needs). ``macs`` (a key of
    ``layers.MAC_KINDS``) is for parameter-free modules; default: the kind the type already has,
    else "other". ``same_shape``: see ``OpEntry``."""
    old = _MODULES.get(module_type)
    if layer is None and macs is None:
        macs = old.macs if old is not None and old.layer is None else "other"
    _MODULES[module_type] = OpEntry(rule, layer, macs=macs, same_shape=same_shape)


def register_function(fn: Any, rule: Callable[..., None], shape_only: bool = False,
                      macs: str | None = None, same_shape: bool = False, broadcast: bool = False) -> None:
    """Register a function (``node.target`` of a ``call_function`` node). ``macs``: see
    ``layers.MAC_KINDS``; default: the kind the function already has, else "elementwise".
    ``same_shape``, ``broadcast``: see ``OpEntry``."""
    old = _FUNCTIONS.get(fn)
    _FUNCTIONS[fn] = OpEntry(rule, shape_only=shape_only, macs=macs or (old.macs if old is not None else None),
                             same_shape=same_shape, broadcast=broadcast)


def register_method(name: str, rule: Callable[..., None], shape_only: bool = False,
                    macs: str | None = None) -> None:
    """Register a Tensor method by name (``x.view(...)``); ``macs`` as for ``register_function``."""
    old = _METHODS.get(name)
    _METHODS[name] = OpEntry(rule, shape_only=shape_only, macs=macs or (old.macs if old is not None else None))


# ----------------------------------------------------------------------------------------- modules
for _t, _spec in LAYER_SPECS.items():
    register_module(_t, _spec.couple, layer=_spec)
register_module(nn.MultiheadAttention, attention.MHA_SPEC.couple, layer=attention.MHA_SPEC)

_ACTIVATION_MODULES = [
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.LogSigmoid, nn.RReLU,
]
_IDENTITY_MODULES = [  # the identity in eval mode: no arithmetic
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
]
_POOL_MODULES = [
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
]
_RESIZE_MODULES = [nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d]
_PAD_MODULES = [
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d,
]
for _types, _rule, _kind, _same in [  # _same: output shape = input shape (OpEntry.same_shape)
    (_ACTIVATION_MODULES, rules.elementwise, "activation", True), (_IDENTITY_MODULES, rules.elementwise, "shape", True),
    (_POOL_MODULES, rules.channelwise, "pool", False), (_RESIZE_MODULES, rules.channelwise, "elementwise", False),
    (_PAD_MODULES, rules.channelwise, "shape", False),
]:
    for _t in _types:
        register_module(_t, _rule, macs=_kind, same_shape=_same)
register_module(nn.Flatten, reshape.flatten, macs="shape")
register_module(nn.PixelShuffle, lambda ctx: reshape.pixel_shuffle(ctx, ctx.module.upscale_factor), macs="shape")
register_module(nn.PixelUnshuffle, lambda ctx: reshape.pixel_unshuffle(ctx, ctx.module.downscale_factor),
                macs="shape")
register_module(nn.ChannelShuffle, lambda ctx: reshape.channel_shuffle(ctx, ctx.module.groups), macs="shape")
for _t in (nn.Softmax, nn.LogSoftmax, nn.Softmin):
    register_module(_t, lambda ctx: rules.along_dim(ctx, ctx.module.dim), macs="activation")

# Modules surgeon counts but has no channel rule for: their channels freeze as an unknown op's do.
# _NormBase stands for the norms without an entry of their own (SyncBatchNorm, the lazy ones).
for _name, _kind in [
    ("Unflatten", "shape"), ("CircularPad1d", "shape"), ("CircularPad2d", "shape"), ("CircularPad3d", "shape"),
    ("GLU", "activation"), ("Softmax2d", "activation"), ("LocalResponseNorm", "norm"),
    ("CrossMapLRN2d", "norm"), ("RMSNorm", "norm"), ("LPPool3d", "pool"), ("MaxUnpool1d", "pool"),
    ("MaxUnpool2d", "pool"), ("MaxUnpool3d", "pool"), ("FractionalMaxPool2d", "pool"),
    ("FractionalMaxPool3d", "pool"),
]:
    if hasattr(nn, _name):  # some are newer than the oldest torch supported
        _MODULES[getattr(nn, _name)] = OpEntry(None, macs=_kind)
_MODULES[nn.modules.batchnorm._NormBase] = OpEntry(None, macs="norm")

# --------------------------------------------------------------------------------------- functions
_ARITHMETIC_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.clamp, torch.clip, torch.abs, torch.neg, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.pow, torch.square, torch.maximum, torch.minimum, torch.where, torch.sin, torch.cos,
    torch.erf, torch.reciprocal,
]
# binary ops whose output is the broadcast of their operands (OpEntry.broadcast)
_BROADCAST_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.maximum, torch.minimum,
}
_ACTIVATION_FUNCTIONS = [
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh,
    F.relu, F.relu_, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.leaky_relu, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid,
    F.sigmoid, F.tanh,
]
_FREE_ELEMENTWISE_FUNCTIONS = [  # no arithmetic: new tensors of the same shape, dropout (eval mode)
    torch.ones_like, torch.zeros_like, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
]
_POOL_FUNCTIONS = [
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d,
]
_RESIZE_FUNCTIONS = [F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear]
for _fns, _rule, _kind, _same in [  # _same: output shape = input shape (OpEntry.same_shape)
    (_ARITHMETIC_FUNCTIONS, rules.elementwise, "elementwise", False),
    (_ACTIVATION_FUNCTIONS, rules.elementwise, "activation", True),
    (_FREE_ELEMENTWISE_FUNCTIONS, rules.elementwise, "shape", False), (_POOL_FUNCTIONS, rules.channelwise, "pool", False),
    (_RESIZE_FUNCTIONS, rules.channelwise, "elementwise", False),
]:
    for _f in _fns:
        register_function(_f, _rule, macs=_kind, same_shape=_same, broadcast=_f in _BROADCAST_FUNCTIONS)
for _f, _r, _kind in [
    (F.pad, rules.pad, "shape"), (torch.flatten, reshape.flatten, "shape"), (torch.squeeze, reshape.flatten, "shape"),
    (torch.unsqueeze, reshape.flatten, "shape"), (torch.reshape, reshape.view, "shape"),
    (torch.permute, rules.permute, "shape"), (torch.transpose, rules.transpose, "shape"),
    (torch.cat, rules.cat, "shape"), (torch.concat, rules.cat, "shape"), (torch.concatenate, rules.cat, "shape"),
    (torch.split, reshape.split, "shape"), (torch.chunk, reshape.chunk, "shape"),
    (torch.mean, rules.reduce, "elementwise"), (torch.sum, rules.reduce, "elementwise"),
    (torch.amax, rules.reduce, "elementwise"), (torch.amin, rules.reduce, "elementwise"),
    (torch.std, rules.reduce, "elementwise"), (torch.var, rules.reduce, "elementwise"),
    (torch.softmax, rules.along_dim, "activation"), (F.softmax, rules.along_dim, "activation"),
    (F.log_softmax, rules.along_dim, "activation"), (operator.getitem, rules.getitem, "shape"),
    (F.layer_norm, rules.layer_norm, "norm"),
    # functional calls with a module's own tensors (functional.py)
    (F.conv1d, functional.conv, "conv"), (F.conv2d, functional.conv, "conv"), (F.conv3d, functional.conv, "conv"),
    (F.linear, functional.linear, "linear"), (F.batch_norm, functional.batch_norm, "norm"),
    (F.instance_norm, functional.batch_norm, "norm"), (F.group_norm, functional.group_norm, "norm"),
    (F.embedding, functional.embedding, "shape"),
    # attention (attention.py)
    (F.scaled_dot_product_attention, attention.sdpa, "attention"), (operator.matmul, attention.matmul, "matmul"),
    (torch.matmul, attention.matmul, "matmul"), (torch.bmm, attention.matmul, "matmul"),
    (torch.stack, reshape.stack, "shape"), (torch.unbind, reshape.unbind, "shape"), (torch.roll, rules.roll, "shape"),
    (F.pixel_shuffle, reshape.pixel_shuffle, "shape"), (F.pixel_unshuffle, reshape.pixel_unshuffle, "shape"),
    (torch.pixel_shuffle, reshape.pixel_shuffle, "shape"), (torch.pixel_unshuffle, reshape.pixel_unshuffle, "shape"),
    (F.channel_shuffle, reshape.channel_shuffle, "shape"), (torch.channel_shuffle, reshape.channel_shuffle, "shape"),
    (torch.native_channel_shuffle, reshape.channel_shuffle, "shape"), (constant_tensor, rules.constant, "shape"),
    (getattr, rules.tensor_attribute, "shape"),
]:
    register_function(_f, _r, macs=_kind)
register_function(attribute_int, rules.shape_only, shape_only=True, macs="shape")

# ----------------------------------------------------------------------------------------- methods
for _names, _rule, _kind in [
    ("add sub mul div truediv add_ sub_ mul_ div_ clamp clamp_ clip abs neg exp log sqrt rsqrt pow "
     "square sin cos reciprocal", rules.elementwise, "elementwise"),
    ("relu relu_ sigmoid sigmoid_ tanh hardtanh_", rules.elementwise, "activation"),
    ("contiguous clone detach float half double masked_fill", rules.elementwise, "shape"),
    ("view reshape", reshape.view, "shape"), ("flatten squeeze unsqueeze", reshape.flatten, "shape"),
    ("permute", rules.permute, "shape"), ("transpose", rules.transpose, "shape"),
    ("split", reshape.split, "shape"), ("chunk", reshape.chunk, "shape"),
    ("mean sum amax amin std var", rules.reduce, "elementwise"),
    ("softmax log_softmax", rules.along_dim, "activation"), ("matmul bmm", attention.matmul, "matmul"),
    ("expand_as", rules.elementwise, "shape"),
    ("type_as to new_full new_zeros new_ones new_empty new_tensor", rules.like_first, "shape"),
    ("unbind", reshape.unbind, "shape"), ("expand", reshape.expand, "shape"), ("roll", rules.roll, "shape"),
    ("reshape_as view_as", reshape.reshape_as, "shape"),
]:
    for _m in _names.split():
        register_method(_m, _rule, macs=_kind)
for _m in ("size", "dim", "numel"):
    register_method(_m, rules.shape_only, shape_only=True, macs="shape")

# Functions and methods surgeon counts but has no channel rule for (their channels freeze as an
# unknown op's do): each name gives an entry to torch.<name>, F.<name>, torch._C._nn.<name>,
# operator.<name> and Tensor.<name>, where those exist and have none yet (an op that has one must
# already count as listed). Ops named nowhere count "elementwise".
_COUNT_ONLY = {
    "conv_transpose": "conv_transpose1d conv_transpose2d conv_transpose3d",
    "matmul": "mm addmm baddbmm addbmm addmm_ baddbmm_ addbmm_",
    "norm": "batch_norm layer_norm group_norm instance_norm rms_norm local_response_norm "
            "normalize",
    "pool": "adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool2d adaptive_max_pool3d "
            "max_pool3d adaptive_max_pool1d lp_pool1d lp_pool2d lp_pool3d fractional_max_pool2d "
            "fractional_max_pool3d max_unpool1d max_unpool2d max_unpool3d max_pool1d_with_indices "
            "max_pool2d_with_indices max_pool3d_with_indices adaptive_max_pool1d_with_indices "
            "adaptive_max_pool2d_with_indices adaptive_max_pool3d_with_indices "
            "fractional_max_pool2d_with_indices fractional_max_pool3d_with_indices "
            "quantized_max_pool1d quantized_max_pool2d quantized_max_pool3d mkldnn_max_pool2d "
            "mkldnn_max_pool3d mkldnn_adaptive_avg_pool2d",
    "activation": "relu6 leaky_relu silu hardswish hardsigmoid mish elu selu celu log_softmax "
                  "softmin prelu rrelu hardtanh glu threshold hardshrink softshrink sigmoid_ "
                  "tanh_ elu_ selu_ celu_ leaky_relu_ hardtanh_ rrelu_ threshold_ gelu_ "
                  "hardsigmoid_ hardswish_ mish_ relu6_ silu_",
    "shape": "unflatten t t_ squeeze_ unsqueeze_ transpose_ repeat tile concat hstack vstack "
             "tensor_split narrow select numel type bfloat16 int long bool cpu cuda detach "
             "detach_ clone movedim moveaxis swapaxes swapaxes_ swapdims swapdims_ flip pad "
             "dropout dropout_ alpha_dropout alpha_dropout_ feature_alpha_dropout "
             "feature_alpha_dropout_ zeros ones full empty arange full_like empty_like tensor "
             "as_tensor embedding index_select gather masked_fill masked_fill_",
}
for _kind, _names in _COUNT_ONLY.items():
    for _name in _names.split():
        for _ns in (torch, F, torch._C._nn, operator):
            _f = getattr(_ns, _name, None)
            if callable(_f) and not isinstance(_f, type):
                _old = _FUNCTIONS.setdefault(_f, OpEntry(None, macs=_kind))
                assert _old.macs == _kind, f"{_ns.__name__}.{_name} counts as {_old.macs}, listed as {_kind}"
        if hasattr(torch.Tensor, _name):
            _old = _METHODS.setdefault(_name, OpEntry(None, macs=_kind))
            assert _old.macs == _kind, f"Tensor.{_name} counts as {_old.macs}, listed as {_kind}"


def layer_spec(module: nn.Module) -> LayerSpec | None:
    """The layer spec of ``module``'s class or its nearest registered base, *whatever its forward*:
    what the surgery needs to re-sync a subclass's size attributes (timm's ``BatchNormAct2d``,
    ``Conv2dSame``) after its tensors were cut through functional calls."""
    for base in type(module).__mro__:
        entry = _MODULES.get(base)
        if entry is not None and entry.layer is not None:
            return entry.layer
    return None


def registered_layers() -> dict[type, LayerSpec]:
    """Every registered module type that is a layer (has a ``LayerSpec``), in registration order."""
    return {t: e.layer for t, e in _MODULES.items() if e.layer is not None}


def _function_entry(op: str, target: Any) -> OpEntry | None:
    if op == "call_function":
        try:
            entry = _FUNCTIONS.get(target)
        except TypeError:  # unhashable target
            return None
        if entry is None:
            name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"
            entry = _FUNCTIONS_BY_NAME.get(name)
        return entry
    if op == "call_method":
        return _METHODS.get(target)
    return None


def lookup(op: str, target: Any, module: nn.Module | None = None) -> OpEntry | None:
    """The registry entry for an fx node's (op, target), or None when surgeon does not know how
    channels flow through the op (no entry, or an entry that only counts the op).

    A module subclass inherits its base's entry only if it does not override ``forward``: a custom
    ``forward`` may do anything with the channels.
    """
    if op == "call_module":
        if module is None:
            return None
        for base in type(module).__mro__:
            entry = _MODULES.get(base)
            if entry is not None:
                same = type(module).forward is base.forward
                return entry if same and entry.rule is not None else None
        return None
    entry = _function_entry(op, target)
    return entry if entry is not None and entry.rule is not None else None


def is_known_layer(module: nn.Module | None) -> bool:
    """A module the registry knows how channels flow through (``lookup`` finds it): both tracers
    call it as one opaque op, and shape propagation may run it on the meta device."""
    return lookup("call_module", None, module) is not None


def keeps_shape(op: str, target: Any, module: nn.Module | None = None) -> bool:
    """The node's output has the shape and dtype of its one tensor input (``OpEntry.same_shape``),
    so shape propagation may skip running it; a module subclass only if it keeps its base's forward."""
    entry = lookup(op, target, module)
    return entry is not None and entry.same_shape


def output_shape(module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """The output shape of calling ``module(*args, **kwargs)``, from its ``LayerSpec.out_shape``
    without running it; None when that is not known (no ``out_shape``, a subclass with its own
    forward, or a call with more than one input). Raises RuntimeError for an input that does not fit."""
    entry = lookup("call_module", None, module)
    fn = entry.layer.out_shape if entry is not None and entry.layer is not None else None
    if fn is None or kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    return fn(module, tuple(args[0].shape))


def mac_kind(op: str, target: Any, module: nn.Module | None = None) -> str:
    """How ``surgeon.count`` counts one call of an fx node's op (a key of ``layers.MAC_KINDS``).

    A module counts as its nearest registered base, *whatever its forward* (a subclass computes
    what its base does: timm's ``Conv2dSame`` is a conv); an unknown module counts "other", an
    unknown function or method "elementwise".
    """
    if op == "call_module":
        for base in type(module).__mro__ if module is not None else ():
            entry = _MODULES.get(base)
            if entry is not None:
                return entry.macs  # type: ignore[return-value]
        return "other"
    entry = _function_entry(op, target)
    return entry.macs if entry is not None else "elementwise"  # type: ignore[return-value]
