"""Pruning before training (surgeon.train.init): re-initialisation, random pruning at init, and the
Liu et al. 2019 re-init control."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surgeon
import surgeon_models as zoo
from surgeon.train.init import random_at_init, reinit_control, reinitialize
from surgeon.train.loop import Trainer, sgd

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def make_trainer() -> Trainer:
    """64 random 3x16x16 samples of 10 classes, batches of 16."""
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g))
    return Trainer(DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(2)),
                   DataLoader(data, batch_size=64), optimizer=sgd(lr=0.05), device="cpu", progress=False)


def make_model(seed: int = 0) -> nn.Module:
    """TinyNet with non-trivial BN parameters and statistics (so a reset is visible)."""
    torch.manual_seed(seed)
    return zoo.randomize_bn(zoo.get("tinynet"), seed=seed)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


class Scaled(nn.Module):
    """A layer owning a bare parameter and no reset_parameters (what reinitialize must refuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class Broken(nn.Conv2d):
    """A conv whose reset_parameters fails half way (after changing its weight)."""

    def reset_parameters(self) -> None:
        if hasattr(self, "armed"):
            nn.init.zeros_(self.weight)
            raise RuntimeError("boom")
        super().reset_parameters()


def test_reinitialize_changes_weights_and_is_seeded() -> None:
    """Same seed -> same weights; another seed -> others; BN reset; the global RNG untouched."""
    a, b, c = make_model(0), make_model(1), make_model(0)
    original = snapshot(a)
    rng = torch.get_rng_state()
    assert reinitialize(a, seed=3) is a
    assert torch.equal(torch.get_rng_state(), rng)
    reinitialize(b, seed=3)
    reinitialize(c, seed=4)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    for name in ("conv1.weight", "conv2.weight", "fc.weight", "fc.bias"):
        assert not torch.equal(a.state_dict()[name], original[name]), name
        assert not torch.equal(a.state_dict()[name], c.state_dict()[name]), name
    assert torch.equal(a.bn1.weight, torch.ones(8)) and torch.equal(a.bn1.running_mean, torch.zeros(8))
    assert not torch.equal(original["bn1.running_mean"], torch.zeros(8))


def test_reinitialize_a_pruned_model() -> None:
    """A pruned model re-initialises at its new sizes (fan-in of the narrower conv)."""
    model = make_model()
    surgeon.prune(model, X, ratio=0.5)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    reinitialize(model, seed=0)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    bound = 1 / math.sqrt(model.conv2.weight[0].numel())  # kaiming_uniform(a=sqrt(5)) on fan-in 4*3*3
    assert float(model.conv2.weight.detach().abs().max()) <= bound
    assert model(X).shape == (1, 10)


def test_reinitialize_keeps_masks() -> None:
    """Masked layers: fresh survivors, masked entries still zero, masks unchanged."""
    model = make_model()
    surgeon.mask(model, 0.5)
    masks = {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    before = model.conv1.weight_orig.detach().clone()
    reinitialize(model, seed=5)  # not 0: make_model seeded 0, and conv1 would get its own init back
    model(X)
    for name, kept in masks.items():
        m = model.get_submodule(name)
        assert torch.equal(m.weight_mask, kept)
        assert int((m.weight[kept == 0] != 0).sum()) == 0
    keep = masks["conv1"].bool()
    assert not torch.equal(model.conv1.weight_orig[keep], before[keep])
    assert torch.equal(model.conv1.weight[keep], model.conv1.weight_orig[keep])


def test_reinitialize_refuses_a_module_without_reset_parameters() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), Scaled(), nn.BatchNorm2d(8))
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"1 module\(s\) .* 1 \(Scaled\); give them a reset_parameters"):
        reinitialize(model, seed=0)
    assert same_state(model, before)


def test_reinitialize_restores_when_a_reset_fails() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), Broken(8, 8, 3))
    model[1].armed = True
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        reinitialize(model, seed=0)
    assert same_state(model, before)


def test_reinitialize_bad_seed() -> None:
    with pytest.raises(TypeError, match="seed must be an integer, got '1'"):
        reinitialize(make_model(), seed="1")


def test_random_at_init_trains_end_to_end() -> None:
    """Random channels go, the smaller model trains, the outcome accounts for it."""
    model = make_model()
    params = sum(p.numel() for p in model.parameters())
    outcome = random_at_init(model, X, make_trainer(), 0.5, epochs=1, seed=0)
    assert outcome.method == "random-init" and outcome.model is model and outcome.epochs == 1
    assert outcome.steps[0].params == sum(p.numel() for p in model.parameters()) < params
    assert outcome.steps[0].macs < outcome.notes["before"].macs
    assert 0.0 <= outcome.accuracy <= 1.0 and outcome.notes["removed"]


def test_random_at_init_seed_decides_the_channels() -> None:
    """The seed, not the weights, picks the channels: reproducible, and another seed picks others."""
    removed = [random_at_init(make_model(w), X, make_trainer(), 0.5, epochs=0, seed=s).notes["removed"]
               for w, s in ((0, 7), (1, 7), (0, 8))]
    assert removed[0] == removed[1] != removed[2]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ratio=1.5), ValueError, r"ratio must be a number in \[0, 1\)"),
    (dict(epochs=-1), ValueError, "epochs must be a non-negative integer, got -1"),
    (dict(criterion="l1"), TypeError, "always prunes with the 'random' criterion"),
    (dict(seed=1.5), TypeError, "seed must be an integer"),
    (dict(scope="everywhere"), ValueError, "unknown scope 'everywhere'"),
])
def test_random_at_init_bad_input_changes_nothing(kwargs: dict, error: type, match: str) -> None:
    model = make_model()
    before = snapshot(model)
    args = dict(ratio=0.5, epochs=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        random_at_init(model, X, make_trainer(), args.pop("ratio"), **args)
    assert same_state(model, before)


def test_reinit_control_is_a_fresh_copy() -> None:
    """Same architecture, new values, trained as long; the pruned model it copies is untouched."""
    pruned = make_model()
    surgeon.prune(pruned, X, ratio=0.5)
    before = snapshot(pruned)
    outcome = reinit_control(pruned, make_trainer(), epochs=1, seed=5)
    control = outcome.model
    assert control is not pruned and same_state(pruned, before)
    assert {k: v.shape for k, v in control.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert not torch.equal(control.conv1.weight, before["conv1.weight"])
    assert outcome.method == "reinit" and outcome.epochs == 1 and math.isnan(outcome.steps[0].ratio)
    assert outcome.steps[0].params == sum(p.numel() for p in pruned.parameters())
    assert outcome.steps[0].macs == surgeon.count(pruned, X).macs
    assert 0.0 <= outcome.accuracy <= 1.0


def test_reinit_control_of_a_masked_ticket() -> None:
    """A masked model copies (deepcopy alone fails on prune masks) and keeps its sparsity."""
    ticket = make_model()
    surgeon.mask(ticket, 0.7, scope="global")
    outcome = reinit_control(ticket, make_trainer(), epochs=1, seed=5, example_inputs=X)
    outcome.model(X)
    assert surgeon.sparsity(outcome.model) == pytest.approx(surgeon.sparsity(ticket))
    assert outcome.steps[0].ratio == pytest.approx(0.7, abs=0.01)
    assert not torch.equal(outcome.model.fc.weight_orig, ticket.fc.weight_orig)


def test_reinit_control_refuses_before_copying() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), Scaled(), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(TypeError, match=r"1 \(Scaled\): no reset_parameters"):
        reinit_control(model, make_trainer(), epochs=1, seed=0)
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        reinit_control(make_model(), make_trainer(), epochs=-3, seed=0)
