"""ignore= keeps a module's output channels (its inputs may shrink, as Torch-Pruning's
ignored_layers); freeze= keeps every tensor of a module; the model's outputs need neither."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import surgeon
import surgeon_models as zoo
from surgeon import NothingToPrune

import patterns as P  # noqa: E402

X = torch.randn(4, 8)


class MLP(nn.Module):
    """fc1 (8 -> 32) -> fc2 (32 -> 32) -> fc3 (32 -> 32) -> head (32 -> 4): three prunable groups."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))


class ResMLP(nn.Module):
    """stem -> x + block(x) -> fc: a single group (the residual stream), which fc reads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.block, self.fc = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.fc(h + self.block(torch.relu(h)))


def linear_shapes(m: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (l.in_features, l.out_features) for n, l in m.named_modules() if isinstance(l, nn.Linear)}


@pytest.mark.parametrize("key", ["module", "name"])
def test_ignore_keeps_the_outputs_and_lets_the_inputs_shrink(check, key):
    m = MLP()
    plan = check(m, X, 0.5, ignore=[m.fc2 if key == "module" else "fc2"])
    assert linear_shapes(m) == {"fc1": (8, 16), "fc2": (16, 32), "fc3": (32, 16), "head": (16, 4)}
    assert "holds the output channels of ignored module 'fc2'" in plan.summary()


def test_freeze_keeps_every_tensor(check):
    m = MLP()
    saved = {k: v.clone() for k, v in m.fc2.state_dict().items()}
    plan = check(m, X, 0.5, freeze=[m.fc2])
    assert all(torch.equal(v, saved[k]) for k, v in m.fc2.state_dict().items())
    assert linear_shapes(m) == {"fc1": (8, 32), "fc2": (32, 32), "fc3": (32, 16), "head": (16, 4)}
    assert "holds a parameter of frozen module 'fc2'" in plan.summary()


def test_ignore_of_the_classifier_on_a_residual_mlp_prunes():
    """The Torch-Pruning idiom ignored_layers=[fc]: the residual stream fc reads still shrinks
    (fc 16 -> 8 inputs); the strict meaning (freeze) leaves nothing to prune."""
    m = ResMLP()
    surgeon.plan(m, X, 0.5, ignore=[m.fc]).apply(verify=True)
    assert linear_shapes(m) == {"stem": (8, 8), "block": (8, 8), "fc": (8, 4)}
    with pytest.raises(NothingToPrune, match="holds a parameter of frozen module 'fc'"):
        surgeon.plan(ResMLP(), X, 0.5, freeze=["fc"])


def test_ignore_agrees_with_torch_pruning_ignored_layers():
    """The peer's meaning, on a hidden layer: same parameter count at local L1 50%."""
    tp = pytest.importorskip("torch_pruning")
    ours, theirs = MLP(), MLP()
    surgeon.prune(ours, X, 0.5, ignore=[ours.fc2])
    tp.pruner.MagnitudePruner(theirs, X, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                              ignored_layers=[theirs.fc2, theirs.head]).step()
    assert linear_shapes(ours) == linear_shapes(theirs)


def test_model_outputs_are_kept_without_being_asked():
    m = MLP()
    surgeon.prune(m, X, 0.5)
    assert m.head.out_features == 4 and m(X).shape == (4, 4)


def test_ignore_on_a_norm_keeps_its_channels_and_its_producer():
    """A BatchNorm's input and output are one group: ignoring it keeps the conv before it whole,
    while the next conv's outputs still shrink."""
    torch.manual_seed(0)
    m = zoo.randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                                       nn.ReLU(), nn.Conv2d(8, 2, 1))).eval()
    surgeon.plan(m, torch.randn(2, 3, 12, 12), 0.5, ignore=["1"]).apply(verify=True)
    assert (m[0].out_channels, m[1].num_features, m[3].in_channels, m[3].out_channels) == (8, 8, 8, 4)


def test_ignore_on_a_container_keeps_every_layer_output_in_it(check):
    m = zoo.get("resnet18").eval()
    x = torch.randn(1, 3, 32, 32)
    check(m, x, 0.5, ignore=["layer2"])
    for name, mod in m.layer2.named_modules():
        if isinstance(mod, nn.Conv2d):
            assert mod.out_channels == 128, name
    assert m.layer1[0].conv1.out_channels == 32 and m.layer3[0].conv1.out_channels == 128


def test_ignore_of_a_layer_with_shrinking_inputs_on_resnet():
    """resnet18's layer1.0.conv1 keeps its 64 filters; its input (the layer1 residual stream) goes
    to 32, while freeze keeps the whole weight."""
    m = zoo.get("resnet18").eval()
    x = torch.randn(1, 3, 32, 32)
    plan = surgeon.plan(m, x, ratio=0.5, ignore=[m.layer1[0].conv1])
    cut = plan.removed()["layer1.0.conv1"]
    assert cut["out"] == [] and len(cut["in"]) == 32
    plan.apply()
    assert m.layer1[0].conv1.weight.shape == (64, 32, 3, 3) and m.layer1[0].bn1.num_features == 64
    m = zoo.get("resnet18").eval()
    weight = m.layer1[0].conv1.weight.clone()
    plan = surgeon.plan(m, x, ratio=0.5, freeze=[m.layer1[0].conv1])
    assert "layer1.0.conv1" not in plan.removed()
    plan.apply()
    assert torch.equal(m.layer1[0].conv1.weight, weight)


@pytest.mark.filterwarnings("ignore::surgeon.FrozenGroupWarning")  # F.conv2d's kernel dims
def test_ignore_of_a_functionally_used_module_falls_back_to_freeze():
    """timm's Conv2dSame calls F.conv2d with its own weight: no layer call says which side is its
    output, so every group touching it is kept whole, with a warning that says so."""
    torch.manual_seed(0)
    m = nn.Sequential(P.ConvSame(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(2, 3, 12, 12)
    with pytest.warns(UserWarning, match=r"ignored module\(s\) \['0'\] are not called as layers.*as with freeze="):
        plan = surgeon.plan(m, x, 0.5, ignore=["0"])
    plan.apply(verify=True)
    assert (m[0].out_channels, m[2].in_channels, m[2].out_channels) == (8, 8, 4)


def test_freeze_must_name_a_submodule():
    m = MLP()
    with pytest.raises(ValueError, match=r"freeze names 'fc', which is not a module of the model; did you mean one "
                       r"of \['fc1', 'fc2', 'fc3'\]\?"):
        surgeon.plan(m, X, freeze=["fc"])
    with pytest.raises(TypeError, match="freeze entries must be modules or qualified names"):
        surgeon.plan(m, X, freeze=[3])
