"""Tests for the surgeon_models zoo: build, forward, fx-trace, registry, randomize_bn."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.fx
from torch import nn

import surgeon_models as zoo

# Expected output shape at the default input (batch 1) and default kwargs.
EXPECTED_OUT: dict[str, tuple[int, ...]] = {
    "tinynet": (1, 10),
    "resnet18": (1, 1000),
    "resnet50": (1, 1000),
    "resnet56": (1, 10),
    "resnet20": (1, 10),
    "mobilenet_v2_32": (1, 10),
    "vgg16_bn": (1, 1000),
    "mobilenet_v2": (1, 1000),
    "densenet": (1, 10),
    "densenet121": (1, 1000),
    "se_resnet": (1, 10),
    "convnext": (1, 10),
    "unet": (1, 2, 64, 64),
}


def test_expected_table_covers_registry() -> None:
    assert sorted(EXPECTED_OUT) == sorted(zoo.names())


@pytest.mark.parametrize("name", zoo.names())
def test_forward_and_fx_trace(name: str) -> None:
    """Build, randomize norms, forward eagerly and via fx; outputs must match."""
    torch.manual_seed(0)
    model = zoo.randomize_bn(zoo.get(name), seed=1).eval()
    x = torch.randn(zoo.input_shape(name))
    with torch.no_grad():
        eager = model(x)
        traced = torch.fx.symbolic_trace(model)
        out = traced(x)
    assert tuple(eager.shape) == EXPECTED_OUT[name]
    assert torch.isfinite(eager).all()
    torch.testing.assert_close(out, eager, rtol=0, atol=0)


@pytest.mark.parametrize("name", zoo.names())
def test_entry_metadata(name: str) -> None:
    e = zoo.entry(name)
    assert e.name == name
    assert e.input_shape == zoo.input_shape(name)
    assert e.input_shape[0] == 1
    assert e.description and "\n" not in e.description
    # Only LayerNorm-over-channels models are flagged as mixing.
    has_ln = any(isinstance(m, nn.LayerNorm) for m in zoo.get(name).modules())
    assert e.mixing_norm == has_ln
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.name = "x"  # type: ignore[misc]


def test_num_classes_kwarg() -> None:
    with torch.no_grad():
        out = zoo.get("resnet56", num_classes=7).eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    with torch.no_grad():
        out = zoo.get("vgg16_bn", num_classes=5, width=0.125, hidden=64).eval()(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 5)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        zoo.get("nope")
    msg = str(info.value)
    assert "nope" in msg
    for n in zoo.names():
        assert n in msg
    with pytest.raises(ValueError):
        zoo.input_shape("nope")


def test_param_counts_match_reference() -> None:
    """ImageNet models match the well-known torchvision parameter counts."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(zoo.get("resnet18")) == 11_689_512
    assert count(zoo.get("resnet50")) == 25_557_032
    assert count(zoo.get("mobilenet_v2")) == 3_504_872


@pytest.mark.parametrize("name", ["tinynet", "convnext"])
def test_randomize_bn(name: str) -> None:
    model = zoo.get(name)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    assert norms
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert zoo.randomize_bn(model, seed=0) is model
    for m in norms:
        assert not torch.allclose(m.weight, torch.ones_like(m.weight))
        assert not torch.allclose(m.bias, torch.zeros_like(m.bias))
        assert (m.weight > 0).all()
        if isinstance(m, nn.BatchNorm2d):
            assert not torch.allclose(m.running_mean, torch.zeros_like(m.running_mean))
            assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))
            assert (m.running_var > 0).all()
    # Convs/Linears are untouched.
    after = model.state_dict()
    for k, v in before.items():
        if "conv" in k or "fc" in k or "pwconv" in k or "head" in k:
            assert torch.equal(v, after[k]), k
    # Reproducible per seed, different across seeds.
    a = zoo.randomize_bn(zoo.get(name), seed=3).state_dict()
    b = zoo.randomize_bn(zoo.get(name), seed=3).state_dict()
    c = zoo.randomize_bn(zoo.get(name), seed=4).state_dict()
    bn_keys = [k for k in a if "running_var" in k or k.endswith("norm.weight") or "bn" in k]
    assert bn_keys
    assert all(torch.equal(a[k], b[k]) for k in bn_keys if a[k].is_floating_point())
    assert any(not torch.equal(a[k], c[k]) for k in bn_keys if a[k].is_floating_point())


def test_randomize_bn_changes_output() -> None:
    model = zoo.get("tinynet").eval()
    x = torch.randn(zoo.input_shape("tinynet"))
    with torch.no_grad():
        y0 = model(x)
        y1 = zoo.randomize_bn(model, seed=0)(x)
    assert not torch.allclose(y0, y1)
