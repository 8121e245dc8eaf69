"""Scope and targets: global ranking with normalisation and max_layer_ratio, per-module ratios,
concatenations cut per producer (SqueezeNet / GoogLeNet branches), MACs / params targets met within
one channel step, the analytic MACs / params prediction, every criterion x scope choosing by its
scores on the zoo, and every model x scope through the surgical-equivalence oracle."""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
import surgeon_models as zoo
from surgeon import Pos
from surgeon.count import count
from surgeon.criteria import is_input_side
from surgeon.scope import producer_parts
from surgeon.verify import assert_equivalent, zeroed_reference

import patterns as P  # noqa: E402
from conftest import changed_entries, snapshot

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
    monkeypatch.setattr(importlib.import_module("surgeon.candidates"), "producer_parts", lambda *a, **k: None)


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
# What depends on the criterion (its scores and the channels they choose) is checked for every
# criterion x scope x model on one traced graph per model; surgery and the equivalence oracle, which
# only see the chosen channels, run once per model x scope, with the criteria taking turns.
CRITERIA = ["l1", "l2", "fpgm", "bn_scale", "taylor", "random"]
SCOPES = ["local", "global"]
ZOO = ["tinynet", "densenet", "se_resnet", "unet", "resnet56", "mobilenet_v2", "convnext"]
SMALL = {"mobilenet_v2": ((1, 3, 64, 64), {"num_classes": 10, "width_mult": 0.5}),
         "unet": ((1, 3, 32, 32), {}), "convnext": ((1, 3, 32, 32), {})}
RATIO = 0.4


def zoo_case(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The same weights and input on every call."""
    shape, kw = SMALL.get(name, (zoo.input_shape(name), {}))
    torch.manual_seed(0)
    return zoo.randomize_bn(zoo.get(name, **kw), seed=1).eval(), torch.randn(2, *shape[1:])


def criterion_kw(criterion: str, x: torch.Tensor) -> dict:
    if criterion == "taylor":
        return {"data": [(x, None)], "loss_fn": lambda out, _: out.square().mean()}
    return {}


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.fixture(scope="module")
def traced():
    """name -> (model, input, graph): each zoo model built and traced once for this module, shared
    by the plans, which must leave it as it was (checked at the end)."""
    cache: dict[str, tuple[nn.Module, torch.Tensor, surgeon.ChannelGraph]] = {}
    before: dict[str, dict[str, torch.Tensor]] = {}

    def get(name: str):
        if name not in cache:
            model, x = zoo_case(name)
            before[name] = snapshot(model)
            cache[name] = (model, x, surgeon.trace(model, x))
        return cache[name]
    yield get
    changed = {name: changed_entries(model, before[name]) for name, (model, _, _) in cache.items()}
    assert not any(changed.values()), f"planning changed the shared models: {changed}"


@pytest.fixture(scope="module")
def l1_counts(traced):
    """(name, scope) -> {group id: channels removed} of the l1 plan, made once."""
    cache: dict[tuple[str, str], dict[int, int]] = {}

    def get(name: str, scope: str) -> dict[int, int]:
        if (name, scope) not in cache:
            cache[name, scope] = counts(plan_on_graph(traced(name), scope=scope))
        return cache[name, scope]
    return get


def plan_on_graph(case, **kw) -> surgeon.Plan:
    """surgeon.plan on the model, reusing its traced graph instead of tracing it again."""
    model, x, graph = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.import_module("surgeon.plan"), "trace", lambda *a, **k: graph)
        plan = surgeon.plan(model, x, RATIO, **kw)
    assert plan.graph is graph, "surgeon.plan traced again: update plan_on_graph"
    return plan


def counts(plan: surgeon.Plan) -> dict[int, int]:
    return {c.group.id: len(c.remove) for c in plan.cuts}


def lowest_scored_removed(model: nn.Module, cut) -> bool:
    """Each producer's removed channels score no higher than its kept ones (the criterion chose them)."""
    g = cut.group
    parts = producer_parts(g, [p for p in g.params if not is_input_side(model, p)])
    removed = np.isin(np.arange(g.n), cut.remove)
    for channels in [p.channels for p in parts] if parts else [np.arange(g.n)]:
        r, k = channels[removed[channels]], channels[~removed[channels]]
        if len(r) and len(k) and cut.scores[r].max() > cut.scores[k].min():
            return False
    return True


def test_a_choice_against_the_scores_is_seen(traced):
    """lowest_scored_removed fires when the highest-scored channels are removed instead."""
    model, _, _ = case = traced("tinynet")
    cut = next(c for c in plan_on_graph(case).cuts if len(c.remove))
    worst = np.sort(np.argsort(cut.scores, kind="stable")[-len(cut.remove):])
    assert lowest_scored_removed(model, cut)
    assert not lowest_scored_removed(model, dataclasses.replace(cut, remove=worst))


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("name", ZOO)
def test_every_criterion_and_scope_chooses_by_its_scores(traced, l1_counts, name, criterion, scope):
    """One finite score per channel; each producer loses its lowest-scored channels; how many go does
    not depend on the criterion (per group in local scope, in all in global scope); the plan shrinks
    the model. A criterion that cannot score any group (bn_scale without BatchNorm) says so."""
    model, x, _ = case = traced(name)
    kw = criterion_kw(criterion, x)
    if criterion == "bn_scale" and not has_batch_norm(model):
        with pytest.raises(surgeon.NothingToPrune, match="criterion bn_scale cannot score it"):
            plan_on_graph(case, criterion=criterion, scope=scope)
        return
    plan = plan_on_graph(case, criterion=criterion, scope=scope, **kw)
    assert plan.removed(), "the plan removes nothing"
    assert plan.after.params < plan.before.params and plan.after.macs < plan.before.macs
    for cut in plan.cuts:
        assert cut.scores.shape == (cut.group.n,) and np.isfinite(cut.scores).all()
        assert lowest_scored_removed(model, cut), f"group {cut.group.id} ({cut.group.layers[:3]})"
    l1 = l1_counts(name, scope)
    if scope == "local":
        assert counts(plan).items() <= l1.items()  # bn_scale skips the groups without BatchNorm
    elif criterion != "bn_scale":
        assert sum(counts(plan).values()) == sum(l1.values())


@pytest.mark.parametrize("side", ["in", "out"])
@pytest.mark.parametrize("name", ["densenet", "mobilenet_v2"])
def test_input_and_output_side_scores_choose_by_their_scores(traced, name, side):
    """side= changes only the scores (whole input channels, or filters and norm scales)."""
    model, x, _ = case = traced(name)
    plan = plan_on_graph(case, scope="global", side=side)
    assert plan.removed() and plan.removed() != plan_on_graph(case, scope="global").removed()
    assert all(lowest_scored_removed(model, cut) for cut in plan.cuts)


# (model, scope) -> (criterion, plan options): every criterion and both sides reach surgery at least
# once; the l1 / local default is test_equivalence.py's.
SURGERY = {
    ("tinynet", "local"): ("l2", {}), ("tinynet", "global"): ("fpgm", {}),
    ("densenet", "local"): ("taylor", {}), ("densenet", "global"): ("l1", {"side": "in"}),
    ("se_resnet", "local"): ("bn_scale", {}), ("se_resnet", "global"): ("random", {}),
    ("unet", "local"): ("fpgm", {}), ("unet", "global"): ("taylor", {}),
    ("resnet56", "local"): ("random", {}), ("resnet56", "global"): ("bn_scale", {}),
    ("mobilenet_v2", "local"): ("l1", {"side": "out"}), ("mobilenet_v2", "global"): ("l1", {"side": "in"}),
    ("convnext", "local"): ("l2", {}), ("convnext", "global"): ("random", {}),
}


@pytest.mark.parametrize("name, scope, criterion, kw", [
    pytest.param(name, scope, criterion, kw, id="-".join([name, scope, criterion, *kw.values()]))
    for (name, scope), (criterion, kw) in SURGERY.items()])
def test_every_scope_is_surgically_exact_on_the_zoo(traced, name, scope, criterion, kw):
    """Plan (traced afresh) on a copy of the model, apply, and compare with the zeroed reference
    (LayerNorm over channels: shapes only); the plan is the one the criterion tests made on the
    shared graph, and the predicted parameter count is exact."""
    model, x = zoo_case(name)
    kw = {**kw, **criterion_kw(criterion, x)}
    plan = surgeon.plan(model, x, RATIO, criterion=criterion, scope=scope, **kw)
    removed = plan.removed()
    assert removed == plan_on_graph(traced(name), criterion=criterion, scope=scope, **kw).removed()
    out_shape = model(x).shape
    reference = None if zoo.entry(name).mixing_norm else zeroed_reference(model, removed)
    plan.apply()
    assert sum(p.numel() for p in model.parameters()) == plan.after.params < plan.before.params
    if reference is None:  # LayerNorm over channels: removal is not an exact zeroing
        assert model(x).shape == out_shape
    else:
        assert_equivalent(reference, model, x)


class _FireHead(nn.Module):
    """A Fire module's concatenation read by a 1x1 conv (optionally through a BatchNorm)."""

    def __init__(self, bn: bool = False):
        super().__init__()
        self.fire, self.head = P.Fire(8, 8, 16, 16), nn.Conv2d(32, 4, 1)
        self.bn = nn.BatchNorm2d(32) if bn else nn.Identity()

    def forward(self, x):
        return self.head(self.bn(self.fire(x))).mean((2, 3))


def test_producers_of_one_concatenation_take_their_own_ratios():
    """Each input of a concatenation makes its own channels, so each may have its own ratio."""
    m = _FireHead().eval()
    x = torch.randn(1, 8, 6, 6)
    plan = surgeon.plan(m, x, ratios={m.fire.expand1x1: 0.25, m.fire.expand3x3: 0.75})
    plan.apply(verify=True)
    assert (m.fire.expand1x1.out_channels, m.fire.expand3x3.out_channels, m.head.in_channels) == (12, 4, 16)
    f = _FireHead(bn=True).eval()  # the BatchNorm scales every channel of both branches
    with pytest.raises(ValueError, match="make the same channels.*give them one ratio"):
        surgeon.plan(f, x, ratios={f.fire.expand1x1: 0.25, f.bn: 0.75})
