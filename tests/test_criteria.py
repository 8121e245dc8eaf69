"""Criteria: each one removes what it should on hand-built weights; reductions, sides, custom
callables, the BatchNorm L1 regulariser, and bad input."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon import criteria
from surgeon.criteria import accumulate_gradients
from surgeon.regularize import bn_l1_penalty, bn_l1_subgradient_, bn_scales

X = torch.randn(2, 3, 5, 5)


class ConvBnConv(nn.Module):
    """conv1 -> bn -> relu -> conv2 (the model output): one prunable group, conv1's 4 filters,
    coupled with the BN's entries and conv2's input kernels."""

    def __init__(self, filters: list[list[float]], gamma: list[float] | None = None,
                 consumer: torch.Tensor | None = None) -> None:
        super().__init__()
        n, cin = len(filters), len(filters[0])
        self.conv1 = nn.Conv2d(cin, n, 1, bias=False)
        self.bn = nn.BatchNorm2d(n)
        self.conv2 = nn.Conv2d(n, 2, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor(filters).view(n, cin, 1, 1))
            if gamma is not None:
                self.bn.weight.copy_(torch.tensor(gamma))
            self.conv2.weight.copy_(torch.ones(2, n, 1, 1) if consumer is None else consumer.view(2, n, 1, 1))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn(self.conv1(x))))


def removed_filters(model: nn.Module, x: torch.Tensor = X, ratio: float = 0.25, **kw) -> list[int]:
    return surgeon.plan(model, x, ratio=ratio, **kw).removed()["conv1"]["out"]


# --------------------------------------------------------------------------- each criterion's pick
L1_L2 = [[1.0, 1.0, 1.0], [1.8, 0.0, 0.0], [3.0, 3.0, 3.0], [4.0, 4.0, 4.0]]


def test_l1_and_l2_disagree_as_they_should():
    """Filter 0 = (1, 1, 1): L1 3, L2 1.73; filter 1 = (1.8, 0, 0): L1 1.8, L2 1.8."""
    assert removed_filters(ConvBnConv(L1_L2), criterion="l1") == [1]
    assert removed_filters(ConvBnConv(L1_L2), criterion="l2") == [0]


def test_fpgm_removes_the_filter_at_the_geometric_median():
    """Filters v, v +- a, v +- b and a tiny one: v is the median (the others stand in for it),
    although its norm is large; L1 removes the tiny one instead."""
    v, a, b = np.array([5.0, 5.0, 5.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    filters = [v + a, v - a, v, v + b, v - b, np.array([0.1, 0, 0])]
    m = ConvBnConv([f.tolist() for f in filters])
    assert removed_filters(m, ratio=1 / 6, criterion="fpgm") == [2]
    assert removed_filters(m, ratio=1 / 6, criterion="l1") == [5]


def test_fpgm_matches_the_definition():
    """score_i = sum_j ||F_i - F_j||_2, computed here by brute force."""
    torch.manual_seed(0)
    w = torch.randn(6, 3)
    m = ConvBnConv(w.tolist())
    g = surgeon.trace(m, X).prunable_groups()[0]
    got = criteria.fpgm(g, {"conv1.weight": m.conv1.weight}, reduction="first")
    w = m.conv1.weight.detach().double().view(6, 3)
    want = [sum(float((w[i] - w[j]).norm()) for j in range(6)) for i in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_bn_scale_removes_the_channel_whose_gamma_is_zero():
    filters = [[1.0, 0, 0], [9.0, 9.0, 9.0], [2.0, 0, 0], [3.0, 0, 0]]
    m = ConvBnConv(filters, gamma=[1.0, 0.0, 0.5, 2.0])
    assert removed_filters(m, criterion="bn_scale") == [1]
    assert removed_filters(m, criterion="l1", reduction="first") == [0]


def test_bn_scale_keeps_groups_without_batchnorm_whole():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.ReLU(),
                      nn.Conv2d(6, 2, 1)).eval()
    p = surgeon.plan(m, X, criterion="bn_scale")
    assert [c.group.layers[0] for c in p.cuts] == ["2"]
    assert any("criterion bn_scale cannot score it" in why for why in p.skipped.values())
    assert "0" not in p.removed()


def taylor_data(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 2, 5, 5, generator=g)) for _ in range(n)]


def test_taylor_removes_the_channel_whose_gradient_is_zero():
    """conv2 ignores channel 2 (zero input kernels), so the loss has zero gradient through it,
    although channel 2 has the largest filter; L1 on conv1 alone would remove channel 0."""
    filters = [[0.5, 0.2, 0.1], [1.0, -1.0, 0.5], [5.0, 5.0, 5.0], [-1.0, 1.0, 1.0]]
    consumer = torch.tensor([[1.0, -1.0, 0.0, 1.0], [0.5, 1.0, 0.0, -1.0]])
    m = ConvBnConv(filters, consumer=consumer)
    assert removed_filters(m, criterion="taylor", data=taylor_data(), loss_fn=nn.MSELoss()) == [2]
    assert removed_filters(m, criterion="l1", reduction="first") == [0]


def test_taylor_score_is_abs_sum_of_w_times_grad():
    m = ConvBnConv([[0.5, 0.2, 0.1], [1.0, -1.0, 0.5], [2.0, 1.0, 0.0], [-1.0, 1.0, 1.0]])
    data = taylor_data(2)
    grads = accumulate_gradients(m, data, nn.MSELoss())
    g = surgeon.trace(m, X).prunable_groups()[0]
    got = criteria.taylor(g, {"conv1.weight": m.conv1.weight}, reduction="first", grads=grads)
    m.zero_grad()
    sum(nn.MSELoss()(m(x), y) for x, y in data).backward()  # eval mode: BN statistics frozen
    want = (m.conv1.weight * m.conv1.weight.grad / 2).sum(dim=(1, 2, 3)).abs().detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_accumulate_gradients_leaves_the_model_as_it_was():
    m = ConvBnConv(L1_L2).train()
    m.conv2.weight.requires_grad_(False)
    stats = m.bn.running_mean.clone()
    grads = accumulate_gradients(m, taylor_data(), nn.MSELoss())
    assert set(grads) == {"conv1.weight", "bn.weight", "bn.bias", "conv2.weight"}
    assert all(p.grad is None for p in m.parameters())
    assert m.training and not m.conv2.weight.requires_grad and torch.equal(m.bn.running_mean, stats)


def test_random_is_reproducible_and_seedable():
    torch.manual_seed(0)
    m = ConvBnConv(torch.randn(16, 3).tolist())
    a = removed_filters(m, ratio=0.5, criterion="random")
    assert a == removed_filters(m, ratio=0.5, criterion="random") and len(a) == 8
    other = removed_filters(m, ratio=0.5, criterion=functools.partial(criteria.random, seed=7))
    assert other != a and len(other) == 8


# ------------------------------------------------------------------------ members and reductions
def test_side_in_scores_whole_input_channels():
    """conv2 barely reads channel 3 (kernel-level view) although conv1's filter 3 is the largest:
    side="in" removes input channel 3 and, with it, filter 3; side="out" removes filter 0."""
    filters = [[1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0], [9.0, 0, 0]]
    consumer = torch.tensor([[1.0, 1.0, 1.0, 0.01], [1.0, 1.0, 1.0, 0.01]])
    m = ConvBnConv(filters, consumer=consumer)
    removed = surgeon.plan(m, X, ratio=0.25, side="in").removed()
    assert removed["conv1"]["out"] == [3] and removed["conv2"]["in"] == [3]
    assert removed_filters(m, side="out") == [0]


def test_member_filter_splits_producers_and_consumers():
    m = ConvBnConv(L1_L2)
    g = surgeon.trace(m, X).prunable_groups()[0]
    refs = lambda gr: sorted(p.ref for p in gr.params)  # noqa: E731
    assert refs(criteria.member_filter(m, g, "in")) == ["conv2.weight"]
    assert "conv2.weight" not in refs(criteria.member_filter(m, g, "out"))
    assert "conv1.weight" in refs(criteria.member_filter(m, g, "out"))


@pytest.mark.parametrize("reduction, want", [("first", [1]), ("max", [0]), ("mean", [0]), ("sum", [0])])
def test_reductions(reduction, want):
    """conv1 alone would remove filter 1; conv2's input kernels make channel 1 the most important
    for max / mean / sum, leaving filter 0."""
    filters = [[2.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [4.0, 0, 0]]
    consumer = torch.tensor([[1.0, 50.0, 1.0, 1.0], [1.0, 50.0, 1.0, 1.0]])
    assert removed_filters(ConvBnConv(filters, consumer=consumer), reduction=reduction) == want


class _Concat(nn.Module):
    """Two branches concatenated, then a consumer: the group's channels 0-3 come from ``a``, 4-7
    from ``b``; ``b``'s filters are the larger ones."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(8, 2, 1)
        with torch.no_grad():
            self.a.weight.copy_(torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 3, 1, 1))
            self.b.weight.copy_(torch.arange(11.0, 15.0).view(4, 1, 1, 1).expand(4, 3, 1, 1))
            self.out.weight.fill_(1.0)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], 1))


def test_first_reduction_scores_each_concatenated_branch_by_its_own_producer():
    """Channels 4-7 are first covered by b (not by a, the group's first member): their scores
    are b's filter norms, not zeros."""
    m = _Concat()
    g = next(gr for gr in surgeon.trace(m, X).prunable_groups() if any(p.ref == "b.weight" for p in gr.params))
    tensors = {p.ref: dict(m.named_parameters())[p.ref] for p in g.params if p.ref in dict(m.named_parameters())}
    got = criteria.l1(g, tensors, reduction="first")
    assert got.tolist() == [3.0, 6.0, 9.0, 12.0, 33.0, 36.0, 39.0, 42.0]
    # global scope ranks the pooled channels: two of a's filters (the small ones) go, none of b's
    removed = surgeon.plan(m, X, scope="global", ratio=0.25, reduction="first").removed()
    assert removed["a"]["out"] == [0, 1] and "b" not in removed


def test_running_statistics_do_not_score():
    """BatchNorm running statistics describe the data, not the learned weights: huge running
    variance on channel 0 changes nothing."""
    m = ConvBnConv(L1_L2)
    m.bn.running_var[1] = 1e6
    assert removed_filters(m, criterion="l1") == [1]


def test_custom_callable_criterion():
    m = ConvBnConv(L1_L2)
    assert removed_filters(m, ratio=0.5, criterion=lambda g, t: -np.arange(g.n, dtype=float)) == [2, 3]


# ----------------------------------------------------------------------------------- bad input
def test_unknown_reduction_names_the_choices():
    with pytest.raises(ValueError, match="unknown reduction 'median'; choose one of 'mean', 'sum', 'max', 'first'"):
        surgeon.plan(ConvBnConv(L1_L2), X, reduction="median")


def test_unknown_side_names_the_choices():
    with pytest.raises(ValueError, match="unknown side 'both'; choose one of 'all', 'out', 'in'"):
        surgeon.plan(ConvBnConv(L1_L2), X, side="both")


def test_unknown_criterion_names_the_registered_ones():
    with pytest.raises(ValueError, match="unknown criterion 'l3'; choose one of l1, l2, fpgm, bn_scale, taylor, random"):
        surgeon.plan(ConvBnConv(L1_L2), X, criterion="l3")


@pytest.mark.parametrize("kw", [{}, {"data": taylor_data()}, {"loss_fn": nn.MSELoss()}])
def test_taylor_without_data_is_a_clear_error(kw):
    m = ConvBnConv(L1_L2)
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="criterion 'taylor' needs gradients: pass data=.*loss_fn="):
        surgeon.plan(m, X, criterion="taylor", **kw)
    assert all(torch.equal(saved[k], v) for k, v in m.state_dict().items())


def test_taylor_with_empty_data():
    with pytest.raises(ValueError, match="data yielded no batches"):
        surgeon.plan(ConvBnConv(L1_L2), X, criterion="taylor", data=[], loss_fn=nn.MSELoss())


def test_taylor_data_must_be_pairs():
    with pytest.raises(TypeError, match=r"data must yield \(inputs, target\) pairs"):
        surgeon.plan(ConvBnConv(L1_L2), X, criterion="taylor", data=[X], loss_fn=nn.MSELoss())


def test_reduction_for_a_criterion_that_takes_none():
    with pytest.raises(ValueError, match="reduction='max' was given but criterion <lambda> takes no reduction"):
        surgeon.plan(ConvBnConv(L1_L2), X, criterion=lambda g, t: np.ones(g.n), reduction="max")


def test_criterion_returning_wrong_shape():
    with pytest.raises(ValueError, match=r"returned scores of shape \(3,\) for group 1 with 4 channels"):
        surgeon.plan(ConvBnConv(L1_L2), X, criterion=lambda g, t: np.ones(3))


def test_criterion_returning_some_nan():
    with pytest.raises(ValueError, match="returned NaN for some channels of group 1"):
        surgeon.plan(ConvBnConv(L1_L2), X, criterion=lambda g, t: np.array([1.0, np.nan, 2.0, 3.0]))


def test_criterion_returning_all_nan_skips_the_group():
    with pytest.raises(surgeon.NothingToPrune, match="cannot score it"):
        surgeon.plan(ConvBnConv(L1_L2), X, criterion=lambda g, t: np.full(g.n, np.nan))


# --------------------------------------------------------------------------- slimming regulariser
def test_bn_l1_penalty_value_and_gradient():
    m = ConvBnConv(L1_L2, gamma=[1.0, -2.0, 0.5, 0.0])
    pen = bn_l1_penalty(m, 0.1)
    assert float(pen.detach()) == pytest.approx(0.1 * 3.5)
    pen.backward()
    torch.testing.assert_close(m.bn.weight.grad, 0.1 * torch.sign(m.bn.weight.detach()))


def test_bn_l1_subgradient_adds_to_existing_grads():
    m = ConvBnConv(L1_L2, gamma=[1.0, -2.0, 0.5, 0.0])
    bn_l1_subgradient_(m, 0.1)  # no grad yet: created
    torch.testing.assert_close(m.bn.weight.grad, torch.tensor([0.1, -0.1, 0.1, 0.0]))
    bn_l1_subgradient_(m, 0.1)
    torch.testing.assert_close(m.bn.weight.grad, torch.tensor([0.2, -0.2, 0.2, 0.0]))
    assert bn_scales(m) == [m.bn.weight]


def test_slimming_training_drives_a_useless_gamma_to_zero_then_bn_scale_removes_it():
    """Fit the model's own initial outputs with the penalty: the loss holds the gammas of the
    channels conv2 reads, while the one it ignores only feels the penalty and goes to zero."""
    torch.manual_seed(0)
    consumer = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0]])
    m = ConvBnConv(torch.randn(4, 3).tolist(), consumer=consumer)
    data = [(x, m(x).detach()) for x, _ in taylor_data(4)]
    opt = torch.optim.SGD([m.bn.weight], lr=0.05)
    for _ in range(20):
        for x, y in data:
            opt.zero_grad()
            (F.mse_loss(m(x), y) + bn_l1_penalty(m, 0.25)).backward()
            opt.step()
    gamma = m.bn.weight.detach().abs()
    assert gamma[2] < 0.01 and (gamma[[0, 1, 3]] > 0.5).all()
    assert removed_filters(m, criterion="bn_scale") == [2]


@pytest.mark.parametrize("lam", [-1.0, "big", True])
def test_bad_lambda(lam):
    with pytest.raises(ValueError, match="lam must be a non-negative number"):
        bn_l1_penalty(ConvBnConv(L1_L2), lam)


def test_penalty_without_batchnorm():
    with pytest.raises(ValueError, match="has no BatchNorm with an affine scale"):
        bn_l1_penalty(nn.Conv2d(3, 4, 1), 1e-4)


# ------------------------------------------------------------------------------ layers and modes
class Dense(nn.Module):
    """A user's own fully connected layer (weight (out, in), F.linear), registered with the built-in
    Linear spec: its input side is weight dim 1, as the spec's weight_dims say."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def test_input_side_comes_from_the_layer_spec(monkeypatch):
    from surgeon import registry
    from surgeon.indexmap import Pos

    monkeypatch.setattr(registry, "_MODULES", dict(registry._MODULES))
    m = nn.Sequential(Dense(6, 8), nn.ReLU(), Dense(8, 2))
    assert not criteria.is_input_side(m, Pos("p", "2.weight", 1))  # not registered: no known sides
    spec = registry.layer_spec(nn.Linear(1, 1))
    registry.register_module(Dense, spec.couple, layer=spec)
    assert criteria.is_input_side(m, Pos("p", "2.weight", 1))
    assert not criteria.is_input_side(m, Pos("p", "2.weight", 0))
    assert criteria.is_input_side(nn.Sequential(nn.ConvTranspose2d(4, 3, 2)), Pos("p", "0.weight", 0))
    g = surgeon.trace(m, torch.randn(3, 6)).prunable_groups()[0]
    assert [(p.ref, p.dim) for p in criteria.member_filter(m, g, "in").params] == [("2.weight", 1)]


class TwoBn(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> conv3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))))


@pytest.mark.parametrize("step", [
    lambda m: surgeon.trace(m, X),
    lambda m: surgeon.plan(m, X, criterion="taylor", data=taylor_data(), loss_fn=nn.MSELoss()),
    lambda m: accumulate_gradients(m, taylor_data(), nn.MSELoss()),
    lambda m: surgeon.prune(m, X, 0.5, verify=True),
    lambda m: surgeon.count(m, X),
], ids=["trace", "plan-taylor", "accumulate_gradients", "prune-verify", "count"])
def test_entry_points_give_every_module_its_own_mode_back(step):
    """A model training with one BatchNorm frozen in eval mode stays exactly so."""
    torch.manual_seed(0)
    m = TwoBn().train()
    m.bn1.eval()
    step(m)
    assert {name for name, mod in m.named_modules() if not mod.training} == {"bn1"}


@pytest.mark.parametrize("shape", [(8, 5, 3, 3), (6, 7), (4, 1, 3, 3), (5, 3, 2, 2, 2)])
def test_reduce_except_sums_every_other_dim(shape):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(shape))
    for dim in range(len(shape)):
        others = [d for d in range(len(shape)) if d != dim]
        want = w.detach().double().abs().sum(dim=others)
        got = criteria.reduce_except(w, dim, torch.abs)
        assert got.dtype == torch.float64 and torch.allclose(got, want, rtol=1e-6)
        with criteria.shared_reductions():
            assert torch.allclose(criteria.reduce_except(w, dim, torch.abs), want, rtol=1e-6)


def test_shared_reductions_score_a_weight_once_for_both_of_its_groups():
    """A conv weight is in two groups (its filters, its input kernels): one pass of fn covers both."""
    calls = []

    def counting_abs(t):
        calls.append(tuple(t.shape))
        return t.abs()

    w = nn.Parameter(torch.randn(8, 4, 3, 3))
    with criteria.shared_reductions():
        out = criteria.reduce_except(w, 0, counting_abs)
        inp = criteria.reduce_except(w, 1, counting_abs)
    assert calls == [(8, 4, 3, 3)]
    assert torch.allclose(out, w.detach().abs().sum((1, 2, 3)).double(), rtol=1e-6)
    assert torch.allclose(inp, w.detach().abs().sum((0, 2, 3)).double(), rtol=1e-6)
    with torch.no_grad():
        w.mul_(2)  # a changed tensor (new version) is scored again
    with criteria.shared_reductions():
        criteria.reduce_except(w, 0, counting_abs)
    assert len(calls) == 2


def test_a_plan_scores_each_weight_once():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                      nn.Conv2d(8, 4, 1)).eval()
    seen = []

    def fn(t):
        seen.append(tuple(t.shape))
        return t.abs()

    def l1_counting(group, tensors, reduction="mean"):
        return criteria.reduce_members(group, criteria.member_scores(group, tensors, fn), reduction)

    surgeon.plan(m, torch.randn(1, 3, 12, 12), ratio=0.5, criterion=l1_counting)
    # conv 0 and BN (group 1), the middle conv (group 1's input kernels and group 2's filters: once),
    # the last conv's input kernels (group 2); the last conv's filters make the output: not scored
    assert sorted(seen) == sorted([(8, 3, 3, 3), (8,), (8, 8, 3, 3), (4, 8, 1, 1)])
