"""Layer-wise least-squares reconstruction after a prune (``surgeon.train.reconstruct``)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surgeon
from surgeon.train import Trainer, one_shot, reconstruct


def _redundant_net() -> nn.Module:
    """conv1's filters 4..7 are half of filters 0..3, so after ReLU their channels are exactly half
    of channels 0..3: a consumer can do without them if its weights are re-fitted."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight[4:] = 0.5 * net[0].weight[:4]
        net[0].bias[4:] = 0.5 * net[0].bias[:4]
    return net.eval()


def _data(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)),
                      batch_size=16)


def test_reconstruction_recovers_linearly_redundant_channels() -> None:
    net, x = _redundant_net(), torch.randn(4, 3, 8, 8)
    reference = copy.deepcopy(net)
    plan = surgeon.plan(net, x, ratio=0.5, ratios={"2": 0.0})  # L1 removes the half-size filters 4..7
    assert plan.removed()["0"]["out"] == [4, 5, 6, 7]
    plan.apply(verify=True)
    with torch.no_grad():
        before = (net(x) - reference(x)).abs().max().item()
    done = reconstruct(net, reference, plan.removed(), _data(), batches=4, positions=64, ridge=1e-8)
    with torch.no_grad():
        after = (net(x) - reference(x)).abs().max().item()
    assert done == ["2"]
    assert before > 1e-2 and after < 1e-4, (before, after)


def test_reconstruction_leaves_the_reference_unchanged() -> None:
    net, x = _redundant_net(), torch.randn(2, 3, 8, 8)
    reference = copy.deepcopy(net)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    plan = surgeon.plan(net, x, ratio=0.5)
    plan.apply()
    reconstruct(net, reference, plan.removed(), _data(), batches=2)
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def test_one_shot_with_reconstruction_reports_it() -> None:
    net = _redundant_net()
    trainer = Trainer(_data(), _data(32), progress=False, device="cpu")
    out = one_shot(net, torch.randn(1, 3, 8, 8), trainer, 0.5, reconstruct=2)
    assert out.notes["reconstruct_batches"] == 2 and out.accuracy is not None


@pytest.mark.parametrize("bad, match", [({"batches": 0}, "batches"), ({"data": []}, "no batches")])
def test_bad_input_is_refused(bad, match) -> None:
    net, x = _redundant_net(), torch.randn(2, 3, 8, 8)
    reference = copy.deepcopy(net)
    plan = surgeon.plan(net, x, ratio=0.5)
    plan.apply()
    kwargs = {"data": _data(), "batches": 2, **bad}
    with pytest.raises(ValueError, match=match):
        reconstruct(net, reference, plan.removed(), **kwargs)
