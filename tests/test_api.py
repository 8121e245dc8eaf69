"""The public API: plan / apply / prune contracts, bad input, atomicity, save / load."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import surgeon
import surgeon_models as zoo
from surgeon import NothingToPrune, SurgeryError, TraceFailure

X = torch.randn(1, 3, 16, 16)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)


@pytest.fixture
def tiny() -> nn.Module:
    return zoo.get("tinynet").eval()


def test_trace_exposes_networkx_graph_and_summary(tiny):
    g = surgeon.trace(tiny, X)
    assert g.nx.number_of_nodes() > 0 and all("map" in d for *_, d in g.nx.edges(data=True))
    text = g.summary()
    assert "prunable" in text and "frozen: model output" in text and "frozen: model input" in text
    assert any("conv1.weight[dim 0]" in str(gr) for gr in g.groups)


def test_removed_lists_every_module_that_loses_entries(tiny):
    plan = surgeon.plan(tiny, X, ratio=0.5)
    removed = plan.removed()
    assert set(removed) == {"conv1", "bn1", "conv2", "bn2", "fc"}
    assert all(v["out"] == sorted(v["out"]) and v["in"] == sorted(v["in"]) for v in removed.values())
    assert removed["conv1"]["in"] == [] and len(removed["conv1"]["out"]) == 4
    assert removed["fc"]["out"] == []


def test_apply_returns_same_object_with_updated_attributes(tiny):
    out = surgeon.prune(tiny, X, 0.5)
    assert out is tiny
    assert tiny.conv1.out_channels == tiny.conv1.weight.shape[0] == 4
    assert tiny.bn1.num_features == 4 and tiny.bn1.running_mean.shape == (4,)
    assert "Conv2d(3, 4" in repr(tiny) and tiny.state_dict()["conv1.weight"].shape[0] == 4


def test_plan_does_not_change_the_model(tiny):
    saved = state(tiny)
    surgeon.plan(tiny, X, ratio=0.5)
    assert same_state(tiny, saved)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half", None, True])
def test_bad_ratio(tiny, ratio):
    saved = state(tiny)
    with pytest.raises(ValueError, match="ratio must be a number in \\[0, 1\\)"):
        surgeon.plan(tiny, X, ratio=ratio)
    assert same_state(tiny, saved)


def test_unknown_criterion(tiny):
    with pytest.raises(ValueError, match="unknown criterion 'l7'.*l1"):
        surgeon.plan(tiny, X, criterion="l7")


def test_ignore_must_name_a_submodule(tiny):
    with pytest.raises(ValueError, match="ignore names 'fc2', which is not a module"):
        surgeon.plan(tiny, X, ignore=["fc2"])
    with pytest.raises(ValueError, match="not a submodule of the model"):
        surgeon.plan(tiny, X, ignore=[nn.Linear(2, 2)])


@pytest.mark.parametrize("x", [torch.randn(1, 5, 16, 16), torch.randn(3, 16)])
def test_wrong_input_shape(tiny, x):
    saved = state(tiny)
    with pytest.raises(TraceFailure, match="example inputs of shape"):
        surgeon.plan(tiny, x)
    assert same_state(tiny, saved)


def test_example_inputs_must_be_tensors(tiny):
    with pytest.raises(TypeError, match=r"example_inputs\[0\] must be a torch.Tensor"):
        surgeon.plan(tiny, [1, 2, 3])


def test_value_dependent_branch_is_traced_concretely_with_a_warning():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.c(x)
            return self.c(-x)

    m = Branchy()
    saved = state(m)
    with pytest.warns(surgeon.ValueDependentWarning, match=r"Branchy's forward reads tensor values at .*test_api.py"):
        graph = surgeon.trace(m, X)
    assert graph.traced.method == "concrete"
    assert same_state(m, saved)
    with pytest.raises(TraceFailure, match=r"could not trace Branchy at .*test_api.py.*tracer='concrete'") as e:
        surgeon.trace(m, X, tracer="fx")
    assert "leaf" not in str(e.value)  # the branch is in the root's own forward: a leaf cannot help


def test_leaf_module_freezes_its_channels():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.inner, self.b = nn.Conv2d(3, 8, 3, padding=1), Inner(), nn.Conv2d(8, 8, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(torch.relu(self.b(self.inner(self.a(x)))))

    m = Outer()
    with pytest.warns(surgeon.FrozenGroupWarning, match="unsupported op Inner"):
        plan = surgeon.plan(m, X, leaf_modules=[m.inner])
    assert set(plan.removed()) == {"b", "head"}
    plan.apply()  # the post-surgery re-trace uses the same leaf modules
    assert m.b.out_channels == 4 and m.inner.c.out_channels == 8


def test_nothing_prunable():
    m = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(NothingToPrune, match="nothing prunable"):
        surgeon.plan(m, X)


def test_non_module_rejected():
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        surgeon.plan(lambda x: x, X)


def test_round_to_keeps_multiples():
    m = zoo.get("resnet56").eval()
    surgeon.prune(m, torch.randn(1, 3, 32, 32), 0.3, round_to=8)
    assert all(c.out_channels % 8 == 0 for c in m.modules() if isinstance(c, nn.Conv2d) and c.out_channels > 10)


@pytest.mark.parametrize("round_to", [0, -2, 2.5])
def test_bad_round_to(tiny, round_to):
    with pytest.raises(ValueError, match="round_to must be a positive integer"):
        surgeon.plan(tiny, X, round_to=round_to)


def test_never_prunes_a_group_to_zero(tiny):
    surgeon.prune(tiny, X, 0.99)
    assert tiny.conv1.out_channels == 1


def test_apply_twice_is_an_error(tiny):
    plan = surgeon.plan(tiny, X)
    plan.apply()
    with pytest.raises(ValueError, match="already applied"):
        plan.apply()


def test_apply_verify_runs_the_oracle(tiny, monkeypatch):
    """verify=True compares with the zeroed reference: a reference that computes something else
    makes apply fail and restore the model; verify=False never looks at it."""
    import surgeon.verify as verify

    real = verify.zeroed_reference

    def wrong(original, removed):
        ref = real(original, removed)
        with torch.no_grad():
            next(ref.parameters()).add_(1.0)
        return ref

    monkeypatch.setattr(verify, "zeroed_reference", wrong)
    saved = state(tiny)
    with pytest.raises(surgeon.EquivalenceError, match="zeroed reference.*restored unchanged"):
        surgeon.plan(tiny, X).apply(verify=True)
    assert same_state(tiny, saved)
    surgeon.plan(tiny, X).apply(verify=False)
    assert tiny.conv1.out_channels == 4


def test_failed_apply_restores_the_model_exactly(tiny, monkeypatch):
    """Post-condition 2 (shapes re-checked after surgery) fires and everything is rolled back."""
    import surgeon.surgery as surgery

    def broken(*a, **k):
        raise SurgeryError("injected failure")

    monkeypatch.setattr(surgery, "_shape_check", broken)
    saved, params = state(tiny), {k: id(v) for k, v in tiny.named_parameters()}
    before = repr(tiny)
    with pytest.raises(SurgeryError, match="injected failure.*restored unchanged"):
        surgeon.prune(tiny, X, 0.5)
    assert same_state(tiny, saved) and repr(tiny) == before
    assert {k: id(v) for k, v in tiny.named_parameters()} == params


def test_layer_attribute_check_fires(tiny, monkeypatch):
    """Post-condition 1: a layer whose attributes disagree with its tensors is caught."""
    import dataclasses

    from surgeon import registry

    entry = registry._MODULES[nn.BatchNorm2d]
    broken = dataclasses.replace(entry.layer, sync=lambda m, i, o: None)  # forgets num_features
    monkeypatch.setitem(registry._MODULES, nn.BatchNorm2d, registry.OpEntry(entry.rule, broken))
    saved = state(tiny)
    with pytest.raises(SurgeryError, match="num_features=8"):
        surgeon.prune(tiny, X, 0.5)
    assert same_state(tiny, saved)


def test_shape_check_fires_when_prediction_and_model_disagree(tiny):
    """Post-condition 2: the pruned model is re-traced and every activation's size compared with
    the plan's prediction; here the prediction is corrupted for one activation only."""
    from surgeon.surgery import apply_removal

    plan = surgeon.plan(tiny, X, ratio=0.5)
    removed = plan.removed_positions()
    act = next(p for p, idx in removed.items() if p.kind == "t" and 0 < len(idx) < plan.graph.size(p) - 1)
    keep = sorted(set(range(plan.graph.size(act))) - set(removed[act].tolist()))
    removed[act] = torch.tensor(sorted(removed[act].tolist() + keep[:1])).numpy()
    saved = state(tiny)
    with pytest.raises(SurgeryError, match=f"node {act.ref} dim 1: expected 3 channels, got 4"):
        apply_removal(plan.graph, removed, X)
    assert same_state(tiny, saved)


def test_oracle_catches_a_rule_that_forgets_a_coupling(monkeypatch):
    """A wrong rule whose shapes still line up is caught by apply(verify=True), and rolled back."""
    from surgeon import registry

    class Wrong(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c(torch.maximum(self.a(x), self.b(x)))

    def forgetful(ctx):  # couples only the first input: b's channels are chosen independently
        x = ctx.tensor_inputs()[0]
        for d in range(4):
            ctx.same(ctx.t(x, d), ctx.t(ctx.node, d))
        for ref in ctx.tensor_inputs()[1:]:
            ctx.unused_input(ref)

    monkeypatch.setitem(registry._FUNCTIONS, torch.maximum, registry.OpEntry(forgetful))
    torch.manual_seed(0)
    m = Wrong().eval()
    with torch.no_grad():
        m.b.weight.copy_(m.a.weight.flip(0))  # a and b rank their channels in opposite orders
    saved = state(m)
    with pytest.raises(surgeon.EquivalenceError, match="differs from the zeroed reference"):
        surgeon.plan(m, X, ratio=0.5).apply(verify=True)
    assert same_state(m, saved)


def test_save_load_round_trip(tmp_path):
    m = zoo.get("resnet18").eval()
    x = torch.randn(1, 3, 32, 32)
    surgeon.prune(m, x, 0.5)
    path = surgeon.save(m, tmp_path / "pruned.pt")
    fresh = zoo.get("resnet18").eval()
    surgeon.load(fresh, path)
    assert torch.equal(fresh(x), m(x)) and repr(fresh) == repr(m)
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "surgeon-pruned-v1"


def test_load_rejects_other_files_and_leaves_model_unchanged(tmp_path):
    m = zoo.get("tinynet")
    saved = state(m)
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a surgeon checkpoint"):
        surgeon.load(m, bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable surgeon checkpoint"):
        surgeon.load(m, junk)
    other = zoo.get("resnet56")
    surgeon.prune(other, torch.randn(1, 3, 32, 32), 0.5)
    surgeon.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="architecture it was pruned from"):
        surgeon.load(m, tmp_path / "other.pt")
    assert same_state(m, saved)


def test_masked_model_must_be_unmasked_first(tiny):
    surgeon.mask(tiny, 0.5)
    with pytest.raises(ValueError, match="carries a torch.nn.utils.prune mask.*remove_masks"):
        surgeon.plan(tiny, X)
    surgeon.remove_masks(tiny)
    assert surgeon.plan(tiny, X).removed()


def test_dict_outputs_are_never_pruned():
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return {"logits": self.head(torch.relu(self.a(x)))}

    m = DictOut()
    surgeon.prune(m, X, 0.5)
    assert m.head.out_channels == 4 and m.a.out_channels == 4


def test_public_count_is_the_function(tiny):
    assert surgeon.count(tiny, X).params == sum(p.numel() for p in tiny.parameters())
