"""Latency targets: the lookup table's cache, the allocation against a synthetic latency model, bad
input, and an end-to-end plan checked by the surgical-equivalence oracle. No timing here: every
measurement is a fake whose numbers are known (speed targets live in benchmarks/latency.py)."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

import surgeon
from surgeon.latency import LatencySettings, grid
from surgeon.lut import FORMAT, CacheKey, LatencyTable, Sample, Signature

torch.manual_seed(0)


# ---------------------------------------------------------------------------------- fake timings
def fake_ms(sig: Signature, cin: int, cout: int) -> float:
    """A synthetic layer latency: 1 ms per 1e6 multiply-accumulates (depthwise: c, not c*c)."""
    spatial = math.prod(sig.spatial) if sig.spatial else 1
    per = math.prod(sig.kernel) if sig.kernel else 1
    work = (cout if sig.depthwise else cin * cout) * per * spatial * sig.batch
    return work / 1e6


class CountingMeasure:
    """measure_layers that records how many samples it was asked to time."""

    def __init__(self) -> None:
        self.calls = 0
        self.samples = 0

    def __call__(self, samples, threads):
        self.calls += 1
        self.samples += len(samples)
        return [fake_ms(s.sig, s.cin, s.cout) for s in samples]


def fake_model_ms(model: nn.Module, x: torch.Tensor) -> float:
    """The whole model under ``fake_ms``: the sum over its convs and linears at their real shapes,
    so a latency model built on ``fake_ms`` predicts it exactly."""
    from surgeon.latency import layer_signature
    total = []

    def hook(m, inputs, out):
        found = layer_signature(m, inputs[0].shape)
        assert found is not None, f"fake timing cannot time {m}"
        total.append(fake_ms(*found))
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in hs:
        h.remove()
    return sum(total)


def fake_time_models(models, inputs, threads):
    return [fake_model_ms(m, inputs) for m in models]


class Net(nn.Module):
    """Residual add, depthwise conv, flatten + Linear: groups whose latency depends on neighbours."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(32, 48, 1), nn.BatchNorm2d(48), nn.ReLU(),
                               nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.ReLU(), nn.Conv2d(48, 32, 1))
        self.b = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        return self.fc(torch.flatten(self.b(x), 1))


X = torch.randn(1, 3, 8, 8)


def settings(tmp_path, **kw) -> LatencySettings:
    kw.setdefault("measure_layers", CountingMeasure())
    kw.setdefault("time_models", fake_time_models)
    kw.setdefault("multiple", 1)
    return LatencySettings(cache_dir=tmp_path, progress=False, **kw)


# --------------------------------------------------------------------------------------- cache
SIG = Signature("Conv", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False, (8, 8), 1, True)


def key(**changes) -> CacheKey:
    base = dict(cpu="cpu", cores=2, runtime="onnxruntime", version="1.0", threads=2, batch=1,
                input_shape=(1, 3, 8, 8))
    base.update(changes)
    return CacheKey(**base)


def test_cache_same_key_measures_nothing(tmp_path):
    """A second table with the same key reads every sample from disk."""
    m1 = CountingMeasure()
    LatencyTable(key(), m1, tmp_path, progress=False).ensure([Sample(SIG, 16, 16), Sample(SIG, 16, 32)])
    assert m1.samples == 2
    m2 = CountingMeasure()
    t = LatencyTable(key(), m2, tmp_path, progress=False)
    t.ensure([Sample(SIG, 16, 16), Sample(SIG, 16, 32)])
    assert (m2.calls, m2.samples) == (0, 0)
    assert t[Sample(SIG, 16, 32)] == pytest.approx(fake_ms(SIG, 16, 32))


@pytest.mark.parametrize("change", [{"threads": 1}, {"batch": 4, "input_shape": (4, 3, 8, 8)},
                                    {"version": "2.0"}, {"cpu": "other"}, {"cores": 8},
                                    {"runtime": "torch"}])
def test_cache_other_key_measures_again(tmp_path, change):
    """Any change of the key (threads, batch, runtime or its version, machine) re-measures."""
    LatencyTable(key(), CountingMeasure(), tmp_path, progress=False).ensure([Sample(SIG, 16, 16)])
    m = CountingMeasure()
    LatencyTable(key(**change), m, tmp_path, progress=False).ensure([Sample(SIG, 16, 16)])
    assert m.samples == 1


def test_cache_refresh_and_format(tmp_path):
    """refresh=True re-measures; a file of another format version is ignored."""
    t = LatencyTable(key(), CountingMeasure(), tmp_path, progress=False)
    t.ensure([Sample(SIG, 16, 16)])
    m = CountingMeasure()
    LatencyTable(key(), m, tmp_path, refresh=True, progress=False).ensure([Sample(SIG, 16, 16)])
    assert m.samples == 1
    data = json.loads(t.path.read_text())
    assert data["format"] == FORMAT and data["key"]["threads"] == 2
    data["format"] = FORMAT + 1
    t.path.write_text(json.dumps(data))
    m = CountingMeasure()
    LatencyTable(key(), m, tmp_path, progress=False).ensure([Sample(SIG, 16, 16)])
    assert m.samples == 1


def test_grid_is_aligned():
    assert grid(256) == [32, 64, 128, 192, 256]
    assert grid(24)[-1] == 24 and all(1 <= c <= 24 for c in grid(24))


# ---------------------------------------------------------------------------------- allocation
@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_allocation_meets_synthetic_latency(tmp_path, target):
    """Under a fake latency that is the exact sum of its layers, the plan's prediction is the
    pruned model's latency, at most the target, and one step less would miss it."""
    model = Net().eval()
    dense = fake_model_ms(model, X)
    p = surgeon.plan(model, X, target_latency=target, latency=settings(tmp_path, check=False))
    rep = p.target
    assert isinstance(rep, surgeon.LatencyReport)
    assert rep.dense_ms == pytest.approx(dense)
    assert rep.predicted_ms <= target * dense + 1e-9 < rep.one_step_less_ms
    assert rep.calibration.layer_scale == pytest.approx(1.0)
    p.apply(verify=True)
    assert fake_model_ms(model, X) == pytest.approx(rep.predicted_ms, rel=1e-6)


def test_allocation_respects_caps_and_steps(tmp_path):
    """max_layer_ratio bounds every group; a step of 16 keeps widths multiples of 16, or halves of
    16 below it; a conv's saving depends on both its counts (the 2-D table)."""
    model = Net().eval()
    p = surgeon.plan(model, X, target_latency=0.4, max_layer_ratio=0.75,
                     latency=settings(tmp_path, check=False, multiple=16))
    for cut in p.cuts:
        assert len(cut.remove) <= 0.75 * cut.group.n
        if cut.group.n >= 16 and len(cut.remove):
            assert cut.kept % 16 == 0 or 16 % cut.kept == 0, (cut.group.layers, cut.kept)  # 32, 16 or 8, 4...
    assert p.target.step == 16


def test_round_to_keeps_whole_steps(tmp_path):
    """A user's round_to is a promise about the counts: every cut group keeps a multiple of it
    (never the halves below one step that a measured step allows)."""
    model = Net().eval()
    p = surgeon.plan(model, X, target_latency=0.5, round_to=16, latency=settings(tmp_path, check=False))
    kept = [c.kept for c in p.cuts if len(c.remove)]
    assert kept and all(k % 16 == 0 for k in kept), kept
    assert p.target.step == 16


class Chain(nn.Module):
    """Three conv groups in a row whose channels cost different time: under the fake latency the
    middle one (3x3 convs on both sides) saves the most per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.relu(self.c3(x)).mean((2, 3)))


def test_log_value_spreads_the_cuts(tmp_path):
    """value="log" counts a lost channel as its score times original width / channels left: the plan
    still meets the synthetic target, the group cut hardest under the linear value keeps more, and
    the time comes from more groups."""
    y = torch.randn(1, 3, 16, 16)

    def plan(value):
        p = surgeon.plan(Chain().eval(), y, target_latency=0.3, max_layer_ratio=0.95,
                         latency=settings(tmp_path, check=False, value=value))
        assert p.target.predicted_ms <= 0.3 * p.target.dense_ms + 1e-9
        return p, {c.group.layers[0]: c.kept for c in p.cuts}
    _, linear = plan("linear")
    p, log = plan("log")
    hardest = min(linear, key=linear.get)
    assert log[hardest] > linear[hardest], (linear, log)
    assert sum(k < 32 for k in log.values()) > sum(k < 32 for k in linear.values()), (linear, log)
    p.apply(verify=True)


def test_bad_value():
    with pytest.raises(ValueError, match="choose 'linear'.*or 'log'"):
        LatencySettings(value="sqrt")


def test_allocation_out_of_reach(tmp_path):
    with pytest.raises(ValueError, match="out of reach"):
        surgeon.plan(Net().eval(), X, target_latency=0.01, max_layer_ratio=0.5,
                     latency=settings(tmp_path, check=False))


def test_measured_miss_corrects_the_goal(tmp_path):
    """When the measured model is slower than predicted, the goal is lowered and re-allocated
    until measured latency is within tolerance; the report keeps every round."""
    def slow(models, inputs, threads):  # pruned models run 20% slower than their layers say
        t = [fake_model_ms(m, inputs) for m in models]
        return [t[0]] + [v * 1.2 for v in t[1:]]
    model = Net().eval()
    p = surgeon.plan(model, X, target_latency=0.5, latency=settings(tmp_path, time_models=slow))
    rep = p.target
    assert len(rep.rounds) >= 2 and rep.rounds[1].goal_ms < rep.rounds[0].goal_ms
    assert abs(rep.measured_fraction / 0.5 - 1) <= 0.1
    assert "measured" in p.summary()
    p.apply(verify=True)


def test_next_aim_follows_the_line_through_measured_plans():
    """(goal, measured) fractions: the line through the latest plan and the plan across the target
    if there is one, else dense (1, 1); a ratio where measured latency does not fall with the goal;
    never more than a factor 1.5 from the latest goal."""
    from surgeon.allocate import next_aim
    assert next_aim([(1.0, 1.0), (0.5, 0.6)], 0.5) == pytest.approx(0.375)  # slope 0.8 through dense
    # latest (0.4, 0.45) is under 0.5, (0.5, 0.6) over it: the line through those two (slope 1.5)
    assert next_aim([(1.0, 1.0), (0.5, 0.6), (0.4, 0.45)], 0.5) == pytest.approx(0.4 + 0.05 / 1.5)
    # both plans over 0.5: not their noisy slope (0.2) but the line through dense (slope 0.42 / 0.55)
    assert next_aim([(1.0, 1.0), (0.5, 0.6), (0.45, 0.58)], 0.5) == pytest.approx(0.45 - 0.08 * 0.55 / 0.42)
    assert next_aim([(1.0, 1.0), (0.9, 1.02)], 0.9) == pytest.approx(0.9 * 0.9 / 1.02)  # slower than dense: ratio
    assert next_aim([(1.0, 1.0), (0.5, 0.98)], 0.3) == pytest.approx(0.5 / 1.5)  # the step is bounded


def test_a_fixed_cost_the_model_misses_is_corrected(tmp_path):
    """A runtime with a fixed cost per model run that the layers do not show (every model measures
    its fake latency plus the dense model's layer time again, half of it at dense): predictions
    undershoot pruned plans, and the re-plans along the measured line land within the tolerance."""
    dense_layers = fake_model_ms(Net().eval(), X)

    def fixed(models, inputs, threads):
        return [fake_model_ms(m, inputs) + dense_layers for m in models]
    p = surgeon.plan(Net().eval(), X, target_latency=0.7, latency=settings(tmp_path, time_models=fixed))
    rep = p.target
    assert abs(rep.measured_fraction / 0.7 - 1) <= 0.05, str(rep)
    assert len(rep.rounds) <= 3


def test_a_kept_plan_that_misses_the_target_warns(tmp_path):
    """A runtime where pruning gains nothing (every pruned model measures as slow as dense): the
    corrected goals run out of reach, the closest plan is kept, and a LatencyTargetWarning says
    by how much it misses; a plan that meets its target stays silent."""
    def no_gain(models, inputs, threads):
        dense = fake_model_ms(models[0], inputs)
        return [dense] * len(models)
    with pytest.warns(surgeon.LatencyTargetWarning, match=r"latency target 0.5 of dense not met.*measured 1 \(\+100%\)"):
        p = surgeon.plan(Net().eval(), X, target_latency=0.5, latency=settings(tmp_path, time_models=no_gain))
    assert p.target.measured_fraction == pytest.approx(1.0) and len(p.target.rounds) >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", surgeon.LatencyTargetWarning)
        surgeon.plan(Net().eval(), X, target_latency=0.5, latency=settings(tmp_path))


def test_cache_is_reused_by_plans(tmp_path):
    """A second plan of the same model measures no layer."""
    surgeon.plan(Net().eval(), X, target_latency=0.5, latency=settings(tmp_path, check=False))
    m = CountingMeasure()
    surgeon.plan(Net().eval(), X, target_latency=0.5, latency=settings(tmp_path, check=False, measure_layers=m))
    assert m.samples == 0


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"target_latency": -0.5}, r"target_latency must be a number in \(0, 1\]"),
    ({"target_latency": 1.5}, r"target_latency must be a number in \(0, 1\]"),
    ({"target_latency": 0.0}, r"target_latency must be a number in \(0, 1\]"),
    ({"target_latency_ms": -3}, "target_latency_ms must be a positive number of milliseconds"),
    ({"target_latency_ms": True}, "target_latency_ms must be a positive number"),
    ({"target_latency": 0.5, "ratio": 0.3}, "either ratio or a target"),
    ({"target_latency": 0.5, "target_macs": 0.3}, "give one target"),
    ({"target_latency": 0.5, "target_latency_ms": 3.0}, "give one target"),
])
def test_bad_latency_targets(kwargs, match):
    model = Net()
    with pytest.raises(ValueError, match=match):
        surgeon.plan(model, X, **kwargs)


def test_bad_settings_type():
    with pytest.raises(TypeError, match="LatencySettings"):
        surgeon.plan(Net(), X, target_latency=0.5, latency={"threads": 2})


def test_prune_with_latency_ms(tmp_path):
    """surgeon.prune passes target_latency_ms through; the result is verified."""
    model = Net().eval()
    goal = 0.6 * fake_model_ms(model, X)
    surgeon.prune(model, X, target_latency_ms=goal, latency=settings(tmp_path), verify=True)
    assert fake_model_ms(model, X) <= goal * 1.1


def test_iterative_latency_steps(tmp_path):
    """steps=2: the second step's goal is a fraction of the *original* latency."""
    model = Net().eval()
    dense = fake_model_ms(model, X)
    plans = surgeon.prune_iteratively(model, X, target_latency=0.4, steps=2,
                                      latency=settings(tmp_path, check=False), verify=True)
    assert plans[0].target.requested_ms == pytest.approx(0.7 * dense)
    assert plans[1].target.requested_ms == pytest.approx(0.4 * dense)
    assert fake_model_ms(model, X) <= 0.4 * dense + 1e-9
    with pytest.raises(ValueError, match="target_latency_ms needs steps=1"):
        surgeon.prune_iteratively(Net(), X, target_latency_ms=1.0, steps=2)


# ------------------------------------------------------------------------------------- runtimes
OTHER_THREADS = 1 if torch.get_num_threads() != 1 else 2  # a count that differs from the current one


def test_cache_key_per_runtime(tmp_path):
    """Each runtime's key holds its own name and version, so its table lives in its own file."""
    import onnxruntime
    ort_key = CacheKey.current(2, (1, 3, 8, 8))
    torch_key = CacheKey.current(2, (1, 3, 8, 8), "torch")
    assert (ort_key.runtime, ort_key.version) == ("onnxruntime", onnxruntime.__version__)
    assert (torch_key.runtime, torch_key.version) == ("torch", torch.__version__)
    assert ort_key.digest() != torch_key.digest()
    paths = {LatencyTable(k, CountingMeasure(), tmp_path, progress=False).path for k in (ort_key, torch_key)}
    assert len(paths) == 2 and {p.name.split("-")[0] for p in paths} == {"onnxruntime", "torch"}


@pytest.mark.parametrize("make", [
    pytest.param(lambda: LatencySettings(runtime="tvm"), id="settings"),
    pytest.param(lambda: CacheKey.current(2, (1, 3, 8, 8), "tvm"), id="cache-key"),
    pytest.param(lambda: LatencyTable(key(runtime="tvm")), id="table-default-measure"),
])
def test_bad_runtime(make):
    with pytest.raises(ValueError, match=r"unknown latency runtime 'tvm'; choose from 'onnxruntime', 'torch'"):
        make()


@pytest.mark.parametrize(("module", "shape"), [
    pytest.param(nn.Conv2d(8, 16, 3, stride=2, padding=1), (2, 8, 9, 9), id="conv-stride"),
    pytest.param(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False), (1, 8, 8, 8), id="depthwise"),
    pytest.param(nn.Conv2d(4, 8, 4, padding="same"), (1, 4, 7, 7), id="uneven-same-pads",
                 marks=pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")),
    pytest.param(nn.Conv1d(4, 8, 3, padding=1), (1, 4, 10), id="conv1d"),
    pytest.param(nn.ConvTranspose2d(8, 4, 2, stride=2), (1, 8, 5, 5), id="conv-transpose"),
    pytest.param(nn.Linear(12, 5), (2, 3, 12), id="linear-3d"),
])
def test_torch_layer_is_the_layer(module, shape):
    """The module measure_torch times computes what the layer computes: same output shape, from
    the layer's own signature and counts."""
    from surgeon.latency import layer_signature
    from surgeon.lut import _layer_call
    x = torch.randn(shape)
    sig, cin, cout = layer_signature(module, shape)
    with torch.no_grad():
        want = module(x).shape
        got = _layer_call(Sample(sig, cin, cout))().shape
    rows = math.prod(shape[:-1])
    assert got == (torch.Size([rows, want[-1]]) if isinstance(module, nn.Linear) else want)


def test_measure_torch_one_time_per_sample_and_threads_restored():
    """A tiny real timing (a 1x1 conv, 2 runs): one positive time per sample; the thread count is
    the same afterwards. The values themselves are not checked (the machine is noisy)."""
    from surgeon.lut import measure_torch
    sig = Signature("Conv", (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), False, (4, 4), 1, True)
    before = torch.get_num_threads()
    ms = measure_torch([Sample(sig, 4, 4), Sample(sig, 4, 8), Sample(sig, 8, 8)], OTHER_THREADS, runs=2, warmup=1)
    assert len(ms) == 3 and all(t > 0 for t in ms)
    assert torch.get_num_threads() == before


def test_measure_torch_times_with_the_threads_in_inference_mode(monkeypatch):
    """While the samples are timed: ``threads`` torch threads, inference mode; each callable runs."""
    import surgeon.timing
    from surgeon.lut import measure_torch
    from surgeon.timing import Timing
    seen = []

    def fake(fns, runs, warmup):
        seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled()))
        outs = [fn() for fn in fns.values()]
        assert [o.shape[1] for o in outs] == [4, 8]
        return {n: Timing(float(i + 1), 0.0, 0.0, runs) for i, n in enumerate(fns)}

    monkeypatch.setattr(surgeon.timing, "time_side_by_side", fake)
    sig = Signature("Conv", (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), False, (4, 4), 1, True)
    before = torch.get_num_threads()
    assert measure_torch([Sample(sig, 4, 4), Sample(sig, 4, 8)], OTHER_THREADS) == [1.0, 2.0]
    assert seen == [(OTHER_THREADS, True)] and torch.get_num_threads() == before


def padded_ms(sig: Signature, cin: int, cout: int, block: int = 16, block_in: int | None = None) -> float:
    """``fake_ms`` with output channels paid in blocks of ``block`` and input channels in blocks of
    ``block_in`` (default the same): a kernel that pads."""
    if sig.depthwise:
        return fake_ms(sig, cin, cout)
    bi = block if block_in is None else block_in
    return fake_ms(sig, -(-cin // bi) * bi, -(-cout // block) * block)


@pytest.mark.parametrize("block, block_in, found", [(16, 16, 16), (8, 8, 8), (1, 1, 1), (16, 1, 16), (1, 8, 8)])
def test_probe_finds_the_measured_multiple_on_both_sides(tmp_path, block, block_in, found):
    """The channel step is what the timings show (padded to 16, to 8, or linear), probed on output
    and input counts of the model's own convs; a penalty on either side sets it."""
    from surgeon.latency import LatencyModel, probe_multiple
    from surgeon.lut import CacheKey, LatencyTable
    graph = surgeon.trace(Net().eval(), X)
    table = LatencyTable(CacheKey.current(1, X.shape), lambda samples, threads: [
        padded_ms(s.sig, s.cin, s.cout, block, block_in) for s in samples], tmp_path, progress=False)
    probe = probe_multiple(LatencyModel(graph, table), table)
    assert probe.multiple == found
    assert {side for _, side, _, _ in probe.evidence} == {"in", "out"} and len(probe.evidence) == 4
    assert str(probe).count(" in at ") == 2 and str(probe).count(" out at ") == 2


def test_plan_in_torch_runtime(tmp_path, monkeypatch):
    """runtime="torch" end to end with faked timings: the layers go to measure_torch (never to ONNX
    Runtime), the probe finds the fake's step of 16 on the torch table, whole models are timed with
    the torch backend and no ONNX export, the table file is the torch one; the plan is verified."""
    import surgeon.lut
    import surgeon.timing
    from surgeon.timing import Timing
    layers: list[Sample] = []
    backends: list[tuple[str, object]] = []

    def fake_measure(samples, threads):
        layers.extend(samples)
        return [padded_ms(s.sig, s.cin, s.cout) for s in samples]

    def no_onnx(samples, threads):
        raise AssertionError("an ONNX Runtime measurement in a torch-runtime plan")

    def fake_time_models(models, x, backend, *, files=None, **kw):
        backends.append((backend, files))
        return {n: Timing(fake_model_ms(m, x), 0.0, 0.0, 1) for n, m in models.items()}

    monkeypatch.setattr(surgeon.lut, "measure_torch", fake_measure)
    monkeypatch.setattr(surgeon.lut, "measure_onnx", no_onnx)
    monkeypatch.setattr(surgeon.timing, "time_models", fake_time_models)
    model = Net().eval()
    dense = fake_model_ms(model, X)
    p = surgeon.plan(model, X, target_latency=0.5,
                     latency=settings(tmp_path, runtime="torch", measure_layers=None, time_models=None, multiple=None))
    rep = p.target
    assert layers and rep.probe.multiple == 16 and rep.step == 16
    assert backends and set(backends) == {("torch", None)}
    assert [f.name.split("-")[0] for f in tmp_path.glob("*.json")] == ["torch"]
    assert rep.dense_ms == pytest.approx(dense)
    assert rep.measured_fraction is not None and abs(rep.measured_fraction / 0.5 - 1) <= 0.1
    p.apply(verify=True)
    assert fake_model_ms(model, X) == pytest.approx(rep.rounds[rep.chosen].measured_ms)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_measure_models_times_in_the_runtime(runtime, monkeypatch):
    """measure_models: ONNX Runtime gets exported files, torch none; 3 sessions of >= 1.5 s by
    default; one median per model, in order. time_models_onnx is measure_models in ONNX Runtime."""
    import surgeon.timing
    from surgeon.latency import measure_models, time_models_onnx
    from surgeon.timing import Timing
    calls = []

    def fake(models, x, backend, *, files=None, threads, runs, warmup, min_seconds, sessions):
        calls.append((backend, files and all(f.is_file() for f in files.values()), threads, runs, min_seconds,
                      sessions))
        return {n: Timing(float(i + 1), 0.0, 0.0, runs) for i, n in enumerate(models)}

    monkeypatch.setattr(surgeon.timing, "time_models", fake)
    models = [Net().eval(), Net().eval()]
    assert measure_models(models, X, 2, runtime, runs=7) == [1.0, 2.0]
    backend = {"onnxruntime": "ort", "torch": "torch"}[runtime]
    assert calls == [(backend, True if runtime == "onnxruntime" else None, 2, 7, 1.5, 3)]
    if runtime == "onnxruntime":
        assert time_models_onnx(models, X, 2, runs=7) == [1.0, 2.0] and calls[1] == calls[0]
