"""Soft Filter Pruning: soft zeroing (LayerSpec.zero_outputs), recovery, exact final removal."""
from __future__ import annotations

import copy
import types
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surgeon
from surgeon.registry import layer_spec
from surgeon.train import soft
from surgeon.train.loop import Trainer
from surgeon.train.soft import SoftFilterPruner, soft_filter_pruning
from surgeon.verify import zeroed_reference

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class ConvBN(nn.Module):
    """conv-BN-ReLU x3 -> average pool -> Linear: three independent prunable groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class SigmoidGate(nn.Module):
    """conv(bias) -> sigmoid -> conv: a zeroed filter still sends sigmoid(0) = 0.5 to its consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.conv1(x))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def trainer(n: int = 64) -> Trainer:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))
    return Trainer(DataLoader(data, batch_size=16), DataLoader(data, batch_size=64), progress=False, device="cpu")


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def chosen(p: surgeon.Plan, name: str) -> list[int]:
    return p.removed()[name]["out"]


# --------------------------------------------------------------------------- LayerSpec.zero_outputs
@pytest.mark.parametrize("make, x", [
    (partial(nn.Conv2d, 4, 6, 3, padding=1), torch.randn(2, 4, 5, 5)),
    (partial(nn.Conv2d, 4, 6, 3, padding=1, groups=2), torch.randn(2, 4, 5, 5)),
    (partial(nn.ConvTranspose2d, 4, 6, 3, groups=2), torch.randn(2, 4, 5, 5)),
    (partial(nn.Linear, 4, 6), torch.randn(2, 4)),
    (partial(nn.Embedding, 5, 6), torch.tensor([[0, 3, 4]])),
], ids=["conv", "grouped-conv", "grouped-conv-transpose", "linear", "embedding"])
def test_zero_outputs_silences_exactly_those_channels(make, x: torch.Tensor) -> None:
    """Output channels 1 and 4 become exactly 0 (bias included); the others do not change."""
    module = make()  # built per test: zero_outputs changes it in place
    dim = -1 if isinstance(module, (nn.Linear, nn.Embedding)) else 1
    before = module(x).detach()
    layer_spec(module).zero_outputs(module, [1, 4])
    after = module(x).detach()
    assert torch.equal(after.select(dim, 1), torch.zeros_like(after.select(dim, 1)))
    assert torch.equal(after.select(dim, 4), torch.zeros_like(after.select(dim, 4)))
    keep = [0, 2, 3, 5]
    assert torch.equal(after.index_select(dim % after.dim(), torch.tensor(keep)),
                       before.index_select(dim % after.dim(), torch.tensor(keep)))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_zero_outputs_gives_exact_zeros_whatever_the_input(training: bool) -> None:
    """Gamma and beta of the channel are zeroed, so its output is exactly 0 in train and eval mode
    even while the producing filter regrows (non-zero input), and the other channels are untouched."""
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
    gamma, beta = bn.weight.detach().clone(), bn.bias.detach().clone()
    layer_spec(bn).zero_outputs(bn, [2])
    assert float(bn.weight[2].detach()) == 0.0 and float(bn.bias[2].detach()) == 0.0
    keep = [0, 1, 3]
    assert torch.equal(bn.weight.detach()[keep], gamma[keep]) and torch.equal(bn.bias.detach()[keep], beta[keep])
    y = bn.train(training)(torch.randn(3, 4, 5, 5))
    assert torch.equal(y[:, 2], torch.zeros_like(y[:, 2]))


def test_soft_pruned_channels_do_not_regrow_at_full_strength() -> None:
    """One epoch after a soft step (same fit, so the optimizer's momentum carries on), the zeroed
    channels' BN outputs are still far weaker than the kept ones: they come back only as fast as
    their gamma is learned. (Keeping gamma with a zero filter gives a zero batch variance, and the
    ~300x amplified gradient regrows them at full strength in one step.)"""
    torch.manual_seed(0)
    model, t = ConvBN(), trainer()
    t.fit(model, 1)
    pruner = SoftFilterPruner(model, X, 0.5)
    gone: list[int] = []
    t.fit(model, 2, on_epoch_end=lambda epoch, m: gone.extend(chosen(pruner.step(), "bn2")) if epoch == 1 else None)
    seen: dict[str, torch.Tensor] = {}
    model.bn2.register_forward_hook(lambda m, i, o: seen.__setitem__("y", o.detach()))
    model.train()(torch.randn(16, 3, 16, 16))
    kept = [c for c in range(8) if c not in gone]
    assert len(gone) == 4
    assert float(seen["y"][:, gone].abs().mean()) < 0.1 * float(seen["y"][:, kept].abs().mean())


def test_channel_mixing_norms_have_no_zero_outputs() -> None:
    assert layer_spec(nn.GroupNorm(2, 4)).zero_outputs is None
    assert layer_spec(nn.LayerNorm(4)).zero_outputs is None


# ------------------------------------------------------------------------------------------ pruner
def test_step_zeroes_the_chosen_channels_outputs() -> None:
    """After a step the chosen channels' BN outputs are exactly 0 (eval and train mode) and the
    filters are zero, yet still full size and trainable."""
    torch.manual_seed(0)
    model = ConvBN()
    trainer().fit(model, 1)
    p = SoftFilterPruner(model, X, 0.5).step()
    gone = chosen(p, "bn2")
    assert len(gone) == 4 and chosen(p, "conv2") == gone
    assert model.conv2.weight.shape[0] == 8 and model.conv2.weight.requires_grad
    assert float(model.conv2.weight[gone].detach().abs().sum()) == 0.0
    seen: dict[str, torch.Tensor] = {}
    model.bn2.register_forward_hook(lambda m, i, o: seen.__setitem__("y", o.detach()))
    for training in (False, True):
        with torch.no_grad():
            model.train(training)(torch.randn(8, 3, 16, 16))
        assert torch.equal(seen["y"][:, gone], torch.zeros_like(seen["y"][:, gone])), training


def test_zeroed_filters_recover_with_training() -> None:
    """Soft, not hard: zeroed at the end of epoch 1, every chosen filter is non-zero again after
    epoch 2 of the same fit (the optimizer's momentum moves it off the ReLU's dead zero)."""
    torch.manual_seed(0)
    model = ConvBN()
    pruner = SoftFilterPruner(model, X, 0.5)
    zeroed: dict[str, list[int]] = {}

    def at_epoch_end(epoch: int, m: nn.Module) -> None:
        if epoch == 1:
            p = pruner.step()
            for name in ("conv1", "conv2", "conv3"):
                zeroed[name] = chosen(p, name)
                assert float(getattr(m, name).weight[zeroed[name]].detach().abs().sum()) == 0.0

    trainer().fit(model, 2, on_epoch_end=at_epoch_end)
    assert zeroed
    for name, gone in zeroed.items():
        assert all(float(getattr(model, name).weight[c].detach().abs().sum()) > 0 for c in gone), name


def test_finalize_removes_exactly_what_was_soft_pruned() -> None:
    """Soft-pruned and physically pruned models agree within 1e-5; finalize's zeroing changed nothing."""
    torch.manual_seed(0)
    model = ConvBN()
    pruner = SoftFilterPruner(model, X, 0.5)
    trainer().fit(model, 2, on_epoch_end=lambda epoch, m: pruner.step())
    soft_model = copy.deepcopy(model)
    pruner.finalize()
    assert (model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels) == (4, 4, 8)
    x = torch.randn(8, 3, 16, 16)
    assert torch.allclose(outputs(model, x), outputs(soft_model, x), atol=1e-5, rtol=0)
    assert pruner.final_change == 0.0
    assert len(pruner.changed) == 2


def test_finalize_zeroes_consumers_when_a_channel_cannot_be_silenced() -> None:
    """sigmoid(0) = 0.5 still reaches conv2: finalize zeroes conv2's input slices as the oracle does,
    records the change, and the pruned model then equals that zeroed reference."""
    torch.manual_seed(0)
    model = SigmoidGate()
    pruner = SoftFilterPruner(model, X, 0.5)
    removed = pruner.step().removed()
    soft_model = copy.deepcopy(model)
    pruner.finalize()
    assert model.conv1.out_channels == 4
    assert pruner.final_change is not None and pruner.final_change > 1e-4
    x = torch.randn(8, 3, 16, 16)
    want = outputs(zeroed_reference(soft_model, removed), x)
    assert torch.allclose(outputs(model, x), want, atol=1e-5, rtol=0)
    moved = float((outputs(soft_model, X) - outputs(model, X)).abs().max())
    assert pruner.final_change == pytest.approx(moved, abs=1e-6)  # the recorded change is the real one


def test_pruner_order_and_argument_errors() -> None:
    model = ConvBN()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
        SoftFilterPruner(model, X, 1.5)
    pruner = SoftFilterPruner(model, X, 0.5)
    with pytest.raises(ValueError, match="call step"):
        pruner.finalize()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    pruner.step()
    pruner.finalize()
    with pytest.raises(ValueError, match="already removed the channels"):
        pruner.step()
    with pytest.raises(ValueError, match="already called"):
        pruner.finalize()


def test_other_ranks_apply_rank_zeros_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP a rank other than 0 does not plan: it zeroes what rank 0 broadcast, even where its
    own weights would choose other channels."""
    torch.manual_seed(0)
    rank0, rank1 = ConvBN(), ConvBN()
    decision = surgeon.plan(rank0, X, 0.5, "l2").to_dict()
    own = chosen(surgeon.plan(rank1, X, 0.5, "l2"), "conv2")
    pruner = SoftFilterPruner(rank1, X, 0.5)
    sent: list = []
    monkeypatch.setattr(soft, "is_distributed", lambda: True)
    monkeypatch.setattr(soft, "dist", types.SimpleNamespace(get_rank=lambda: 1))
    monkeypatch.setattr(soft, "broadcast_object", lambda obj: sent.append(obj) or (decision, None))
    gone = chosen(pruner.step(), "conv2")
    assert sent == [(None, None)]  # rank 1 made no plan of its own
    assert gone == chosen(surgeon.load_plan(rank0, X, decision), "conv2") and gone != own
    assert float(rank1.conv2.weight[gone].detach().abs().sum()) == 0.0
    monkeypatch.setattr(soft, "broadcast_object", lambda obj: (None, "NothingToPrune: every group is frozen"))
    with pytest.raises(RuntimeError, match="rank 0, which decides for every rank, could not plan.*NothingToPrune"):
        pruner.step()  # rank 0 failed: this rank raises too instead of waiting for a decision


# ---------------------------------------------------------------------------------------- workflow
def test_soft_filter_pruning_end_to_end() -> None:
    torch.manual_seed(0)
    model = ConvBN()
    dense = surgeon.count(model, X).params
    out = soft_filter_pruning(model, X, trainer(), 0.5, epochs=2)
    assert out.model is model and out.method == "soft-filter" and out.epochs == 2
    assert out.steps[0].params == surgeon.count(model, X).params < dense
    assert 0.0 <= out.accuracy <= 1.0
    assert out.notes["final_zeroing_change"] == 0.0 and len(out.notes["changed"]) == 2


def test_soft_filter_pruning_refuses_zero_epochs_unchanged() -> None:
    model = ConvBN()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        soft_filter_pruning(model, X, trainer(), 0.5, epochs=0)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
