"""capture.py: shapes recorded on the meta device without running what the registry already knows
(same-shape ops, conv / linear output shapes), re-running the graph after surgery, module lookup."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

import surgeon
from surgeon.capture import rerun_shapes, submodule, trace_fx
from surgeon.registry import output_shape

CONVS = [
    (nn.Conv1d(4, 6, 3), (2, 4, 17)),
    (nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2), (4, 17)),  # unbatched
    (nn.Conv2d(3, 8, 7, stride=2, padding=3), (1, 3, 224, 224)),
    (nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(0, 2), dilation=(2, 1)), (2, 3, 15, 16)),
    (nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=4), (1, 4, 9, 10)),
    (nn.Conv2d(4, 8, 3, padding="valid", stride=3), (1, 4, 10, 11)),
    (nn.Conv2d(4, 8, 3, padding=2, padding_mode="reflect"), (1, 4, 6, 6)),
    (nn.Conv2d(4, 8, 3, padding=1, padding_mode="circular", stride=2), (1, 4, 7, 6)),
    (nn.Conv3d(2, 3, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (1, 2, 4, 9, 9)),
    (nn.Linear(12, 5), (3, 7, 12)),
    (nn.Linear(12, 5), (12,)),
    (nn.BatchNorm2d(4).eval(), (2, 4, 5, 5)),
    (nn.BatchNorm1d(6, affine=False).eval(), (3, 6)),
]


@pytest.mark.parametrize("layer,shape", CONVS, ids=[f"{type(m).__name__}-{i}" for i, (m, _) in enumerate(CONVS)])
def test_layer_output_shape_without_running_matches_torch(layer, shape):
    x = torch.randn(shape)
    assert output_shape(layer, (x,), {}) == tuple(layer(x).shape)


def test_layer_output_shape_refuses_inputs_the_layer_refuses():
    with pytest.raises(RuntimeError, match="expects 3 input channels"):
        output_shape(nn.Conv2d(3, 4, 3), (torch.empty(1, 5, 8, 8, device="meta"),), {})
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        output_shape(nn.Conv2d(3, 4, 5), (torch.empty(1, 3, 2, 2, device="meta"),), {})
    with pytest.raises(RuntimeError, match="expects 12 input features"):
        output_shape(nn.Linear(12, 4), (torch.empty(2, 10, device="meta"),), {})
    with pytest.raises(RuntimeError, match="BatchNorm2d.weight has 4 entries"):
        output_shape(nn.BatchNorm2d(4), (torch.empty(1, 6, 3, 3, device="meta"),), {})


def test_output_shape_is_unknown_for_custom_forwards_and_extra_arguments():
    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x)[:, :2]

    x = torch.randn(1, 3, 8, 8)
    assert output_shape(MyConv(3, 4, 3), (x,), {}) is None
    assert output_shape(nn.Conv2d(3, 4, 3), (x, x), {}) is None
    assert output_shape(nn.ReLU(), (x,), {}) is None  # no layer spec: same-shape ops are skipped elsewhere
    assert output_shape(nn.InstanceNorm2d(3), (x,), {}) is None  # its channel dim depends on batching: run


class _Acts(nn.Module):
    """Every op that shape propagation skips (same shape) or computes from the spec (conv, linear)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.acts = nn.Sequential(nn.ReLU6(), nn.Hardswish(), nn.Dropout(0.2), nn.Identity(), nn.GELU())
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.nn.functional.hardtanh(self.acts(self.conv(x)), -1.0, 1.0)
        y = torch.relu(self.bn(y)).mean((2, 3))
        return self.fc(y)


def test_recorded_shapes_match_a_real_forward():
    m = _Acts().eval()
    x = torch.randn(2, 3, 9, 9)
    traced = trace_fx(m, x, method="fx")
    shapes: dict[str, tuple] = {}
    hooks = [sub.register_forward_hook(lambda mod, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
             for name, sub in m.named_modules() if name and not list(sub.children())]
    m(x)
    for h in hooks:
        h.remove()
    seen = 0
    for node in traced.gm.graph.nodes:
        if node.op == "call_module" and str(node.target) in shapes:
            assert tuple(node.meta["tensor_meta"].shape) == shapes[str(node.target)], node
            seen += 1
    assert seen == len(shapes) == 8  # conv, 5 activations / dropout / identity, bn, fc


class _Binary(nn.Module):
    """Binary ops whose output shape is computed as a broadcast (OpEntry.broadcast), and operands
    for which that shortcut must not be taken (integers, mixed dtypes): the op then runs."""

    def forward(self, x, scale):
        a = x + scale                       # (2, 4, 5, 5) + (1, 4, 1, 1)
        b = torch.mul(a, 0.5) - x[:, :1]    # a Python number, then a (2, 1, 5, 5) operand
        c = x.long() + 3                    # integers: runs (and stays int64)
        d = x.half() * x[0, 0]              # mixed dtypes (float16 with float32): runs, promotes
        b = b + x
        return torch.maximum(b, scale), c, d


def _real_outputs(model, *inputs):
    """Each fx node's output shape and dtype from fx's own interpreter on real tensors."""
    gm = torch.fx.symbolic_trace(model)
    seen = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                seen[n.name] = (tuple(out.shape), out.dtype)
            return out
    Rec(gm).run(*inputs)
    return seen


def test_broadcast_shapes_without_running_match_torch_and_keep_dtypes():
    x, scale = torch.randn(2, 4, 5, 5), torch.randn(1, 4, 1, 1)
    traced = trace_fx(_Binary(), (x, scale), method="fx")
    real = _real_outputs(_Binary(), x, scale)
    recorded = {n.name: (tuple(n.meta["tensor_meta"].shape), n.meta["tensor_meta"].dtype)
                for n in traced.gm.graph.nodes if isinstance(n.meta.get("tensor_meta"), TensorMetadata)}
    assert recorded == real
    assert len(real) >= 12 and real["add_1"][1] == torch.int64 and real["mul_1"][1] == torch.float32


def test_shape_propagation_refuses_what_torch_refuses():
    class Mismatch(nn.Module):
        def forward(self, x, y):
            return x * y  # (2, 3) * (2, 4)

    with pytest.raises(surgeon.TraceFailure, match="Mismatch"):
        trace_fx(Mismatch(), (torch.randn(2, 3), torch.randn(2, 4)), method="fx")


def test_rerun_shapes_sees_the_pruned_model_and_reads_tensors_live():
    class LayerScale(nn.Module):
        """x * self.gamma reads a parameter with get_attr: the GraphModule holds its own reference."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 3, 1)
            self.gamma = nn.Parameter(torch.ones(1, 8, 1, 1))

        def forward(self, x):
            return self.b(self.a(x) * self.gamma)

    m = LayerScale().eval()
    x = torch.randn(1, 3, 5, 5)
    plan = surgeon.plan(m, x, ratio=0.5)
    before = {n.name: n.meta["tensor_meta"].shape for n in plan.graph.traced.gm.graph.nodes if "tensor_meta" in n.meta}
    plan.apply(verify=True)
    shapes = rerun_shapes(plan.graph.traced)
    assert shapes is not None and shapes["a"].shape[1] == 4 and shapes["mul"].shape[1] == 4
    # the traced graph's own metadata is left as it was
    assert {n.name: n.meta["tensor_meta"].shape for n in plan.graph.traced.gm.graph.nodes
            if "tensor_meta" in n.meta} == before


def test_rerun_shapes_declines_where_only_a_new_trace_is_right():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads = 2
            self.qkv = nn.Linear(8, 8)

        def forward(self, x):
            b, n, c = x.shape
            return self.qkv(x).view(b, n, self.num_heads, c // self.num_heads)

    x = torch.randn(1, 4, 8)
    assert rerun_shapes(trace_fx(Heads(), x, method="fx")) is None  # reads a module int attribute
    assert rerun_shapes(trace_fx(nn.Sequential(nn.Linear(8, 8)), x, method="concrete")) is None
    assert rerun_shapes(trace_fx(nn.Sequential(nn.Linear(8, 8)), x, method="fx")) is not None


def test_rerun_shapes_raises_a_trace_failure_when_the_forward_breaks():
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 4, 4)
    traced = trace_fx(m, x, method="fx")
    broken = copy.deepcopy(m)
    traced.model = broken
    broken[0].out_channels = 6
    broken[0].weight = nn.Parameter(torch.randn(6, 3, 1, 1))
    broken[0].bias = nn.Parameter(torch.randn(6))
    with pytest.raises(surgeon.TraceFailure, match="8 .*channels"):
        rerun_shapes(traced)


def test_submodule_finds_what_get_submodule_finds_and_fails_the_same_way():
    m = nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), nn.Linear(3, 3))
    for name, sub in m.named_modules():
        assert submodule(m, name) is sub
    with pytest.raises(AttributeError):
        submodule(m, "0.7")
    with pytest.raises(AttributeError):
        submodule(m, "0.0.weight")  # a tensor, not a module


def test_constants_fx_makes_while_tracing_survive_for_the_check_after_surgery():
    class Offset(nn.Module):
        """torch.ones(1) in forward: symbolic fx stores it as a constant (_tensor_constant0)."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 3, 1)

        def forward(self, x):
            return self.b(self.a(x) + torch.ones(1))

    m = Offset().eval()
    x = torch.randn(1, 3, 4, 4)
    plan = surgeon.plan(m, x, ratio=0.5)
    assert plan.graph.traced.method == "fx"
    assert any(n.op == "get_attr" for n in plan.graph.traced.gm.graph.nodes)
    assert not any(k.startswith("_tensor_constant") for k in vars(m))  # the model is left as it was
    plan.apply(verify=True)
    assert m.a.out_channels == 4
    clone = copy.deepcopy(plan.graph.traced.gm)  # a traced graph copies (plans are deep-copied to trial them)
    assert clone.graph is not plan.graph.traced.gm.graph


def test_a_deep_copied_trace_propagates_shapes_through_its_own_modules():
    """copy.deepcopy of a trace (the latency allocation prunes copies of a plan) re-runs on the
    copy's modules and nodes, not on the original's."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    traced = trace_fx(m, x, method="fx")
    assert rerun_shapes(traced)["_0"].shape[1] == 8  # the first run caches how each node is shaped
    twin = copy.deepcopy(traced)
    conv = twin.model[0]
    conv.out_channels, conv.weight, conv.bias = 6, nn.Parameter(conv.weight[:6]), nn.Parameter(conv.bias[:6])
    conv2 = twin.model[2]
    conv2.in_channels, conv2.weight = 6, nn.Parameter(conv2.weight[:, :6])
    assert rerun_shapes(twin)["_0"].shape[1] == 6
    assert rerun_shapes(traced)["_0"].shape[1] == 8
