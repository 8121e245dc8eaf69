"""Scope and targets: global ranking with normalisation and max_layer_ratio, per-module ratios,
concatenations cut per producer (SqueezeNet / GoogLeNet branches), MACs / params targets met within
one channel step, the analytic MACs / params prediction, and every criterion x scope through the
surgical-equivalence oracle on the zoo."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
import surgeon_models as zoo
from surgeon import Pos
from surgeon.count import count
from surgeon.scope import producer_parts
from surgeon.verify import assert_equivalent, zeroed_reference

import patterns as P  # noqa: E402

X = torch.randn(2, 3, 8, 8)


class Chain(nn.Module):
    """conv1 (8) -> conv2 (8) -> conv3 (2, the output): two prunable groups of 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 2, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


def kept(model: Chain) -> tuple[int, int]:
    return model.conv1.out_channels, model.conv2.out_channels


def skewed(g, tensors) -> np.ndarray:
    """conv1's group: seven useless channels and one good one; conv2's: evenly spread scores."""
    if "conv1.weight" in tensors:
        return np.array([0.0] * 7 + [1.0])
    return np.arange(1.0, g.n + 1)


# ------------------------------------------------------------------------------------------ global
def test_global_respects_max_layer_ratio():
    m = Chain()
    surgeon.prune(m, X, 0.5, criterion=skewed, scope="global", max_layer_ratio=0.5)
    assert kept(m) == (4, 4)
    m = Chain()
    surgeon.prune(m, X, 0.5, criterion=skewed, scope="global", max_layer_ratio=1.0)
    assert kept(m) == (1, 7)  # 8 of the 16 channels go: conv1's 7 zeros, conv2's lowest one


def test_global_never_empties_a_group():
    m = Chain()
    surgeon.prune(m, X, 0.9, criterion=lambda g, t: np.zeros(g.n), scope="global", max_layer_ratio=1.0)
    assert min(kept(m)) >= 1


def test_global_default_cap_is_0_9():
    m = Chain()
    plan = surgeon.plan(m, X, 0.95, criterion=lambda g, t: np.zeros(g.n), scope="global")
    assert sorted(c.kept for c in plan.cuts) == [1, 1]  # floor(0.9 * 8) = 7 removed from each


def test_global_normalisation_makes_layer_scale_irrelevant():
    """Scores are divided by their group's mean, so scaling conv2's weights by 1000 (raw L1 would
    then never cut conv2) changes nothing in the global ranking."""
    plain = surgeon.plan(Chain(), X, 0.5, scope="global", reduction="first").removed()
    m = Chain()
    with torch.no_grad():
        m.conv2.weight.mul_(1000)
    scaled = surgeon.plan(m, X, 0.5, scope="global", reduction="first").removed()
    assert scaled == plain
    assert 0 < len(plain["conv1"]["out"]) < 8 and 0 < len(plain["conv2"]["out"]) < 8


def test_local_is_the_same_ratio_everywhere():
    m = Chain()
    surgeon.prune(m, X, 0.5, criterion=skewed)
    assert kept(m) == (4, 4)


# ------------------------------------------------------------------- concatenations: per producer
# The producing convs of each concatenation, one tuple per torch.cat.
FIRE = ("expand1x1", "expand3x3")
INCEPTION = ("branch1.0", "branch2.1.0", "branch3.1.0", "branch4.1.0")
CONCATS = {"squeezenet": [tuple(f"fires.{i}.{b}" for b in FIRE) for i in range(3)],
           "googlenet": [tuple(f"{m}.{b}" for b in INCEPTION) for m in ("inc1", "inc2")]}


def concat_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = {"squeezenet": P.SqueezeNetLike, "googlenet": P.GoogLeNetLike}[name]()
    return zoo.randomize_bn(m, seed=1).eval(), torch.randn(2, 3, 32, 32)


def branch_widths(model: nn.Module, name: str) -> list[list[int]]:
    return [[model.get_submodule(n).out_channels for n in cat] for cat in CONCATS[name]]


def pooled(monkeypatch) -> None:
    """Rank every concatenation as one pool, as before producers were told apart."""
    monkeypatch.setattr(importlib.import_module("surgeon.plan"), "producer_parts", lambda *a, **k: None)


@pytest.mark.parametrize("name", ["squeezenet", "googlenet"])
def test_local_scope_cuts_every_concatenated_branch_by_the_ratio(name):
    """Each branch keeps half its filters, whatever its kernel size; surgically exact."""
    m, x = concat_model(name)
    before = branch_widths(m, name)
    plan = surgeon.plan(m, x, 0.5)
    assert {n for cat in CONCATS[name] for n in cat} <= set(plan.removed())
    plan.apply(verify=True)
    assert branch_widths(m, name) == [[w - w // 2 for w in cat] for cat in before]


def test_pooled_ranking_empties_the_cheap_branch(monkeypatch):
    """What the per-producer cut fixes: ranked as one pool by raw L1, each Fire module's 1x1
    expand (8 weights per filter, vs 72 for the 3x3) keeps one filter and the 3x3 keeps all."""
    m, x = concat_model("squeezenet")
    pooled(monkeypatch)
    surgeon.plan(m, x, 0.5).apply()
    assert branch_widths(m, "squeezenet") == [[1, 16], [1, 16], [1, 32]]


@pytest.mark.parametrize("name", ["squeezenet", "googlenet"])
def test_global_scope_keeps_branches_comparable(name, monkeypatch):
    """Global scope normalises each producer's scores by their own mean, so no branch is emptied
    for its kernel size: every branch keeps between a quarter and three quarters of its filters
    (ranked as one pool per concatenation, a 1x1 branch kept at most 2 of its filters)."""
    m, x = concat_model(name)
    before = branch_widths(m, name)
    surgeon.plan(m, x, 0.5, scope="global").apply(verify=True)
    kept = [k / w for cat_k, cat_w in zip(branch_widths(m, name), before) for k, w in zip(cat_k, cat_w)]
    assert all(0.25 <= f <= 0.75 for f in kept), kept
    m, x = concat_model(name)
    pooled(monkeypatch)
    surgeon.plan(m, x, 0.5, scope="global").apply()
    assert min(min(cat) for cat in branch_widths(m, name)) <= 2


def test_iterative_steps_cut_each_branch_of_its_original_width():
    """Later steps measure each producer against its original width (from the baseline)."""
    m, x = concat_model("squeezenet")
    surgeon.prune(m, x, 0.5, steps=2, verify=True)
    assert branch_widths(m, "squeezenet") == [[8, 8], [8, 8], [16, 16]]


def test_producer_parts_of_a_concatenation():
    """Two parts, one per expand conv, in channel order; one part (None) for a plain chain."""
    m, x = concat_model("squeezenet")
    g = next(g for g in surgeon.trace(m, x).groups if Pos("p", "fires.0.expand1x1.weight", 0) in g.channel_of)
    parts = producer_parts(g, g.params)  # fires.1.squeeze reads all 32 channels: it separates nothing
    assert [(p.channels.tolist(), p.n0) for p in parts] == [(list(range(16)), 16), (list(range(16, 32)), 16)]
    chain = surgeon.trace(Chain(), X).groups[0]
    assert producer_parts(chain, chain.params) is None


# ------------------------------------------------------------------------------- per-module ratios
@pytest.mark.parametrize("key", ["module", "name"])
def test_per_module_ratio_override(key):
    m = Chain()
    k = m.conv1 if key == "module" else "conv1"
    surgeon.prune(m, X, 0.5, ratios={k: 0.25})
    assert kept(m) == (6, 4)


def test_per_module_ratio_in_global_scope():
    m = Chain()
    surgeon.prune(m, X, 0.5, criterion=skewed, scope="global", ratios={m.conv2: 0.25}, max_layer_ratio=1.0)
    assert kept(m) == (4, 6)  # conv2 fixed at 25%; conv1 alone in the global pool: 4 of its 8


def test_coupled_modules_need_one_ratio():
    m = zoo.get("tinynet").eval()
    with pytest.raises(ValueError, match="coupled .*group 1.*give them one ratio"):
        surgeon.plan(m, torch.randn(1, 3, 16, 16), ratios={"conv1": 0.25, "conv2": 0.5})


def test_ratio_for_an_unprunable_module():
    with pytest.raises(ValueError, match=r"ratios names \['conv3'\], whose output channels are not in any prunable group"):
        surgeon.plan(Chain(), X, ratios={"conv3": 0.5})


@pytest.mark.parametrize("ratios, err, match", [
    ({"conv9": 0.5}, ValueError, "ratios names 'conv9', which is not a module"),
    ({"conv1": 1.0}, ValueError, r"ratios\['conv1'\] must be a number in \[0, 1\)"),
    ([0.5], TypeError, "ratios must be a mapping"),
])
def test_bad_ratios(ratios, err, match):
    with pytest.raises(err, match=match):
        surgeon.plan(Chain(), X, ratios=ratios)


# -------------------------------------------------------------------------------------- targets
@pytest.fixture(scope="module")
def resnet56():
    torch.manual_seed(0)
    return zoo.randomize_bn(zoo.get("resnet56")).eval(), torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("metric, target", [("macs", 0.5), ("params", 0.3)])
def test_targets_met_within_one_channel_step(resnet56, scope, metric, target):
    model, x = resnet56
    plan = surgeon.plan(model, x, scope=scope, **{f"target_{metric}": target})
    before, after = getattr(plan.before, metric), getattr(plan.after, metric)
    assert after <= target * before
    rep = plan.target
    assert rep.metric == metric and rep.requested == target
    assert rep.achieved == pytest.approx(after / before)
    assert rep.one_step_less > target  # one channel step less would miss the target
    if scope == "global":  # one channel of one group: a fine step
        assert rep.one_step_less - rep.achieved < 0.02
    assert f"target_{metric}={target:g}: keeps" in plan.summary()


def test_target_with_round_to(resnet56):
    """Channel counts stay multiples of round_to; the step is then round_to channels."""
    import copy
    model, x = copy.deepcopy(resnet56[0]), resnet56[1]
    plan = surgeon.plan(model, x, scope="global", target_macs=0.5, round_to=4)
    assert plan.after.macs <= 0.5 * plan.before.macs < plan.target.one_step_less * plan.before.macs
    plan.apply()
    assert all(c.out_channels % 4 == 0 for c in model.modules() if isinstance(c, nn.Conv2d) and c.out_channels > 4)


def test_prediction_equals_count_after_surgery(resnet56):
    """The analytic before -> after figures are exact, and agree with Torch-Pruning's counter."""
    tp = pytest.importorskip("torch_pruning")
    import copy
    model, x = copy.deepcopy(resnet56[0]), resnet56[1]
    plan = surgeon.plan(model, x, scope="global", target_macs=0.4, criterion="fpgm")
    plan.apply()
    c = count(model, x)
    assert (c.macs, c.params) == (plan.after.macs, plan.after.params)
    macs, params = tp.utils.count_ops_and_params(model, x)
    assert params == plan.after.params
    assert macs == pytest.approx(plan.after.macs, rel=0.01)  # tp also counts BN / ReLU a bit differently


def test_summary_shows_macs_and_params_before_and_after():
    plan = surgeon.plan(Chain(), X, 0.5)
    line = next(l for l in plan.summary().splitlines() if l.startswith("MACs:"))
    b, a = plan.before, plan.after
    assert f"{b.macs:,} -> {a.macs:,}" in line and f"params: {b.params:,} -> {a.params:,}" in line
    assert a.macs < b.macs and plan.target is None


def test_unreachable_target(resnet56):
    model, x = resnet56
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"target_params=0.001 is out of reach: .* keeps \d+\.\d% .*max_layer_ratio=0.9"):
        surgeon.plan(model, x, target_params=0.001, scope="global")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kw, match", [
    ({"target_macs": 0}, r"target_macs must be a number in \(0, 1\] \(the fraction of the original macs kept\), got 0"),
    ({"target_macs": 1.5}, r"target_macs must be a number in \(0, 1\]"),
    ({"target_params": -0.2}, r"target_params must be a number in \(0, 1\]"),
    ({"target_params": "half"}, r"target_params must be a number in \(0, 1\]"),
    ({"target_macs": True}, r"target_macs must be a number in \(0, 1\]"),
    ({"target_macs": 0.5, "target_params": 0.5}, "give one of target_macs and target_params, not both"),
    ({"target_macs": 0.5, "ratio": 0.3}, "give either ratio or a target, not both"),
    ({"max_layer_ratio": 0}, r"max_layer_ratio must be a number in \(0, 1\]"),
    ({"max_layer_ratio": 1.2}, r"max_layer_ratio must be a number in \(0, 1\]"),
    ({"scope": "glob"}, "unknown scope 'glob'; choose one of 'local', 'global'"),
])
def test_bad_targets_and_scopes(kw, match):
    m = Chain()
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        surgeon.plan(m, X, **kw)
    assert all(torch.equal(saved[k], v) for k, v in m.state_dict().items())


def test_target_of_one_removes_nothing():
    plan = surgeon.plan(Chain(), X, target_macs=1.0)
    assert plan.removed() == {} and plan.after == plan.before


# --------------------------------------------------------------------- criterion x scope on the zoo
CRITERIA = ["l1", "l2", "fpgm", "bn_scale", "taylor", "random"]
SMALL = {"mobilenet_v2": ((1, 3, 64, 64), {"num_classes": 10, "width_mult": 0.5}),
         "unet": ((1, 3, 32, 32), {}), "convnext": ((1, 3, 32, 32), {})}


def zoo_case(name: str) -> tuple[nn.Module, torch.Tensor]:
    shape, kw = SMALL.get(name, (zoo.input_shape(name), {}))
    torch.manual_seed(0)
    return zoo.randomize_bn(zoo.get(name, **kw), seed=1).eval(), torch.randn(2, *shape[1:])


def run(name: str, criterion: str, scope: str, **kw) -> None:
    model, x = zoo_case(name)
    if criterion == "taylor":
        kw.update(data=[(x, None)], loss_fn=lambda out, _: out.square().mean())
    if criterion == "bn_scale" and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        with pytest.raises(surgeon.NothingToPrune, match="criterion bn_scale cannot score it"):
            surgeon.plan(model, x, 0.4, criterion=criterion, scope=scope, **kw)
        return
    plan = surgeon.plan(model, x, 0.4, criterion=criterion, scope=scope, **kw)
    removed = plan.removed()
    assert removed, "the plan removes nothing"
    out_shape = model(x).shape
    reference = None if zoo.entry(name).mixing_norm else zeroed_reference(model, removed)
    plan.apply()
    assert sum(p.numel() for p in model.parameters()) == plan.after.params < plan.before.params
    if reference is None:  # LayerNorm over channels: removal is not an exact zeroing
        assert model(x).shape == out_shape
    else:
        assert_equivalent(reference, model, x)


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("name", ["tinynet", "densenet", "se_resnet", "unet"])
def test_every_criterion_and_scope_is_surgically_exact(name, criterion, scope):
    run(name, criterion, scope)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("name", ["resnet56", "mobilenet_v2", "convnext"])
def test_every_criterion_on_larger_models(name, criterion):
    """One scope per (model, criterion), alternating, to keep the run short."""
    scope = ["local", "global"][(CRITERIA.index(criterion) + len(name)) % 2]
    run(name, criterion, scope)


@pytest.mark.parametrize("side", ["in", "out"])
@pytest.mark.parametrize("name", ["densenet", "mobilenet_v2"])
def test_input_channel_scoring_is_surgically_exact(name, side):
    run(name, "l1", "global", side=side)
