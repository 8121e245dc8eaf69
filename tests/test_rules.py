"""Per-op rules on tiny modules: each model exercises one op (its docstring says which); the test
checks the grouping that op must produce and the surgical equivalence of a prune through it."""
from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon import FrozenGroupWarning


def cbr(i: int, o: int, **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, **kw), nn.BatchNorm2d(o), nn.ReLU())


class Chain(nn.Module):
    """conv -> BN -> ReLU -> conv: the basic producer/consumer pair."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.a(x))


class Depthwise(nn.Module):
    """depthwise conv (groups == channels) couples its input and output channels one to one."""

    def __init__(self, mult: int = 1):
        super().__init__()
        self.a = cbr(3, 8)
        self.dw = nn.Conv2d(8, 8 * mult, 3, padding=1, groups=8)
        self.b = nn.Conv2d(8 * mult, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.dw(self.a(x))))


class Grouped(nn.Module):
    """grouped conv (groups=2, 4 channels per group): channel j of each group goes together."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.g(self.a(x))))


class Conv1d3d(nn.Module):
    """Conv1d and Conv3d with BatchNorm1d / BatchNorm3d."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1, self.c2 = nn.Conv1d(3, 8, 3), nn.BatchNorm1d(8), nn.Conv1d(8, 4, 1)
        self.d1, self.m1, self.d2 = nn.Conv3d(2, 6, 3), nn.BatchNorm3d(6), nn.Conv3d(6, 2, 1)

    def forward(self, x, v):
        return self.c2(F.relu(self.n1(self.c1(x)))), self.d2(F.relu(self.m1(self.d1(v))))


class Transposed(nn.Module):
    """ConvTranspose2d: weight is (in, out, k, k), so its dims are swapped relative to Conv2d."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.bn(self.up(self.a(x)))))


class FlattenLinear(nn.Module):
    """flatten -> Linear: channel c of C x H x W owns features [c*H*W, (c+1)*H*W)."""

    def __init__(self, how: str = "flatten"):
        super().__init__()
        self.how = how
        self.a = cbr(3, 8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(32, 16), nn.Linear(16, 5)

    def forward(self, x):
        y = self.pool(self.a(x))
        if self.how == "flatten":
            y = torch.flatten(y, 1)
        elif self.how == "view":
            y = y.view(y.size(0), -1)
        else:
            y = y.reshape(-1, 32)  # hard-coded size: must freeze
        return self.fc2(F.relu(self.fc1(y)))


class Residual(nn.Module):
    """residual add via operator, torch.add and Tensor.add: both branches share one group."""

    def __init__(self, kind: str = "op"):
        super().__init__()
        self.kind = kind
        self.a, self.b, self.c = cbr(3, 8), cbr(8, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        z = self.b(y)
        s = {"op": lambda: y + z, "fn": lambda: torch.add(y, z), "method": lambda: y.add(z),
             "sub": lambda: y - z, "mul": lambda: torch.mul(y, z), "div": lambda: y / (z.abs() + 1)}[self.kind]()
        return self.c(s)


class Concat(nn.Module):
    """torch.cat along channels: each input lands at its offset in the consumer's input."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 6), cbr(3, 4), nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


class Chunk(nn.Module):
    """x.chunk(2, 1): both halves must lose the same local channels."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.b, self.c = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        p, q = self.a(x).chunk(2, dim=1)
        return self.b(p) + self.c(q)


class Split(nn.Module):
    """torch.split with hard-coded sizes: pruning would move the split point, so it freezes."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.b, self.c = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        p, q = torch.split(self.a(x), 4, dim=1)
        return self.b(p) + self.c(q)


class SE(nn.Module):
    """squeeze-and-excitation: x * sigmoid(fc(pool(x))) gates channel-wise."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        b, c, _, _ = y.size()
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3)))))).view(b, c, 1, 1)
        return self.b(y * s)


class NormsAct(nn.Module):
    """GroupNorm (whole groups), InstanceNorm, PReLU(C), Dropout, interpolate, max pool."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.act = nn.PReLU(8)
        self.drop = nn.Dropout(0.1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.silu(self.gn(self.a(x)))
        y = self.drop(self.act(self.inorm(self.b(y))))
        y = F.interpolate(F.max_pool2d(y, 2), scale_factor=2.0, mode="nearest")
        return self.c(y)


class Shared(nn.Module):
    """one conv called twice (shared weights): both calls' channels are coupled."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        return self.c(F.relu(self.shared(F.relu(self.shared(y)))))


class LayerScale(nn.Module):
    """a parameter used directly in forward (layer scale gamma) shrinks with its channels."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(self.gamma * self.a(x))


class ChannelMean(nn.Module):
    """mean over the channel dim: removing a channel is not a zeroing there, so it must freeze."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.b = cbr(8, 8)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        return self.c(self.b(y)) + y.mean(1, keepdim=True)


class Unknown(nn.Module):
    """an op the registry does not know (torch.cumsum along channels) freezes its channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 8), cbr(8, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.cumsum(self.b(self.a(x)), 1))


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("make, channels", [
    pytest.param(Chain, {"a.0.weight": 8}, id="chain"),
    pytest.param(Depthwise, {"a.0.weight": 8}, id="depthwise"),
    pytest.param(partial(Depthwise, mult=2), {"a.0.weight": 8}, id="depthwise-mult2"),
    pytest.param(Grouped, {"a.0.weight": 4, "g.weight": 4}, id="grouped"),
    pytest.param(Transposed, {"a.0.weight": 8, "up.weight:0": 8, "up.weight:1": 6}, id="transposed"),
    pytest.param(FlattenLinear, {"a.0.weight": 8, "fc1.weight": 16}, id="flatten-linear"),
    pytest.param(partial(FlattenLinear, "view"), {"a.0.weight": 8}, id="view-linear"),
    *(pytest.param(partial(Residual, kind), {"a.0.weight": 8}, id=f"residual-{kind}")
      for kind in ("op", "fn", "method", "sub", "mul", "div")),
    pytest.param(Concat, {"a.0.weight": 10}, id="concat"),
    pytest.param(Chunk, {"a.0.weight": 4}, id="chunk"),
    pytest.param(SE, {"a.0.weight": 8, "fc1.weight": 4}, id="se"),
    pytest.param(NormsAct, {"a.weight": 4, "b.weight": 8}, id="norms-act"),
    pytest.param(Shared, {"a.0.weight": 8, "shared.weight": 8}, id="shared"),
    pytest.param(LayerScale, {"a.0.weight": 8}, id="layer-scale"),
])
def test_rule_groups_and_equivalence(make, channels, check):
    model = make()  # built per test: check() prunes it in place
    graph = surgeon.trace(model, X)
    by_param = {f"{p.ref}:{p.dim}": g for g in graph.groups for p in g.params}
    for ref, n in channels.items():
        g = by_param.get(ref if ":" in ref else ref + ":0")
        assert g is not None, f"{ref} is in no group"
        assert g.n == n and g.prunable, f"{ref}: expected {n} prunable channels, got {g}"
    check(model, X, 0.5)


def test_depthwise_multiplier_removes_whole_groups(check):
    m = Depthwise(mult=2)
    check(m, X, 0.5)
    assert m.dw.groups == m.dw.in_channels == 4 and m.dw.out_channels == 8


def test_grouped_conv_keeps_groups_equal(check):
    m = Grouped()
    plan = check(m, X, 0.5)
    assert m.g.groups == 2 and m.g.in_channels % 2 == 0 and m.g.out_channels % 2 == 0
    removed_in = plan.removed()["g"]["in"]
    assert [c % 4 for c in removed_in[: len(removed_in) // 2]] == [c % 4 for c in removed_in[len(removed_in) // 2:]]


def test_conv1d_conv3d(check):
    v = torch.randn(2, 2, 5, 5, 5)
    x1 = torch.randn(2, 3, 12)
    m = Conv1d3d()
    check(m, (x1, v), 0.5)
    assert m.c1.out_channels == 4 and m.n1.num_features == 4 and m.d1.out_channels == 3


def test_group_norm_removes_whole_groups(check):
    m = NormsAct()
    check(m, X, 0.5)
    assert m.gn.num_groups == 2 and m.gn.num_channels == 4 and m.gn.weight.shape == (4,)
    assert m.act.num_parameters == m.b.out_channels == m.inorm.num_features


def test_flatten_maps_blocks_of_features(check):
    m = FlattenLinear()
    plan = check(m, X, 0.5)
    removed = plan.removed()
    ch = removed["a.0"]["out"]
    assert removed["fc1"]["in"] == sorted(c * 4 + k for c in ch for k in range(4))


def test_concat_offsets(check):
    m = Concat()
    plan = check(m, X, 0.5)
    r = plan.removed()
    none = {"out": []}  # L1 may take every removed channel from one branch
    assert r["c"]["in"] == sorted(r.get("a.0", none)["out"] + [6 + c for c in r.get("b.0", none)["out"]])


@pytest.mark.parametrize("make, op", [
    pytest.param(partial(FlattenLinear, "hard"), "hard-coded size 32", id="hard-coded-view"),
    pytest.param(Split, "hard-coded split sizes", id="split"),
    pytest.param(ChannelMean, "reduced over by .mean", id="channel-mean"),
    pytest.param(Unknown, "unsupported op torch.cumsum", id="unknown-op"),
])
def test_frozen_with_warning_naming_the_op(make, op):
    with pytest.warns(FrozenGroupWarning, match=op):
        graph = surgeon.trace(make(), X)
    frozen = [g for g in graph.groups if not g.prunable and op in g.frozen_reason()]
    assert frozen, graph.summary()


def test_frozen_group_is_not_pruned(check):
    m = Unknown()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrozenGroupWarning)
        plan = check(m, X, 0.5)
    assert plan.removed()["b.0"]["out"] == [] and m.b[0].out_channels == 8
    assert m.a[0].out_channels == 4


def test_layernorm_over_channels_prunes_with_shapes_consistent():
    class LN(nn.Module):
        """permute -> LayerNorm -> Linear (ConvNeXt style): LN mixes channels."""

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.ln = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 8)
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.a(x).permute(0, 2, 3, 1)
            y = self.fc2(F.gelu(self.fc(self.ln(y)))).permute(0, 3, 1, 2)
            return self.c(y)

    m = LN().eval()
    graph = surgeon.trace(m, X)
    assert any(g.mixing and g.prunable for g in graph.groups)
    surgeon.prune(m, X, 0.5)
    assert m.ln.normalized_shape == (4,) and m.fc.in_features == 4 and m.a.out_channels == 4
    assert m(X).shape == (2, 2, 8, 8)


def test_layernorm_subclass_with_own_forward_is_synced():
    """A LayerNorm subclass that calls F.layer_norm itself (torchvision's LayerNorm2d): traced
    through, its weight / bias are cut and its normalized_shape attribute follows."""

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.n, self.b = nn.Conv2d(3, 8, 3, padding=1), LayerNorm2d(8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.n(self.a(x)))

    m = Net().eval()
    graph = surgeon.trace(m, X)
    assert any(g.mixing and g.prunable and g.n == 8 for g in graph.groups)
    surgeon.prune(m, X, 0.5)
    assert m.n.normalized_shape == (4,) and m.n.weight.shape == (4,) and m(X).shape == (2, 2, 8, 8)


def test_permute_dims_from_a_list_attribute(check):
    class Permute(nn.Module):
        """torchvision's Permute: dims kept in a list attribute (read as attribute ints)."""

        def __init__(self, dims):
            super().__init__()
            self.dims = dims

        def forward(self, x):
            return torch.permute(x, self.dims)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.to_last, self.fc = nn.Conv2d(3, 8, 1), Permute([0, 2, 3, 1]), nn.Linear(8, 8)
            self.back, self.c = Permute([0, 3, 1, 2]), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(self.back(self.fc(self.to_last(self.a(x)))))

    m = Net()
    check(m, X, 0.5)
    assert m.a.out_channels == 4 and m.fc.in_features == 4 and m.to_last.dims == [0, 2, 3, 1]
