"""Lottery tickets (surgeon.train.lottery): rewinding restores survivors exactly, masks stay, bad
input is refused before anything changes."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surgeon
import surgeon_models as zoo
from surgeon.indexmap import Pos
from surgeon.train.init import masked_tensors
from surgeon.train.lottery import _check_rewound, lottery_ticket
from surgeon.train.loop import Trainer, sgd

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
STEPS_PER_EPOCH = 4  # 64 samples, batches of 16


def make_trainer(shuffle: bool = True, scheduler=None) -> Trainer:
    """64 random 3x16x16 samples of 10 classes, batches of 16 (4 optimizer steps per epoch)."""
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g))
    train = DataLoader(data, batch_size=16, shuffle=shuffle, generator=torch.Generator().manual_seed(2))
    return Trainer(train, DataLoader(data, batch_size=64), optimizer=sgd(lr=0.05), scheduler=scheduler,
                   device="cpu", progress=False)


def make_model(seed: int = 0) -> nn.Module:
    """TinyNet (conv-BN x2, residual add, flatten-Linear) with non-trivial BN parameters and statistics."""
    torch.manual_seed(seed)
    return zoo.randomize_bn(zoo.get("tinynet"), seed=seed)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def expected_survivors(model: nn.Module, recorded: dict[str, torch.Tensor],
                       removed: dict[str, dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The recorded tensors indexed by the kept indices, derived from ``plan.removed()`` (per
    module "out" / "in" indices) and each layer's own layout: a Conv / Linear weight is
    (out, in, ...), its bias and a BatchNorm's tensors are (out,)."""
    out = {}
    for name, t in recorded.items():
        owner, _, attr = name.rpartition(".")
        cut = removed.get(owner, {"out": [], "in": []})
        layer = model.get_submodule(owner)
        dims = {}  # dim -> removed indices
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and attr == "weight":
            dims = {0: cut["out"], 1: cut["in"]}
        elif attr != "num_batches_tracked":  # biases, BN weight / bias / running statistics
            dims = {0: cut["out"]}
        for dim, gone in dims.items():
            keep = [i for i in range(t.shape[dim]) if i not in set(gone)]
            t = t[(slice(None),) * dim + (torch.tensor(keep),)]
        out[name] = t
    return out


def test_structured_rewind_to_init_is_exact() -> None:
    """Survivors, BN statistics included, equal the initial values; the model is physically smaller."""
    model, trainer = make_model(), make_trainer()
    recorded = snapshot(model)
    outcome = lottery_ticket(model, X, trainer, 0.5, epochs=1, retrain_epochs=0)
    removed = outcome.notes["removed"]
    assert outcome.model is model and removed, "nothing was pruned"
    assert sum(p.numel() for p in model.parameters()) < sum(t.numel() for k, t in recorded.items()
                                                            if "running" not in k and "num_batches" not in k)
    want = expected_survivors(model, recorded, removed)
    got = model.state_dict()
    for name in recorded:
        assert torch.equal(got[name], want[name]), name
    assert outcome.epochs == 1 and outcome.steps[0].epochs == 0
    assert 0.0 <= outcome.notes["accuracy_dense"] <= 1.0


def test_structured_late_rewind_is_exact() -> None:
    """rewind=k: survivors equal an independent run's weights after k optimizer steps."""
    model = make_model()
    reference = copy.deepcopy(model)
    make_trainer(shuffle=False).fit(reference, 1)  # exactly STEPS_PER_EPOCH steps
    recorded = snapshot(reference)
    assert not torch.equal(recorded["bn1.running_mean"], model.state_dict()["bn1.running_mean"])
    outcome = lottery_ticket(model, X, make_trainer(shuffle=False), 0.5, epochs=2, retrain_epochs=0,
                             rewind=STEPS_PER_EPOCH)
    want = expected_survivors(model, recorded, outcome.notes["removed"])
    got = model.state_dict()
    for name in recorded:
        assert torch.equal(got[name], want[name]), name
    assert outcome.epochs == 2 and outcome.notes["rewind"] == STEPS_PER_EPOCH


def test_rewound_check_fires() -> None:
    """The post-condition inside lottery_ticket rejects a survivor that is off by one ulp."""
    model = make_model()
    recorded = snapshot(model)
    found = surgeon.plan(model, X, ratio=0.5)
    found.apply()
    removed = found.removed_positions()
    _check_rewound(model, recorded, removed)  # the honest model passes
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = torch.nextafter(model.conv2.weight[0, 0, 0, 0], torch.tensor(9.0))
    with pytest.raises(AssertionError, match="conv2.weight"):
        _check_rewound(model, recorded, removed)
    assert Pos("p", "conv2.weight", 1) in removed


def test_structured_retrains_and_reports() -> None:
    """The retrained ticket: fewer parameters and MACs than before, every epoch counted."""
    model = make_model()
    outcome = lottery_ticket(model, X, make_trainer(), 0.5, epochs=1, retrain_epochs=1, scope="local")
    step = outcome.steps[0]
    assert outcome.method == "lottery" and outcome.epochs == 2 and step.epochs == 1
    assert step.params == sum(p.numel() for p in model.parameters()) < outcome.notes["before"].params
    assert step.macs < outcome.notes["before"].macs
    assert 0.0 <= outcome.accuracy <= 1.0 and 0.0 <= step.accuracy_pruned <= 1.0
    assert surgeon.load_plan(make_model(), X, outcome.notes["plan"]).removed() == outcome.notes["removed"]


def test_unstructured_rewinds_survivors() -> None:
    """structured=False: global magnitude masks; survivors hold their initial values, the rest zero."""
    model = make_model()
    recorded = snapshot(model)
    outcome = lottery_ticket(model, X, make_trainer(), 0.8, epochs=1, retrain_epochs=0, structured=False)
    layers = [(n, m) for n, m in model.named_modules() if list(masked_tensors(m))]
    assert {n for n, _ in layers} == {"conv1", "conv2", "fc"}
    for name, m in layers:
        keep = m.weight_mask.bool()
        assert torch.equal(m.weight_orig[keep], recorded[f"{name}.weight"][keep]), name
        assert torch.equal(m.weight[~keep], torch.zeros_like(m.weight[~keep])), name
    for key in ("bn1.running_mean", "bn2.weight", "fc.bias"):
        assert torch.equal(model.state_dict()[key], recorded[key])
    assert outcome.notes["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert outcome.steps[0].params < outcome.notes["before"].params


def test_unstructured_masks_stay_during_retraining() -> None:
    """Pruned weights stay zero through retraining while the survivors train."""
    model = make_model()
    recorded = snapshot(model)
    outcome = lottery_ticket(model, X, make_trainer(), 0.8, epochs=1, retrain_epochs=1, structured=False)
    model(X)  # the forward pre-hook recomputes weight = weight_orig * weight_mask
    assert surgeon.sparsity(model) == pytest.approx(0.8, abs=0.01)
    for name in ("conv1", "conv2", "fc"):
        m = model.get_submodule(name)
        keep = m.weight_mask.bool()
        assert int((m.weight[~keep] != 0).sum()) == 0, name
        assert not torch.equal(m.weight[keep], recorded[f"{name}.weight"][keep]), f"{name} did not train"
    assert outcome.epochs == 2


class Unsized:
    """An iterable of batches without a length: the steps an epoch takes are known only afterwards."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ratio=1.5), ValueError, r"ratio must be a number in \[0, 1\)"),
    (dict(ratio=-0.1), ValueError, r"ratio must be a number in \[0, 1\)"),
    (dict(ratio=1.0, structured=False), ValueError, r"ratio must be a number in \[0, 1\)"),
    (dict(epochs=-1), ValueError, "epochs must be a non-negative integer, got -1"),
    (dict(retrain_epochs=-2), ValueError, "retrain_epochs must be a non-negative integer"),
    (dict(rewind=100), ValueError, r"rewind=100 is past the end .* 4 optimizer steps"),
    (dict(rewind="late"), ValueError, "rewind must be 'init' or a non-negative number"),
    (dict(rewind=True), ValueError, "rewind must be 'init'"),
    (dict(structured=False, round_to=8), TypeError, "takes modules; got round_to"),
    (dict(structured=False, criterion="fpgm"), ValueError, "unknown criterion"),
    (dict(criterion="nope"), ValueError, "unknown criterion 'nope'"),
])
def test_bad_input_changes_nothing(kwargs: dict, error: type, match: str) -> None:
    model = make_model()
    before = snapshot(model)
    args = dict(ratio=0.5, epochs=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        lottery_ticket(model, X, make_trainer(), args.pop("ratio"), **args)
    assert same_state(model, before)


def test_rewind_past_an_unsized_loader_restores_the_model() -> None:
    """Known only after training: the error comes then, and the model gets its initial state back."""
    model = make_model()
    before = snapshot(model)
    trainer = make_trainer()
    trainer.train = Unsized(list(trainer.train))
    with pytest.raises(ValueError, match="took 4 optimizer steps; rewind to at most 4"):
        lottery_ticket(model, X, trainer, 0.5, epochs=1, rewind=5)
    assert same_state(model, before)


def test_masked_model_refused() -> None:
    model = make_model()
    surgeon.mask(model, 0.5)
    with pytest.raises(ValueError, match="remove_masks"):
        lottery_ticket(model, X, make_trainer(), 0.5, epochs=1)


def test_expected_survivors_is_not_vacuous() -> None:
    """The test oracle really drops indices (so the exactness tests compare what they claim)."""
    model = make_model()
    recorded = snapshot(model)
    found = surgeon.plan(model, X, ratio=0.5)
    removed = found.removed()
    found.apply()
    want = expected_survivors(model, recorded, removed)
    assert want["conv2.weight"].shape == model.conv2.weight.shape == (4, 4, 3, 3)
    assert want["fc.weight"].shape == model.fc.weight.shape
    assert np.prod(want["bn1.running_var"].shape) == 4
