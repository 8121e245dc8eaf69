"""Tests for surgeon.count: hand-computed MACs, params, and torch-pruning cross-check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from surgeon.count import Counts, NodeCount, count, format_count
from patterns import Dense  # noqa: E402

# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNet18Like(nn.Module):
    """ResNet-18 topology (stem, 4 stages x 2 BasicBlocks, avgpool, fc)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w[0], 7, 2, 3, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, cin = [], w[0]
        for i, c in enumerate(w):
            layers += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class DepthwiseNet(nn.Module):
    """MobileNet-style depthwise-separable blocks with biased convs and ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6())
        self.dw2 = nn.Conv2d(32, 64, 3, 2, 1, groups=32)  # channel multiplier 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw2(self.pw(self.dw(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(64, 32)
        self.norm = nn.LayerNorm(32)
        self.fc3 = nn.Linear(32, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.norm(self.fc2(self.act(self.fc1(x)))))


# ---------------------------------------------------------------------------
# hand-computed single layers
# ---------------------------------------------------------------------------

# (layer, input shape, expected MACs worked out by hand)
SINGLE_LAYERS = [
    # 16*16 outputs * 8 ch * (3 in * 3*3)
    pytest.param(nn.Conv2d(3, 8, 3, padding=1), (1, 3, 16, 16), 16 * 16 * 8 * 3 * 9, id="conv3x3"),
    # batch 2, stride 2 -> 8x8 outputs: 2*8*8*8 * (4*9)
    pytest.param(nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), (2, 4, 16, 16),
                 2 * 8 * 8 * 8 * 4 * 9, id="conv-stride2-batch2"),
    # depthwise: each output sees 1 input channel: 8*10*10 * (1*9)
    pytest.param(nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 10, 10), 8 * 100 * 9, id="depthwise"),
    # grouped 1x1, groups=4: 16*5*5 outputs * (8/4 in)
    pytest.param(nn.Conv2d(8, 16, 1, groups=4), (1, 8, 5, 5), 16 * 25 * 2, id="grouped1x1"),
    # Conv1d: length 20-5+1=16 -> 6*16 * (4*5)
    pytest.param(nn.Conv1d(4, 6, 5), (1, 4, 20), 6 * 16 * 4 * 5, id="conv1d"),
    # Conv3d: 4*4*4*4 outputs * (2*27)
    pytest.param(nn.Conv3d(2, 4, 3, padding=1), (1, 2, 4, 4, 4), 4 * 64 * 2 * 27, id="conv3d"),
    # ConvTranspose: 4*5*5 inputs * (6 out) * 2*2 taps
    pytest.param(nn.ConvTranspose2d(4, 6, 2, stride=2), (1, 4, 5, 5), 100 * 6 * 4, id="convT"),
    # grouped ConvTranspose: 100 inputs * (6/2 out) * 9 taps
    pytest.param(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), (1, 4, 5, 5), 100 * 3 * 9,
                 id="convT-groups"),
    # Linear: 3 rows * 7 outputs * 10 inputs
    pytest.param(nn.Linear(10, 7), (3, 10), 3 * 7 * 10, id="linear"),
    # Linear on tokens: 2*5 rows * 7 * 10
    pytest.param(nn.Linear(10, 7, bias=False), (2, 5, 10), 2 * 5 * 7 * 10, id="linear-3d"),
]


@pytest.mark.parametrize("wrap", ["module", "sequential"])
@pytest.mark.parametrize(("layer", "shape", "expected"), SINGLE_LAYERS)
def test_single_layer_macs_match_hand_count(
    layer: nn.Module, shape: tuple[int, ...], expected: int, wrap: str
) -> None:
    # tracing the bare layer goes through F.conv2d/F.linear (functional path);
    # wrapping it in Sequential makes it a call_module node (module path)
    model = layer if wrap == "module" else nn.Sequential(layer)
    c = count(model, torch.randn(shape))
    assert c.macs == expected
    assert c.params == sum(p.numel() for p in layer.parameters())
    assert isinstance(c.macs, int) and isinstance(c.params, int)


def test_functional_conv_with_own_parameters_is_counted() -> None:
    class FunctionalConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 2, 3, 3))  # groups=2 -> in 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight, padding=1, groups=2)

    c = count(FunctionalConv(), torch.randn(1, 4, 6, 6))
    assert c.macs == 8 * 36 * 2 * 9
    assert c.params == 8 * 2 * 9
    assert sum(n.params for n in c.per_node) == c.params


def test_matmul_counts_inner_dimension() -> None:
    class Attn(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return q @ k.transpose(-1, -2)

    c = count(Attn(), (torch.randn(2, 5, 8), torch.randn(2, 6, 8)))
    assert c.by_kind()["matmul"] == 2 * 5 * 6 * 8
    assert c.macs == 2 * 5 * 6 * 8  # transpose is free


@pytest.mark.parametrize("heads_kv", [3, 1], ids=["mha", "gqa"])
def test_attention_counts_both_products(heads_kv: int) -> None:
    """F.scaled_dot_product_attention(q (B, H, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev)):
    q k^T costs B*H*L*S*E, the weights times v B*H*L*S*Ev (grouped query attention costs the same
    per query head)."""
    class Sdpa(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=heads_kv != 3)

    b, h, l, s, e, ev = 2, 3, 5, 7, 4, 6
    c = count(Sdpa(), (torch.randn(b, h, l, e), torch.randn(b, heads_kv, s, e), torch.randn(b, heads_kv, s, ev)))
    assert c.by_kind()["attention"] == b * h * l * s * e + b * h * l * s * ev == c.macs


def test_cheap_ops_count_output_elements_and_shape_ops_are_free() -> None:
    class Cheap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(4)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.pool(F.relu(self.bn(x)))            # 256 + 256 + 64
            y = y + y                                     # 64
            return torch.cat([y, y], 1).view(1, -1)       # 0

    c = count(Cheap(), torch.randn(1, 4, 8, 8))
    kinds = c.by_kind()
    assert kinds["norm"] == 256
    assert kinds["activation"] == 256
    assert kinds["pool"] == 64
    assert kinds["elementwise"] == 64
    assert kinds["shape"] == 0
    assert c.macs == 256 + 256 + 64 + 64


def test_per_node_entries_describe_the_graph() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    c = count(model, torch.randn(1, 3, 5, 5))
    assert all(isinstance(n, NodeCount) for n in c.per_node)
    conv = next(n for n in c.per_node if n.kind == "conv")
    assert (conv.op, conv.module, conv.params) == ("Conv2d", "0", 4 * 3 * 9 + 4)
    assert sum(n.macs for n in c.per_node) == c.macs


# ---------------------------------------------------------------------------
# params and batch semantics
# ---------------------------------------------------------------------------


def test_shared_and_unused_parameters_are_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 6)
            self.b.weight = self.a.weight  # tied
            self.unused = nn.Linear(3, 2)  # never called in forward

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    c = count(Tied(), torch.randn(1, 6))
    assert c.params == 36 + 6 + 6 + (6 + 2)
    assert c.macs == 2 * 36
    assert sum(n.params for n in c.per_node) == 36 + 6 + 6  # unused ones are on no node


def test_macs_are_for_the_whole_batch() -> None:
    model = ResNet18Like()
    one = count(model, torch.randn(1, 3, 32, 32))
    four = count(model, torch.randn(4, 3, 32, 32))
    assert one.method == "fx"
    assert four.macs == 4 * one.macs
    assert four.params == one.params
    assert (one.batch_size, four.batch_size) == (1, 4)


def test_count_restores_modes_and_leaves_bn_statistics_alone() -> None:
    model = ResNet18Like().train()
    model.stem[1].eval()  # a deliberately frozen BN must stay frozen
    before = model.stem[1].running_mean.clone(), model.layers[0].bn1.running_mean.clone()
    count(model, torch.randn(2, 3, 32, 32))
    assert model.training and model.layers[0].bn1.training
    assert not model.stem[1].training
    assert torch.equal(model.stem[1].running_mean, before[0])
    assert torch.equal(model.layers[0].bn1.running_mean, before[1])


def test_untraceable_model_falls_back_to_hooks() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if y.sum() > 0:  # symbolic_trace cannot follow this
                y = -y
            return self.fc(F.relu(y).mean((2, 3)))

    c = count(DataDependent(), torch.randn(1, 3, 6, 6))
    assert c.method == "hooks"
    assert c.by_kind() == {"conv": 36 * 4 * 27, "linear": 2 * 4}  # functional ops unseen
    assert c.params == 4 * 27 + 4 + 8 + 2


# ---------------------------------------------------------------------------
# errors and formatting
# ---------------------------------------------------------------------------


def test_count_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="torch.nn.Module"):
        count("resnet", torch.randn(1, 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"example_inputs\[0\] must be a torch.Tensor"):
        count(nn.Linear(3, 3), (5,))
    with pytest.raises(TypeError, match="example_inputs must be"):
        count(nn.Linear(3, 3), "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (4_110_000_000, "4.11 G"),
        (25_600_000, "25.6 M"),
        (11_689_512, "11.7 M"),
        (1_234, "1.23 K"),
        (512, "512"),
        (0, "0"),
        (999_499, "999 K"),
        (999_500, "1.00 M"),
        (9_996, "10.0 K"),
        (1.5e12, "1.50 T"),
        (-2_500, "-2.50 K"),
        (12.5, "12.5"),
    ],
)
def test_format_count(n: float, text: str) -> None:
    assert format_count(n) == text


def test_format_count_rejects_non_numbers() -> None:
    with pytest.raises(TypeError, match="expects a number"):
        format_count("12")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        format_count(float("nan"))


def test_counts_str_is_human_readable() -> None:
    assert str(Counts(macs=4_110_000_000, params=25_600_000)) == "4.11 GMACs, 25.6 M params"


# ---------------------------------------------------------------------------
# kinds come from the op registry
# ---------------------------------------------------------------------------


def test_a_registered_layer_counts_as_its_spec_says(monkeypatch) -> None:
    """Registered with the Linear spec (macs="linear"), a user's layer called as one op (the
    recording tracer keeps registered layers whole) costs rows x out x in, not its output size."""
    import surgeon
    from surgeon import registry

    monkeypatch.setattr(registry, "_MODULES", dict(registry._MODULES))
    spec = registry.layer_spec(nn.Linear(1, 1))
    registry.register_module(Dense, spec.couple, layer=spec)
    model = nn.Sequential(Dense(10, 7), nn.ReLU(), Dense(7, 3))
    x = torch.randn(4, 10)
    graph = surgeon.trace(model, x, tracer="concrete")
    c = count(model, x, traced=graph.traced.gm)
    assert [(n.module, n.kind, n.macs) for n in c.per_node if n.module is not None] == [
        ("0", "linear", 4 * 7 * 10), ("1", "activation", 4 * 7), ("2", "linear", 4 * 3 * 7)]


class ConvRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


def test_parameter_free_kinds_come_from_the_registry(monkeypatch) -> None:
    """count asks the registry, not the op's name: F.relu re-registered as "shape" costs nothing,
    and a function registered without a kind keeps the one it had (F.conv_transpose2d)."""
    from surgeon import registry, rules

    assert count(ConvRelu(), torch.randn(1, 3, 2, 2)).by_kind() == {"conv": 4 * 4 * 3, "activation": 16}
    monkeypatch.setattr(registry, "_FUNCTIONS", dict(registry._FUNCTIONS))
    registry.register_function(F.relu, rules.elementwise, macs="shape")
    assert count(ConvRelu(), torch.randn(1, 3, 2, 2)).by_kind() == {"conv": 4 * 4 * 3, "shape": 0}
    assert registry.mac_kind("call_function", F.conv_transpose2d) == "conv_transpose"
    registry.register_function(F.conv_transpose2d, rules.elementwise)  # a rule, no kind given
    assert registry.mac_kind("call_function", F.conv_transpose2d) == "conv_transpose"


# ---------------------------------------------------------------------------
# cross-check against torch-pruning's counter
# ---------------------------------------------------------------------------
#
# torch_pruning.utils.count_ops_and_params is a ptflops-style forward-hook
# counter.  Systematic differences, by design:
#   * it sees nn.Module calls only: F.relu, `x + y`, torch.flatten count 0;
#   * conv / linear add the bias: conv + output elements, linear + out_features
#     (once, not per row); we count multiply-accumulates only;
#   * BatchNorm/LayerNorm/GroupNorm/InstanceNorm: 2 x input elements (1 x if
#     not affine); we count output elements once;
#   * pooling: input elements; we count output elements;
#   * ConvTranspose uses the *output* spatial size in the conv formula, so it
#     reports stride^d x our (correct) count;
#   * it returns the average per sample (divides by batch size), as a float;
#     we return the total for the batch given.
# Params are identical (both sum model.parameters()).

@pytest.fixture
def tp():
    """torch-pruning, for the cross-checks only: the hand counts above run without it."""
    return pytest.importorskip("torch_pruning")


_TP_ACTIVATIONS = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU)


def _tp_expected_for(module: nn.Module, kind: str, our_macs: int) -> int | None:
    """torch-pruning's number for a module call we counted, from our number.

    Returns None for pools, whose torch-pruning count (input elements) cannot
    be derived from ours (output elements).
    """
    if kind == "linear":
        return our_macs + (module.out_features if module.bias is not None else 0)
    if kind == "conv":
        out_elements = our_macs // math.prod(module.weight.shape[1:])
        return our_macs + (out_elements if module.bias is not None else 0)
    if kind == "norm":
        affine = getattr(module, "affine", getattr(module, "elementwise_affine", False))
        return our_macs * (2 if affine else 1)
    if kind == "activation":
        return our_macs if isinstance(module, _TP_ACTIVATIONS) else 0
    if kind == "pool":
        return None
    return 0


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        pytest.param(lambda: ResNet18Like(width=64, num_classes=100), (1, 3, 64, 64), id="resnet18"),
        pytest.param(DepthwiseNet, (1, 3, 32, 32), id="depthwise"),
        pytest.param(MLP, (1, 20), id="mlp"),
    ],
)
def test_cross_check_with_torch_pruning(tp, make, shape: tuple[int, ...]) -> None:
    model = make().eval()
    x = torch.randn(shape)
    ours = count(model, x)
    tp_macs, tp_params, tp_layers, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)

    assert ours.params == tp_params

    # conv + linear (the MACs that matter) agree exactly, up to the bias adds
    weighted = [n for n in ours.per_node if n.kind in ("conv", "linear")]
    assert weighted
    for n in weighted:
        module = model.get_submodule(n.module)
        assert tp_layers[module] == _tp_expected_for(module, n.kind, n.macs), n.name

    # the whole total is reproduced exactly from ours + the documented conventions
    expected_total = 0
    for n in ours.per_node:
        if n.module is None:
            continue  # functional op: invisible to torch-pruning
        module = model.get_submodule(n.module)
        tp_value = _tp_expected_for(module, n.kind, n.macs)
        if tp_value is None:  # pool: counts input elements, >= our output elements
            assert tp_layers[module] >= n.macs
            tp_value = tp_layers[module]
        expected_total += tp_value
    assert tp_macs == expected_total

    if len(weighted) > 10:  # on a real CNN the conventions barely matter
        assert tp_macs == pytest.approx(ours.macs, rel=0.01)


def test_torch_pruning_reports_per_sample_we_report_per_batch(tp) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.Conv2d(8, 4, 1, bias=False))
    x = torch.randn(4, 3, 10, 10)
    tp_macs, _ = tp.utils.count_ops_and_params(model, x)
    assert count(model, x).macs == 4 * tp_macs


def test_torch_pruning_overcounts_conv_transpose_by_stride_squared(tp) -> None:
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 2, stride=2, bias=False))
    x = torch.randn(1, 4, 5, 5)
    tp_macs, _ = tp.utils.count_ops_and_params(model, x)
    ours = count(model, x).macs
    assert ours == 100 * 6 * 4
    assert tp_macs == 4 * ours
