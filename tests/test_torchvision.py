"""torchvision's classification models get the same checks as our zoo (optional extra: skipped
cleanly when torchvision is not installed: `pip install -e .[vision]`)."""
from __future__ import annotations

import warnings

import pytest
import torch

tv = pytest.importorskip("torchvision.models", reason="torchvision is an optional extra")

EQUIVALENT = ["resnet18", "resnet50", "mobilenet_v2", "vgg11_bn", "densenet121", "mnasnet0_5",
              "shufflenet_v2_x0_5", "regnet_x_400mf", "resnext50_32x4d", "efficientnet_b0",
              "mobilenet_v3_small", "googlenet", "squeezenet1_0", "alexnet"]
MIXING = ["convnext_tiny"]


def _build(name: str) -> torch.nn.Module:
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(tv, name)(weights=None, **kwargs).eval()


@pytest.mark.parametrize("name", EQUIVALENT)
def test_torchvision_surgical_equivalence(name, check):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 96, 96) if name not in ("alexnet", "squeezenet1_0") else torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen groups (e.g. channel shuffle) warn; they must not break
        check(_build(name), x, 0.3)


@pytest.mark.parametrize("name", MIXING)
def test_torchvision_mixing_models_keep_shapes(name):
    import surgeon

    m, x = _build(name), torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        surgeon.prune(m, x, 0.3)
    assert m(x).shape == (1, 1000)
