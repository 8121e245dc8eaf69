"""After-training workflows: one-shot, iterative (schedule, accuracy floor), network slimming."""
from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surgeon
from surgeon.schedule import fractions
from surgeon.train.loop import Trainer
from surgeon.train.workflows import iterative, one_shot, slimming, split_epochs

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class ConvBN(nn.Module):
    """conv-BN-ReLU x3 -> average pool -> Linear: three independent prunable groups (16/16/32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))


def trainer(n: int = 64, **kwargs: Any) -> Trainer:
    ds = data(n)
    return Trainer(DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=64), progress=False,
                   device="cpu", **kwargs)


def model_and_state() -> tuple[ConvBN, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    m = ConvBN()
    return m, copy.deepcopy(m.state_dict())


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def size_metric(model: nn.Module, dense_params: int) -> Callable[[Any, Any], tuple[int, int]]:
    """An 'accuracy' that is the fraction of the dense parameters left (in 1/10000): falls with
    every prune by a known amount, so a floor can be placed between two steps."""
    def metric(output: Any, target: Any) -> tuple[int, int]:
        return round(10000 * sum(p.numel() for p in model.parameters()) / dense_params), 10000
    return metric


# -------------------------------------------------------------------------------------- one-shot
def test_one_shot_end_to_end() -> None:
    model, _ = model_and_state()
    dense = surgeon.count(model, X).params
    out = one_shot(model, X, trainer(), 0.5, epochs=1, recalibrate=2)
    assert out.model is model and out.method == "one-shot" and out.epochs == 1
    assert (model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels) == (8, 8, 16)
    step = out.steps[0]
    assert (step.params, step.macs) == (surgeon.count(model, X).params, surgeon.count(model, X).macs)
    assert step.params < dense and step.ratio == 0.5 and step.epochs == 1
    assert 0.0 <= step.accuracy_pruned <= 1.0 and out.accuracy == step.accuracy
    assert "accuracy_dense" in out.notes and out.notes["recalibrate_batches"] == 2


# ------------------------------------------------------------------------------------- iterative
def test_split_epochs_is_even_and_sums_to_the_budget() -> None:
    assert split_epochs(7, 3) == [2, 2, 3]
    assert split_epochs(2, 3) == [0, 1, 1]
    assert split_epochs(6, 3) == [2, 2, 2]


def test_iterative_steps_reach_the_scheduled_channel_counts() -> None:
    """Step k of the cubic schedule leaves what a one-shot prune of the original model at
    ratio * f_k leaves (amounts are of the original model); the last step halves every layer."""
    model, _ = model_and_state()
    fresh = copy.deepcopy(model)
    out = iterative(model, X, trainer(), 0.5, steps=3, epochs=2, schedule="cubic")
    fracs = fractions(3, "cubic")
    assert [s.ratio for s in out.steps] == pytest.approx([0.5 * f for f in fracs])
    for s, f in zip(out.steps, fracs):
        ref = surgeon.prune(copy.deepcopy(fresh), X, 0.5 * f)
        assert s.params == surgeon.count(ref, X).params, s.step
    assert out.steps[0].params > out.steps[1].params > out.steps[2].params
    assert (model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels) == (8, 8, 16)
    assert [s.epochs for s in out.steps] == [0, 1, 1] and out.epochs == 2
    assert out.model is model and "stopped" not in out.notes


def test_floor_stops_and_keeps_the_last_model_above_it() -> None:
    """Step 2 falls below the floor: the run stops and the user's own model object (its own
    submodules) computes exactly what step 1 left."""
    model, _ = model_and_state()
    fresh = copy.deepcopy(model)
    conv1 = model.conv1
    dense = surgeon.count(model, X).params
    fracs = fractions(3, "linear")
    step1 = surgeon.prune(copy.deepcopy(fresh), X, 0.75 * fracs[0])
    step2 = surgeon.prune(copy.deepcopy(fresh), X, 0.75 * fracs[1])
    left1, left2 = (surgeon.count(m, X).params / dense for m in (step1, step2))
    floor = (left1 + left2) / 2
    t = trainer(metric=size_metric(model, dense))
    out = iterative(model, X, t, 0.75, steps=3, epochs=0, schedule="linear", floor=floor)
    assert [s.step for s in out.steps] == [1, 2] and out.notes["restored_step"] == 1
    assert "step 2 of 3" in out.notes["stopped"] and "below the floor" in out.notes["stopped"]
    assert out.model is model and model.conv1 is conv1
    assert model.conv1.out_channels == step1.conv1.out_channels == conv1.weight.shape[0]
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(outputs(model, x), outputs(step1, x))
    assert out.accuracy == pytest.approx(left1, abs=1e-4) and out.accuracy >= floor


def test_floor_missed_by_the_first_step_restores_the_dense_model() -> None:
    model, state = model_and_state()
    dense = surgeon.count(model, X).params
    t = trainer(metric=size_metric(model, dense))
    out = iterative(model, X, t, 0.75, steps=3, epochs=0, schedule="linear", floor=0.99)
    assert out.notes["restored_step"] == 0 and "restored the dense model" in out.notes["stopped"]
    assert same_state(model, state) and model.conv1.out_channels == 16


def test_floor_above_the_dense_accuracy_is_refused_unchanged() -> None:
    model, state = model_and_state()
    with pytest.raises(ValueError, match=r"floor 1\.0000 is above the dense model's accuracy 0\.\d{4}"):
        iterative(model, X, trainer(), 0.5, steps=2, epochs=0, floor=1.0)
    assert same_state(model, state)


# -------------------------------------------------------------------------------------- slimming
def test_slimming_penalty_drives_the_gammas_down() -> None:
    """Same model, data order and steps: only the L1 subgradient differs, and it lowers mean |gamma|."""
    gammas = []
    for lam in (0.0, 0.05):
        model, _ = model_and_state()
        out = slimming(model, X, trainer(), 0.5, sparsity_epochs=2, epochs=1, lam=lam)
        gammas.append(out.notes["mean_abs_gamma"])
        assert out.model is model and out.epochs == 3 and out.method == "slimming"
        assert out.steps[0].params == surgeon.count(model, X).params
        assert sum(m.num_features for m in (model.bn1, model.bn2, model.bn3)) == 32  # half of 64, globally
    assert gammas[1] < gammas[0] - 0.01


# ---------------------------------------------------------------------------------- bad arguments
def empty_trainer() -> Trainer:
    ds = data(0)
    return Trainer(DataLoader(ds, batch_size=16), DataLoader(data(), batch_size=64), progress=False, device="cpu")


@pytest.mark.parametrize("run, match", [
    (lambda m: one_shot(m, X, trainer(), 1.5), r"ratio must be a number in \[0, 1\)"),
    (lambda m: one_shot(m, X, trainer(), 0.5, epochs=-1), "epochs must be a non-negative integer, got -1"),
    (lambda m: one_shot(m, X, trainer(), 0.5, recalibrate=0), "recalibrate .* must be a positive integer"),
    (lambda m: one_shot(m, X, empty_trainer(), 0.5, epochs=1), "train loader is empty"),
    (lambda m: iterative(m, X, trainer(), 0.5, steps=0, epochs=1), "steps must be a positive integer"),
    (lambda m: iterative(m, X, trainer(), -0.1, steps=2, epochs=1), r"ratio must be a number in \[0, 1\)"),
    (lambda m: iterative(m, X, trainer(), 0.5, steps=2, epochs=-2), "epochs must be a non-negative integer"),
    (lambda m: iterative(m, X, trainer(), 0.5, steps=2, epochs=1, floor=1.5), r"floor must be an accuracy in \[0, 1\]"),
    (lambda m: iterative(m, X, empty_trainer(), 0.5, steps=2, epochs=2), "train loader is empty"),
    (lambda m: slimming(m, X, trainer(), 1.0, sparsity_epochs=1, epochs=1), r"ratio must be a number in \[0, 1\)"),
    (lambda m: slimming(m, X, trainer(), 0.5, sparsity_epochs=-1, epochs=1), "sparsity_epochs must be a non-negative"),
    (lambda m: slimming(m, X, trainer(), 0.5, sparsity_epochs=1, epochs=1, lam=-1.0), "lam must be a non-negative"),
    (lambda m: slimming(m, X, empty_trainer(), 0.5, sparsity_epochs=1, epochs=0), "train loader is empty"),
], ids=["one-shot-ratio", "one-shot-epochs", "one-shot-recalibrate", "one-shot-empty", "iterative-steps",
        "iterative-ratio", "iterative-epochs", "iterative-floor", "iterative-empty", "slimming-ratio",
        "slimming-sparsity-epochs", "slimming-lam", "slimming-empty"])
def test_bad_arguments_raise_before_the_model_changes(run: Callable[[nn.Module], Any], match: str) -> None:
    model, state = model_and_state()
    with pytest.raises(ValueError, match=match):
        run(model)
    assert same_state(model, state) and model.conv1.out_channels == 16
