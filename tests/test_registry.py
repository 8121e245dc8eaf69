"""The op registry: one entry per op, a layer's facts in its LayerSpec, checked when registered."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon import registry
from surgeon.layers import LAYER_SPECS, MAC_KINDS


def test_every_built_in_layer_is_registered_with_its_spec():
    assert all(registry.registered_layers()[t] is spec for t, spec in LAYER_SPECS.items())
    assert registry.layer_spec(nn.MultiheadAttention(8, 2)).size_attrs == ("embed_dim", "kdim", "vdim", "num_heads")


@pytest.mark.parametrize("layer", [
    nn.Conv2d(4, 8, 3, groups=2), nn.ConvTranspose1d(4, 6, 2), nn.Linear(3, 5), nn.Embedding(7, 3),
    nn.BatchNorm1d(4), nn.InstanceNorm3d(4, affine=True), nn.GroupNorm(2, 4), nn.LayerNorm(6),
    nn.PReLU(4), nn.MultiheadAttention(8, 2),
], ids=lambda m: type(m).__name__)
def test_size_attrs_name_attributes_the_layer_has(layer):
    spec = registry.layer_spec(layer)
    assert spec.size_attrs and all(hasattr(layer, a) for a in spec.size_attrs)
    assert spec.macs in MAC_KINDS and spec.check(layer) == []


def test_a_layer_spec_with_a_bad_mac_kind_or_size_attrs_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "_MODULES", dict(registry._MODULES))
    monkeypatch.setattr(registry, "_FUNCTIONS", dict(registry._FUNCTIONS))
    spec = registry.layer_spec(nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"LayerSpec has MAC kind 'dense'; choose one of 'conv', "):
        dataclasses.replace(spec, macs="dense")
    with pytest.raises(TypeError, match=r"a one-name tuple needs a comma: \('num_features',\)"):
        dataclasses.replace(spec, size_attrs="num_features")
    with pytest.raises(ValueError, match=r"counts as its LayerSpec says \(macs='linear'\), got macs='conv'"):
        registry.register_module(nn.Linear, spec.couple, layer=spec, macs="conv")
    with pytest.raises(ValueError, match="a registry entry has MAC kind 'pooling'"):
        registry.register_function(F.max_pool2d, lambda ctx: None, macs="pooling")
    assert registry.mac_kind("call_function", F.max_pool2d) == "pool"  # nothing was changed


def test_count_only_ops_freeze_their_channels_like_unknown_ones():
    """F.conv_transpose2d has a MAC kind but no channel rule: the graph treats it as unknown."""

    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.w = nn.Parameter(torch.randn(4, 2, 2, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv_transpose2d(self.a(x), self.w, stride=2)

    assert registry.lookup("call_function", F.conv_transpose2d) is None
    assert registry.mac_kind("call_function", F.conv_transpose2d) == "conv_transpose"
    with pytest.warns(surgeon.FrozenGroupWarning, match=r"unsupported op torch\.conv_transpose2d"):
        graph = surgeon.trace(Up(), torch.randn(1, 3, 4, 4))
    assert not graph.prunable_groups()


@pytest.mark.parametrize("module, kind, has_rule", [
    (nn.SyncBatchNorm(4), "norm", False), (nn.Unflatten(1, (2, 2)), "shape", False),
    (nn.GLU(), "activation", False), (nn.MaxUnpool2d(2), "pool", False), (nn.LSTM(2, 2), "other", False),
    (nn.Upsample(scale_factor=2), "elementwise", True), (nn.Dropout(), "shape", True),
    (nn.MultiheadAttention(4, 2), "other", True),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_module_kinds(module, kind, has_rule):
    """Every module has a MAC kind (unknown ones "other"); only those with a rule are known to the
    graph, the others freeze their channels."""
    assert registry.mac_kind("call_module", None, module) == kind
    assert (registry.lookup("call_module", None, module) is not None) == has_rule
