"""The one op registry: fx target -> how channels flow through it.

Keys are what fx puts in ``node.target``: a module *type* for ``call_module`` nodes, the function
object itself for ``call_function`` nodes (``torch.cat``, ``operator.add``, ``F.relu``), the method
name for ``call_method`` nodes (``"view"``). Supporting a new op means adding one entry here.
Ops without an entry freeze every channel they touch, with a warning that names the node and op.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import attention, functional, reshape, rules
from .layers import LAYER_SPECS, LayerSpec
from .record import attribute_int, constant_tensor

__all__ = ["OpEntry", "lookup", "layer_spec", "register_function", "register_method", "register_module"]


@dataclass(frozen=True)
class OpEntry:
    """rule: adds the op's couplings; layer: set for layers with parameters; shape_only: the op only
    reads sizes (x.size(1)), so it must not fix the dims of its input."""

    rule: Callable[..., None]
    layer: Optional[LayerSpec] = None
    shape_only: bool = False


_MODULES: dict[type, OpEntry] = {t: OpEntry(spec.couple, spec) for t, spec in LAYER_SPECS.items()}
_MODULES[nn.MultiheadAttention] = OpEntry(attention.MHA_SPEC.couple, attention.MHA_SPEC)
_FUNCTIONS: dict[Any, OpEntry] = {}
# Functions of optional packages, keyed by "module.name" so the core never imports them.
_FUNCTIONS_BY_NAME: dict[str, OpEntry] = {
    "torchvision.ops.stochastic_depth.stochastic_depth": OpEntry(rules.elementwise),  # scales whole samples
}
_METHODS: dict[str, OpEntry] = {}


def register_module(module_type: type, rule: Callable[..., None], layer: LayerSpec | None = None) -> None:
    _MODULES[module_type] = OpEntry(rule, layer)


def register_function(fn: Any, rule: Callable[..., None], shape_only: bool = False) -> None:
    _FUNCTIONS[fn] = OpEntry(rule, shape_only=shape_only)


def register_method(name: str, rule: Callable[..., None], shape_only: bool = False) -> None:
    _METHODS[name] = OpEntry(rule, shape_only=shape_only)


_ELEMENTWISE_MODULES = [
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.LogSigmoid, nn.RReLU,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
]
_CHANNELWISE_MODULES = [
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
]
for _t in _ELEMENTWISE_MODULES:
    register_module(_t, rules.elementwise)
for _t in _CHANNELWISE_MODULES:
    register_module(_t, rules.channelwise)
register_module(nn.Flatten, reshape.flatten)
register_module(nn.PixelShuffle, lambda ctx: reshape.pixel_shuffle(ctx, ctx.module.upscale_factor))
register_module(nn.PixelUnshuffle, lambda ctx: reshape.pixel_unshuffle(ctx, ctx.module.downscale_factor))
register_module(nn.ChannelShuffle, lambda ctx: reshape.channel_shuffle(ctx, ctx.module.groups))
for _t in (nn.Softmax, nn.LogSoftmax, nn.Softmin):
    register_module(_t, lambda ctx: rules.along_dim(ctx, ctx.module.dim))

_ELEMENTWISE_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.abs,
    torch.neg, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.pow, torch.square,
    torch.maximum, torch.minimum, torch.where, torch.ones_like, torch.zeros_like, torch.sin,
    torch.cos, torch.erf, torch.reciprocal,
    F.relu, F.relu_, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.leaky_relu, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid,
    F.sigmoid, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
]
_CHANNELWISE_FUNCTIONS = [
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample, F.upsample_nearest,
    F.upsample_bilinear, torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d,
]
for _f in _ELEMENTWISE_FUNCTIONS:
    register_function(_f, rules.elementwise)
for _f in _CHANNELWISE_FUNCTIONS:
    register_function(_f, rules.channelwise)
for _f, _r in [
    (F.pad, rules.pad), (torch.flatten, reshape.flatten), (torch.squeeze, reshape.flatten),
    (torch.unsqueeze, reshape.flatten), (torch.reshape, reshape.view), (torch.permute, rules.permute),
    (torch.transpose, rules.transpose), (torch.cat, rules.cat), (torch.concat, rules.cat),
    (torch.concatenate, rules.cat), (torch.split, reshape.split), (torch.chunk, reshape.chunk),
    (torch.mean, rules.reduce), (torch.sum, rules.reduce), (torch.amax, rules.reduce),
    (torch.amin, rules.reduce), (torch.std, rules.reduce), (torch.var, rules.reduce),
    (torch.softmax, rules.along_dim), (F.softmax, rules.along_dim), (F.log_softmax, rules.along_dim),
    (operator.getitem, rules.getitem), (F.layer_norm, rules.layer_norm),
    # functional calls with a module's own tensors (functional.py)
    (F.conv1d, functional.conv), (F.conv2d, functional.conv), (F.conv3d, functional.conv),
    (F.linear, functional.linear), (F.batch_norm, functional.batch_norm),
    (F.instance_norm, functional.batch_norm), (F.group_norm, functional.group_norm),
    (F.embedding, functional.embedding),
    # attention (attention.py)
    (F.scaled_dot_product_attention, attention.sdpa), (operator.matmul, attention.matmul),
    (torch.matmul, attention.matmul), (torch.bmm, attention.matmul),
    (torch.stack, reshape.stack), (torch.unbind, reshape.unbind), (torch.roll, rules.roll), (F.pixel_shuffle, reshape.pixel_shuffle),
    (F.pixel_unshuffle, reshape.pixel_unshuffle), (torch.pixel_shuffle, reshape.pixel_shuffle),
    (torch.pixel_unshuffle, reshape.pixel_unshuffle), (F.channel_shuffle, reshape.channel_shuffle),
    (torch.channel_shuffle, reshape.channel_shuffle), (torch.native_channel_shuffle, reshape.channel_shuffle),
    (constant_tensor, rules.constant),
]:
    register_function(_f, _r)
register_function(getattr, rules.tensor_attribute)
register_function(attribute_int, rules.shape_only, shape_only=True)

for _m in ["add", "sub", "mul", "div", "truediv", "add_", "sub_", "mul_", "div_", "relu", "relu_",
           "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "clip", "abs", "neg", "exp", "log",
           "sqrt", "rsqrt", "pow", "square", "contiguous", "clone", "detach", "float", "half",
           "double", "hardtanh_", "masked_fill", "sin", "cos", "reciprocal"]:
    register_method(_m, rules.elementwise)
for _m, _r in [
    ("view", reshape.view), ("reshape", reshape.view), ("flatten", reshape.flatten),
    ("squeeze", reshape.flatten), ("unsqueeze", reshape.flatten), ("permute", rules.permute),
    ("transpose", rules.transpose), ("split", reshape.split), ("chunk", reshape.chunk),
    ("mean", rules.reduce), ("sum", rules.reduce), ("amax", rules.reduce), ("amin", rules.reduce),
    ("std", rules.reduce), ("var", rules.reduce), ("softmax", rules.along_dim),
    ("log_softmax", rules.along_dim), ("matmul", attention.matmul), ("bmm", attention.matmul),
    ("expand_as", rules.elementwise), ("type_as", rules.like_first), ("to", rules.like_first),
    ("new_full", rules.like_first), ("new_zeros", rules.like_first), ("new_ones", rules.like_first),
    ("new_empty", rules.like_first), ("new_tensor", rules.like_first), ("unbind", reshape.unbind),
    ("expand", reshape.expand), ("roll", rules.roll), ("reshape_as", reshape.reshape_as),
    ("view_as", reshape.reshape_as),
]:
    register_method(_m, _r)
for _m in ("size", "dim", "numel"):
    register_method(_m, rules.shape_only, shape_only=True)


def layer_spec(module: nn.Module) -> LayerSpec | None:
    """The layer spec of ``module``'s class or its nearest registered base, *whatever its forward*:
    what the surgery needs to re-sync a subclass's size attributes (timm's ``BatchNormAct2d``,
    ``Conv2dSame``) after its tensors were cut through functional calls."""
    for base in type(module).__mro__:
        entry = _MODULES.get(base)
        if entry is not None and entry.layer is not None:
            return entry.layer
    return None


def lookup(op: str, target: Any, module: nn.Module | None = None) -> OpEntry | None:
    """The registry entry for an fx node's (op, target), or None when surgeon does not know the op.

    A module subclass inherits its base's entry only if it does not override ``forward``: a custom
    ``forward`` may do anything with the channels.
    """
    if op == "call_module" and module is not None:
        for base in type(module).__mro__:
            entry = _MODULES.get(base)
            if entry is not None:
                return entry if type(module).forward is base.forward else None
        return None
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
