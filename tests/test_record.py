"""The concrete tracer (surgeon/record.py): real forward, recorded graph, sizes with provenance,
keyword inputs and nested outputs, and a model left exactly as it was."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon import NothingToPrune, TraceFailure

import patterns as P  # noqa: E402  (tests/ is on sys.path under pytest)

IMG = torch.randn(2, 3, 16, 16)
IDS = {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}


def exact_cuts_only(plan: surgeon.Plan) -> surgeon.Plan:
    """Keep the cuts whose groups are exactly zeroable (no LayerNorm mixing their channels)."""
    plan.cuts = [c for c in plan.cuts if not c.group.mixing]
    assert plan.cuts, "no exactly-zeroable group was cut"
    return plan


def test_chunk_iterated_in_python_with_a_shape_check_prunes_exactly(check):
    m = P.C2fLike()
    assert surgeon.trace(m, IMG).traced.method == "concrete"
    graph = surgeon.trace(m, IMG)
    group = next(g for g in graph.groups if any(p.ref == "cv1.weight" and p.dim == 0 for p in g.params))
    ch = group.channel_of[surgeon.Pos("p", "cv1.weight", 0)]
    assert (ch[:16] == ch[16:]).all()  # element j of both chunks is one channel
    plan = check(m, IMG, 0.5, criterion="random")
    assert plan.graph.traced.method == "concrete"
    assert m.cv1.out_channels % 2 == 0 and m.cv1.out_channels < 32
    assert m(IMG)["out"].shape == (2, 5, 16, 16)


def test_fx_is_used_when_it_can_trace():
    assert surgeon.trace(P.Shuffle(), IMG).traced.method == "fx"
    assert surgeon.trace(P.Shuffle(), IMG, tracer="concrete").traced.method == "concrete"


@pytest.mark.parametrize("name", ["tinynet", "resnet18", "mobilenet_v2"])
def test_both_tracers_find_the_same_groups(name):
    import surgeon_models as zoo
    m = zoo.get(name).eval()
    x = torch.randn(zoo.input_shape(name))
    a = surgeon.trace(m, x, tracer="fx")
    b = surgeon.trace(m, x, tracer="concrete")
    key = lambda g: sorted(g.layers)  # noqa: E731
    assert sorted((key(g), g.n, g.prunable) for g in a.groups) == sorted((key(g), g.n, g.prunable) for g in b.groups)
    pa, pb = surgeon.plan(m, x, tracer="fx"), surgeon.plan(m, x, tracer="concrete")
    assert pa.before == pb.before and pa.after == pb.after  # MACs / params counted alike


def test_trace_leaves_the_model_exactly_as_it_was():
    class Cachey(nn.Module):
        """YOLO Detect style: forward caches an anchor grid and a shape; a counter moves."""

        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
            self.calls = 0
            self.shape = None

        def forward(self, x):
            self.calls += 1
            if self.shape != x.shape:
                self.anchors = torch.zeros(x.shape[-1], device=x.device)
                self.shape = x.shape
            return self.b(F.relu(self.bn(self.a(x)))) + self.anchors

    m = Cachey()
    m.train()
    m.bn.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    attrs = dict(vars(m))
    graph = surgeon.trace(m, IMG, tracer="concrete")
    assert graph.traced.method == "concrete"
    assert m.training and not m.bn.training and m.a.training
    assert vars(m).keys() == attrs.keys() and m.calls == 0 and m.shape is None
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert type(m.calls) is int
    m(IMG)  # the next real forward still works (nothing left on the meta device)


def test_keyword_inputs_and_dataclass_outputs():
    m = P.HFLike().eval()
    graph = surgeon.trace(m, IDS)
    assert graph.traced.method == "concrete"
    plan = exact_cuts_only(surgeon.plan(m, IDS, ratio=0.5))
    plan.apply(verify=True)
    out = m(**IDS)
    assert out.logits.shape == (2, 3) and len(out.hidden) == 2


def test_forward_with_star_args_and_kwargs(check):
    class Star(nn.Module):
        """forward(self, x, *args, **kwargs), a non-tensor flag, a list output."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x, *args, scale=1.0, **kwargs):
            return [self.b(F.relu(self.a(x))) * scale]

    m = Star()
    check(m, (IMG,), 0.5)
    assert m.a.out_channels == 4


def test_runtime_sizes_prune_and_literal_sizes_freeze_naming_the_line():
    class RuntimeView(nn.Module):
        """x.view(x.size(0), -1) after a shape check: sizes computed at run time follow the cut."""

        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 16, 3)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.a(x), 4)
            if x.shape[1] > 0:
                x = x.view(x.size(0), -1)
            return self.fc(x)

    m = RuntimeView().eval()
    plan = surgeon.plan(m, IMG, ratio=0.5)
    assert plan.graph.traced.method == "concrete"
    plan.apply(verify=True)
    assert m.fc.in_features == 64
    lit = P.LiteralView().eval()
    with pytest.warns(surgeon.FrozenGroupWarning, match=r"hard-coded size 128 in \.view at .*patterns\.py:\d+"):
        with pytest.raises(NothingToPrune):
            surgeon.plan(lit, IMG, ratio=0.5)


def test_size_from_attribute_arithmetic_is_treated_as_hard_coded():
    class AttrProduct(nn.Module):
        """view(b, self.h * self.w, -1): an expression of attributes cannot be updated: frozen."""

        def __init__(self):
            super().__init__()
            self.h, self.w = 2, 4
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv1d(8, 2, 1)

        def forward(self, x):
            if x.shape[0] < 0:
                raise ValueError
            y = self.a(x)
            return self.b(y.reshape(y.shape[0], self.h * self.w, -1))

    with pytest.warns(surgeon.FrozenGroupWarning, match="hard-coded size 8"):
        graph = surgeon.trace(AttrProduct(), IMG)
    assert graph.traced.method == "concrete"
    assert not any(g.prunable and "a" in g.layers for g in graph.groups)


def test_failure_in_user_code_names_the_line_not_surgeon():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x, mask):
            return self.a(x) * mask.view(1, 5, 1, 1)  # mask has the wrong size

    with pytest.raises(TraceFailure, match=r"test_record\.py:\d+ \(return self\.a\(x\) \* mask") as e:
        surgeon.trace(Bad(), (IMG, torch.ones(3)))
    assert "surgeon/" not in str(e.value).split(" at ")[1].split(":")[0]


def test_bad_tracer_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="tracer must be one of"):
        surgeon.trace(P.Shuffle(), IMG, tracer="symbolic")
    with pytest.raises(TypeError, match="str keys"):
        surgeon.trace(P.Shuffle(), {0: IMG})
    with pytest.raises(TypeError, match="example_inputs must be a torch.Tensor"):
        surgeon.trace(P.Shuffle(), "x")


def test_failed_prune_leaves_a_concretely_traced_model_unchanged():
    m = P.C2fLike().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    plan = surgeon.plan(m, IMG, ratio=0.5)

    def boom() -> None:
        raise RuntimeError("injected")

    from surgeon.surgery import apply_removal
    with pytest.raises(surgeon.SurgeryError, match="restored unchanged"):
        apply_removal(plan.graph, plan.removed_positions(), IMG, boom)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.cv1.out_channels == 32


def test_a_size_read_off_another_tensor_freezes_both_groups():
    class Borrowed(nn.Module):
        """b.view(n, a.size(1), -1): a size read off *another* tensor (another group) cannot be
        trusted to follow b's cut: both groups stay, with the reason and the line."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.fc, self.fa = nn.Linear(8 * 64, 2), nn.Linear(8, 2)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            y = b.view(b.shape[0], a.shape[1], -1)
            return self.fc(y.flatten(1)) + self.fa(a.mean((2, 3)))

    m = Borrowed().eval()
    with pytest.warns(surgeon.FrozenGroupWarning, match=r"read off another tensor's size in \.view .*test_record\.py"):
        graph = surgeon.trace(m, torch.randn(2, 3, 8, 8))
    for layer in ("a", "b"):
        assert not any(g.prunable for g in graph.groups if layer in g.layers)


def test_a_size_that_does_not_follow_the_cut_keeps_its_group_whole():
    class CatView(nn.Module):
        """cat([a, b]).view(n, a.size(1) * 2, -1): right only while a and b keep equal widths. The
        pruned model's own forward proves otherwise, and the group is kept whole."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(16 * 16, 3)

        def forward(self, x):
            a = self.a(x)
            y = torch.cat([a, self.b(x)], 1)
            return self.fc(y.view(y.shape[0], a.shape[1] * 2, -1).flatten(1))

    # a's channels score lowest, so in global scope a loses more than b (local scope would cut each
    # producer of the concatenation by the ratio, keeping the widths equal and the view right)
    def a_first(group, tensors):
        import numpy as np
        scores = np.ones(group.n)
        scores[group.channel_of[surgeon.Pos("p", "a.weight", 0)]] = 0.0
        return scores

    m = CatView().eval()
    x = torch.randn(2, 3, 4, 4)
    want = m(x)
    plan = surgeon.plan(m, x, ratio=0.25, criterion=a_first, scope="global")
    assert any("a" in c.group.layers for c in plan.cuts if len(c.remove))
    with pytest.warns(surgeon.FrozenGroupWarning, match=r"kept whole: after the cut.*node view.*test_record\.py"):
        plan.apply(verify=True)
    assert m.a.out_channels == 8 and torch.allclose(m(x), want)


def test_user_leaf_that_caches_tensors_runs_for_real_and_is_restored():
    class Head(nn.Module):
        """A detection head made a leaf: it caches an anchor grid on its first call."""

        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(8, 4, 1)
            self.anchors = None

        def forward(self, x):
            if self.anchors is None or self.anchors.shape[0] != x.shape[-1]:
                self.anchors = torch.arange(x.shape[-1], dtype=x.dtype, device=x.device)
            return self.c(x) + self.anchors

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Conv2d(3, 8, 3, padding=1), Head()

        def forward(self, x):
            return self.head(self.a(x))

    m = Net().eval()
    graph = surgeon.trace(m, IMG, leaf_modules=[m.head])
    assert graph.traced.method == "fx" and m.head.anchors is None
    assert m(IMG).device.type == "cpu" and m.head.anchors.device.type == "cpu"


def test_a_cut_that_breaks_the_forward_is_found_and_kept_whole():
    class CatSplit(nn.Module):
        """cat([a, b]).view(n, a.size(1) * 2, h, w): needs equal widths; after an unequal cut the
        forward raises. The breaking group is found by bisection and kept whole."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.c, self.d, self.fc = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 3, 1), nn.Linear(16, 3)

        def forward(self, x):
            a = self.a(x)
            y = torch.cat([a, self.b(x)], 1)
            y = y.view(y.shape[0], a.shape[1] * 2, y.shape[2], y.shape[3])
            return self.fc(y.mean((2, 3))) + self.d(self.c(x)).mean((2, 3))

    def a_first(group, tensors):
        import numpy as np
        scores = np.arange(group.n, dtype=float)
        pos = surgeon.Pos("p", "a.weight", 0)
        if pos in group.channel_of:
            scores[group.channel_of[pos]] = -1.0
        return scores

    m = CatSplit().eval()
    x = torch.randn(2, 3, 4, 4)
    want = m(x)
    # global scope: a's channels (normalised 0) go first, 7 of a's 8 and 2 of b's; c loses 2
    plan = surgeon.plan(m, x, ratio=0.5, criterion=a_first, scope="global")
    with pytest.warns(surgeon.FrozenGroupWarning, match=r"kept whole: after the cut the model's own forward failed"):
        plan.apply()
    assert m.a.out_channels == 8 and m.c.out_channels < 6  # the breaking group stays, the other is cut
    assert m(x).shape == want.shape


class _Cumsum(nn.Module):
    """conv -> cumsum over channels -> conv (an op surgeon does not map: a frozen group), plus a
    prunable branch d -> e."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.d, self.e = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), 1)) + self.e(torch.relu(self.d(x)))


@pytest.mark.parametrize("call", ["trace", "plan", "prune"])
def test_warnings_name_the_users_line_whatever_the_entry_point(call):
    """record.user_stacklevel: a FrozenGroupWarning raised deep inside surgeon names this file."""
    x = torch.randn(1, 3, 4, 4)
    run = {"trace": lambda: surgeon.trace(_Cumsum(), x), "plan": lambda: surgeon.plan(_Cumsum(), x, ratio=0.5),
           "prune": lambda: surgeon.prune(_Cumsum(), x, 0.5)}[call]
    with pytest.warns(surgeon.FrozenGroupWarning) as record:
        run()
    assert {w.filename for w in record if issubclass(w.category, surgeon.FrozenGroupWarning)} == {__file__}
