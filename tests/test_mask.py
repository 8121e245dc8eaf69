"""Tests for surgeon.mask: the torch.nn.utils.prune based masking baseline."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from surgeon.mask import mask, remove_masks, sparsity
from patterns import Dense  # noqa: E402

RATIOS = [0.0, 0.3, 0.5, 1.0]

# name -> (factory, index of the output dim, index of the reduction dim)
LAYERS = {
    "linear": (lambda: nn.Linear(16, 12), 0, 1),
    "conv1d": (lambda: nn.Conv1d(8, 6, 3), 0, 1),
    "conv2d": (lambda: nn.Conv2d(8, 10, 3), 0, 1),
    "conv3d": (lambda: nn.Conv3d(4, 6, (2, 3, 3)), 0, 1),
    "convT2d": (lambda: nn.ConvTranspose2d(8, 6, 3), 1, 0),
}


def make_layer(name: str) -> nn.Module:
    torch.manual_seed(0)
    return LAYERS[name][0]()


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 8, 3, padding=1, groups=2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 12),
    )


def unit_view(weight: torch.Tensor, granularity: str, name: str) -> torch.Tensor:
    """Rows = units of the given granularity (the documented definitions)."""
    _, out_dim, _ = LAYERS[name]
    if granularity == "element":
        return weight.reshape(-1, 1)
    if granularity == "channel":
        return weight.movedim(out_dim, 0).reshape(weight.shape[out_dim], -1)
    if granularity == "kernel":
        return weight.reshape(-1, 1) if weight.dim() == 2 else weight.flatten(2).flatten(0, 1)
    if granularity == "vector":
        if weight.dim() == 2:
            return weight.reshape(-1, 4)  # vector_size=4, in_features=16
        return weight.reshape(-1, weight.shape[-1])
    raise AssertionError(granularity)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(prune.is_pruned(m) for m in model.modules())


# --------------------------------------------------------------------------- structured units


@pytest.mark.parametrize("granularity", ["element", "vector", "kernel", "channel"])
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_mask_zeros_whole_lowest_norm_units_at_requested_ratio(
    granularity: str, name: str, ratio: float, criterion: str
) -> None:
    layer = make_layer(name)
    original = layer.weight.detach().clone()
    out = mask(layer, ratio, granularity, criterion)

    assert out is layer
    assert layer.weight.shape == original.shape
    units = unit_view(layer.weight_mask, granularity, name)
    assert ((units == 0).all(dim=1) | (units == 1).all(dim=1)).all(), "mask splits a unit"
    pruned = (units == 0).all(dim=1)
    assert int(pruned.sum()) == round(ratio * units.shape[0])
    assert torch.equal(layer.weight, original * layer.weight_mask)

    if 0 < int(pruned.sum()) < units.shape[0]:
        norms = torch.linalg.vector_norm(unit_view(original, granularity, name), ord=int(criterion[1]), dim=1)
        assert norms[pruned].max() <= norms[~pruned].min()


@pytest.mark.parametrize("ratio", RATIOS)
def test_global_element_scope_uses_one_threshold(ratio: float) -> None:
    model = make_model()
    weights = [m.weight.detach().clone() for m in model if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    mask(model, ratio, scope="global")
    masks = [m.weight_mask for m in model if hasattr(m, "weight_mask")]
    total = sum(w.numel() for w in weights)
    pruned = torch.cat([(mk == 0).flatten() for mk in masks])
    mags = torch.cat([w.abs().flatten() for w in weights])
    assert int(pruned.sum()) == round(ratio * total)
    assert sparsity(model) == pytest.approx(int(pruned.sum()) / total)
    if 0 < int(pruned.sum()) < total:
        assert mags[pruned].max() <= mags[~pruned].min()


def test_vector_linear_trailing_partial_block_is_a_unit() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)  # blocks of 4, 4 and a trailing block of 2
    mask(layer, 1.0, "vector")
    assert (layer.weight == 0).all()
    layer = nn.Linear(10, 6)
    mask(layer, 0.5, "vector")
    blocks = [layer.weight_mask[:, 0:4], layer.weight_mask[:, 4:8], layer.weight_mask[:, 8:10]]
    for block in blocks:
        assert ((block == 0).all(dim=1) | (block == 1).all(dim=1)).all()
    assert sum(int((b == 0).all(dim=1).sum()) for b in blocks) == round(0.5 * 18)


@pytest.mark.parametrize("size", [2, 8])
def test_vector_size_sets_linear_block_length(size: int) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 4)
    mask(layer, 0.5, "vector", vector_size=size)
    blocks = layer.weight_mask.reshape(4, 16 // size, size)
    assert ((blocks == 0).all(dim=-1) | (blocks == 1).all(dim=-1)).all()
    assert int((blocks == 0).all(dim=-1).sum()) == round(0.5 * 4 * 16 // size)


@pytest.mark.parametrize("granularity", ["element", "vector", "kernel", "channel"])
def test_masking_twice_applies_ratio_to_remaining_units(granularity: str) -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 8, 3)  # every unit count is divisible by 4
    mask(layer, 0.5, granularity)
    first = layer.weight_mask.clone()
    mask(layer, 0.5, granularity)
    assert sparsity(layer) == pytest.approx(0.75)
    assert (layer.weight_mask <= first).all()


# --------------------------------------------------------------------------- N:M


def groups_along(t: torch.Tensor, m: int, dim: int, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(complete groups [G, m], dense remainder) along the reduction dim."""
    if groups > 1:
        t = t.reshape(groups, -1, *t.shape[1:])
        dim += 1
    moved = t.movedim(dim, -1)
    full = moved.shape[-1] // m * m
    return moved[..., :full].reshape(-1, m), moved[..., full:]


@pytest.mark.parametrize("nm", ["2:4", "1:4", "4:8", " 1 : 2 "])
@pytest.mark.parametrize("name", list(LAYERS))
def test_nm_mask_satisfies_pattern_along_reduction_dim(nm: str, name: str) -> None:
    n, m = (int(v) for v in nm.split(":"))
    layer = make_layer(name)
    original = layer.weight.detach().clone()
    mask(layer, granularity=nm)
    reduction_dim = LAYERS[name][2]
    grouped, rest = groups_along(layer.weight_mask, m, reduction_dim)
    assert (grouped.sum(dim=1) == n).all()
    assert (rest == 1).all()  # e.g. conv3d has 4 input channels: 4:8 leaves it dense
    assert sparsity(layer) == pytest.approx(grouped.numel() * (1 - n / m) / original.numel())
    # optimal: the kept magnitude per group is the sum of the n largest |w|
    kept = groups_along(layer.weight.detach().abs(), m, reduction_dim)[0].sum(dim=1)
    best = groups_along(original.abs(), m, reduction_dim)[0].topk(n, dim=1).values.sum(dim=1)
    assert torch.allclose(kept, best)


def test_nm_remainder_stays_dense() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)
    mask(layer, granularity="2:4")
    assert (layer.weight_mask[:, 8:] == 1).all()
    assert (layer.weight_mask[:, :8].reshape(-1, 4).sum(dim=1) == 2).all()


def test_nm_grouped_transposed_conv_groups_within_conv_groups() -> None:
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(12, 4, 3, groups=2)  # 6 input channels per group
    mask(layer, granularity="2:4")
    grouped, rest = groups_along(layer.weight_mask, 4, 0, groups=2)
    assert (grouped.sum(dim=1) == 2).all()
    assert (rest == 1).all()


@pytest.mark.parametrize("ratio", [0.0, 0.9])
def test_nm_ignores_ratio(ratio: float) -> None:
    reference = make_layer("conv2d")
    mask(reference, granularity="2:4")
    layer = make_layer("conv2d")
    mask(layer, ratio, granularity="2:4")
    assert torch.equal(layer.weight_mask, reference.weight_mask)


def test_nm_after_element_mask_still_satisfies_pattern() -> None:
    layer = make_layer("linear")
    mask(layer, 0.3)
    first = layer.weight_mask.clone()
    mask(layer, granularity="2:4")
    assert (layer.weight_mask <= first).all()
    assert (layer.weight_mask.reshape(-1, 4).sum(dim=1) <= 2).all()


# --------------------------------------------------------------------------- model-level behaviour


@pytest.mark.parametrize("granularity", ["element", "vector", "kernel", "channel", "2:4"])
def test_model_shapes_unchanged_and_forward_uses_mask(granularity: str) -> None:
    model = make_model()
    shapes = {k: v.shape for k, v in model.named_parameters()}
    x = torch.randn(2, 4, 6, 6)
    model.eval()
    dense_out = model(x).detach()
    mask(model, 0.5, granularity)
    for name, mod in model.named_children():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            assert mod.weight.shape == shapes[f"{name}.weight"]
            assert mod.weight_mask.shape == mod.weight.shape
    out = model(x)
    assert out.shape == (2, 12)
    assert not torch.allclose(out, dense_out)
    reference = make_model().eval()  # same seed: same dense weights
    with torch.no_grad():
        for ref_mod, mod in zip(reference, model):
            if hasattr(mod, "weight_mask"):
                ref_mod.weight.mul_(mod.weight_mask)
    assert torch.allclose(reference(x), out)
    assert 0.0 < sparsity(model) < 1.0


@pytest.mark.parametrize("granularity", ["element", "vector", "kernel", "channel", "2:4"])
@pytest.mark.parametrize("use_helper", [True, False])
def test_remove_makes_zeros_permanent(granularity: str, use_helper: bool) -> None:
    model = make_model()
    mask(model, 0.5, granularity)
    level = sparsity(model)
    masked = {name: mod.weight.detach().clone() for name, mod in model.named_modules() if hasattr(mod, "weight_mask")}
    if use_helper:
        assert remove_masks(model) is model
    else:
        for name in masked:
            prune.remove(model.get_submodule(name), "weight")
    for name, weight in masked.items():
        mod = model.get_submodule(name)
        assert isinstance(mod.weight, nn.Parameter)
        assert not hasattr(mod, "weight_mask") and not hasattr(mod, "weight_orig")
        assert torch.equal(mod.weight, weight)
    assert sparsity(model) == pytest.approx(level)


def test_modules_restricts_masking_by_name_and_object() -> None:
    model = make_model()
    mask(model, 0.5, modules=["0", model[6]])
    assert prune.is_pruned(model[0]) and prune.is_pruned(model[6])
    assert not prune.is_pruned(model[3])
    total = model[0].weight.numel() + model[6].weight.numel()
    assert sparsity(model) == pytest.approx(
        (round(0.5 * model[0].weight.numel()) + round(0.5 * model[6].weight.numel())) / total
    )


def test_sparsity_counts_only_masked_layers() -> None:
    model = make_model()
    mask(model, 1.0, modules="6")
    assert sparsity(model) == 1.0


def test_sparsity_falls_back_to_maskable_layers() -> None:
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight[0] = 0
    assert sparsity(layer) == 0.5


# --------------------------------------------------------------------------- bad input


BAD_ARGS = [
    (dict(ratio=-0.1), ValueError, r"ratio must be in \[0, 1\], got -0.1"),
    (dict(ratio=1.5), ValueError, r"ratio must be in \[0, 1\], got 1.5"),
    (dict(ratio=float("nan")), ValueError, r"ratio must be in \[0, 1\], got nan"),
    (dict(ratio=True), TypeError, r"ratio must be a real number.*True"),
    (dict(ratio="0.5"), TypeError, r"ratio must be a real number.*'0.5'"),
    (dict(granularity="block"), ValueError, r"unknown granularity 'block'.*'element'.*'2:4'"),
    (dict(granularity="2:"), ValueError, r"unknown granularity '2:'"),
    (dict(granularity="2:4:8"), ValueError, r"unknown granularity '2:4:8'"),
    (dict(granularity="4:2"), ValueError, r"invalid N:M granularity '4:2'.*n=4, m=2"),
    (dict(granularity="4:4"), ValueError, r"invalid N:M granularity '4:4'"),
    (dict(granularity="0:4"), ValueError, r"invalid N:M granularity '0:4'"),
    (dict(granularity=4), TypeError, r"granularity must be a str.*got 4"),
    (dict(criterion="l3"), ValueError, r"unknown criterion 'l3'.*\('l1', 'l2'\)"),
    (dict(criterion=None), TypeError, r"criterion must be one of.*None"),
    (dict(scope="world"), ValueError, r"unknown scope 'world'.*\('local', 'global'\)"),
    (dict(scope="global", granularity="kernel"), ValueError, r"scope='global'.*granularity='kernel'"),
    (dict(scope="global", granularity="2:4"), ValueError, r"scope='global'.*granularity='2:4'"),
    (dict(modules=["nope"]), ValueError, r"'nope'.*not a submodule.*'0', '3', '6'"),
    (dict(modules=["0", "missing.layer"]), ValueError, r"'missing.layer'"),
    (dict(modules=[nn.Linear(2, 2)]), ValueError, r"Linear object that is not part of the model"),
    (dict(modules=["1"]), TypeError, r"'1' is a BatchNorm2d.*Conv2d"),
    (dict(modules=[]), ValueError, r"modules is empty"),
    (dict(modules=[3]), TypeError, r"Module objects or qualified names, got 3"),
    (dict(granularity="vector", vector_size=0), ValueError, r"vector_size must be a positive int, got 0"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD_ARGS, ids=[str(a[0]) for a in BAD_ARGS])
def test_bad_arguments_raise_and_leave_model_untouched(kwargs: dict, exc: type, match: str) -> None:
    model = make_model()
    before = snapshot(model)
    with pytest.raises(exc, match=match):
        mask(model, **kwargs)
    assert_untouched(model, before)


def test_model_without_maskable_layers_raises() -> None:
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"no maskable layers.*Conv2d.*Linear"):
        mask(model)
    assert_untouched(model, before)
    with pytest.raises(ValueError, match="no masked or maskable layers"):
        sparsity(model)


def test_lazy_layer_raises_and_model_untouched() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LazyLinear(2))
    weight = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"'1' has no initialised 'weight'"):
        mask(model)
    assert not prune.is_pruned(model[0])
    assert torch.equal(model[0].weight, weight)


def test_non_module_model_raises() -> None:
    with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):
        mask({})  # type: ignore[arg-type]


def test_default_ratio_half_element() -> None:
    layer = make_layer("linear")
    mask(layer)
    assert sparsity(layer) == pytest.approx(0.5)
    assert math.isclose(float((layer.weight_mask == 0).float().mean()), 0.5)


def test_maskable_layers_come_from_the_registry(monkeypatch) -> None:
    """Registered with the Linear spec (weight_dims (1, 0)), a user's layer masks like a Linear:
    channels are weight rows, N:M runs along the inputs; layers without weight_dims are not maskable."""
    from surgeon import registry
    from surgeon.mask import is_maskable

    monkeypatch.setattr(registry, "_MODULES", dict(registry._MODULES))
    spec = registry.layer_spec(nn.Linear(1, 1))
    registry.register_module(Dense, spec.couple, layer=spec)
    assert not any(is_maskable(m) for m in (nn.Embedding(4, 4), nn.BatchNorm2d(3), nn.LayerNorm(3)))
    torch.manual_seed(0)
    model = nn.Sequential(Dense(16, 12), nn.ReLU(), nn.Embedding(4, 4))
    mask(model, 0.5, "channel")
    rows = (model[0].weight == 0).all(dim=1)
    assert int(rows.sum()) == 6 and is_maskable(model[0]) and not prune.is_pruned(model[2])
    remove_masks(model)
    mask(model, granularity="2:4", modules=[model[0]])
    nonzero = (model[0].weight != 0).reshape(12, 4, 4).sum(dim=2)
    assert (nonzero <= 2).all()
