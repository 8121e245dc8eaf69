"""Tests for surgeon.timing: side-by-side timing statistics, and the export-then-time flow that the
demo, ``surgeon prune`` and the benchmark share. Timings are never asserted against each other
(the machine is noisy), except for a 3 ms sleep against nothing."""
from __future__ import annotations

import copy
import time

import pytest
import torch

import surgeon
import surgeon.export  # noqa: F401  binds runtime.onnx_session now: its own check sessions are not counted below
import surgeon.runtime
import surgeon.timing
import surgeon_models as zoo
from surgeon.timing import Timing, side_by_side, time_side_by_side

X = torch.randn(1, 3, 16, 16)


def test_timing_statistics():
    t = Timing.from_seconds([0.001, 0.002, 0.003, 0.004, 0.100])
    assert t.median_ms == pytest.approx(3.0) and t.runs == 5
    assert t.p10_ms <= t.median_ms <= t.p90_ms
    with pytest.raises(ValueError, match="runs must be >= 1"):
        Timing.from_seconds([])


def test_side_by_side_interleaves_and_burns_in():
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    res = time_side_by_side(fns, runs=4, warmup=2)
    assert calls[:6] == list("aabbcc")  # burn-in first, per method
    rounds = [calls[6 + 3 * i: 9 + 3 * i] for i in range(4)]
    assert all(sorted(r) == list("abc") for r in rounds)  # each method once per round
    assert len({tuple(r) for r in rounds}) > 1  # in varying orders
    assert all(res[n].runs == 4 for n in "abc")
    calls.clear()
    time_side_by_side(fns, runs=4, warmup=2)
    assert calls[6:] == sum(rounds, [])  # seeded: the same orders every time
    with pytest.raises(ValueError, match="runs must be >= 1"):
        time_side_by_side(fns, runs=0)


def test_side_by_side_measures_the_slower_one_slower():
    res = time_side_by_side({"fast": lambda: None, "slow": lambda: time.sleep(0.003)}, runs=5, warmup=0)
    assert res["slow"].median_ms >= 2.5 > res["fast"].median_ms


@pytest.fixture
def dense_and_pruned() -> dict[str, torch.nn.Module]:
    """tinynet and a copy with half its channels removed."""
    dense = zoo.get("tinynet").eval()
    pruned = copy.deepcopy(dense)
    surgeon.prune(pruned, X, 0.5)
    return {"dense": dense, "pruned": pruned}


def test_side_by_side_exports_and_times_in_non_spinning_sessions(dense_and_pruned, tmp_path, monkeypatch):
    made = []
    real = surgeon.runtime.onnx_session

    def recorded(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(surgeon.runtime, "onnx_session", recorded)
    paths = {"dense": tmp_path / "d.onnx", "pruned": tmp_path / "sub" / "p.onnx"}
    said: list[str] = []
    res = side_by_side(dense_and_pruned, X, paths, inputs=[X, torch.randn(4, 3, 16, 16)], runs=2, warmup=0,
                       threads=2, progress=said.append)
    assert res.onnx == paths and all(p.is_file() for p in paths.values())
    assert paths["pruned"].stat().st_size < paths["dense"].stat().st_size
    assert list(res.latency) == ["torch/b1", "torch/b4", "ort/b1", "ort/b4"]
    assert all(list(t) == ["dense", "pruned"] and all(v.runs == 2 for v in t.values()) for t in res.latency.values())
    assert len(made) == 4  # a fresh session per model and batch
    for sess in made:
        opts = sess.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.intra_op_num_threads == 2
    assert said[:2] == ["ONNX export: dense", "ONNX export: pruned"] and len(said) == 6


def test_side_by_side_times_torch_alone_without_files(dense_and_pruned):
    res = side_by_side(dense_and_pruned, X, backends=["torch"], runs=1, warmup=0)
    assert res.onnx == {} and list(res.latency) == ["torch/b1"]
    assert set(res.latency["torch/b1"]) == {"dense", "pruned"}


@pytest.mark.parametrize(("onnx", "backends", "match"), [
    pytest.param(None, ["ort"], r"needs an ONNX path for every model; \['dense', 'pruned'\] have none", id="ort-no-files"),
    pytest.param({"other": "o.onnx"}, ["torch"], r"\['other'\], which are not among the models", id="unknown-name"),
    pytest.param(None, ["tvm"], r"unknown backend\(s\) \['tvm'\]; choose from torch, ort", id="unknown-backend"),
])
def test_side_by_side_rejects_bad_arguments(dense_and_pruned, onnx, backends, match):
    with pytest.raises(ValueError, match=match):
        side_by_side(dense_and_pruned, X, onnx, backends=backends)


# ------------------------------------------------------------------ time_models: one runtime, restored
OTHER_THREADS = 1 if torch.get_num_threads() != 1 else 2  # a count that differs from the current one


def test_torch_threads_sets_and_restores():
    """Inside: the given count; after, also after an exception: the previous one."""
    from surgeon.timing import torch_threads
    before = torch.get_num_threads()
    with torch_threads(OTHER_THREADS):
        assert torch.get_num_threads() == OTHER_THREADS
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), torch_threads(OTHER_THREADS):
        raise KeyError("inside")
    assert torch.get_num_threads() == before


def test_time_models_torch_restores_threads_and_modes():
    """torch timing runs in eval mode with ``threads`` threads; afterwards each module has its own
    train flag back (a frozen BatchNorm stays in eval) and the thread count is what it was."""
    model = zoo.get("tinynet").train()
    frozen = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).eval()
    seen: list[tuple[bool, int]] = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.get_num_threads())))
    before = torch.get_num_threads()
    res = surgeon.timing.time_models({"a": model}, X, "torch", threads=OTHER_THREADS, runs=1, warmup=0)
    assert res["a"].runs == 1 and res["a"].median_ms > 0
    assert seen and set(seen) == {(False, OTHER_THREADS)}
    assert torch.get_num_threads() == before
    assert model.training and not frozen.training
    assert sum(not m.training for m in model.modules()) == 1


def test_side_by_side_leaves_the_thread_count(dense_and_pruned):
    before = torch.get_num_threads()
    side_by_side(dense_and_pruned, X, backends=["torch"], runs=1, warmup=0, threads=OTHER_THREADS)
    assert torch.get_num_threads() == before


def test_time_models_median_over_sessions(monkeypatch):
    """sessions=3: three side-by-side timings (seeds 0, 1, 2); each statistic the median over them."""
    seeds: list[int] = []

    def fake(fns, runs, warmup, seed):  # session k: 10 + k ms, except session 1 which a burst slowed down
        seeds.append(seed)
        ms = [10.0, 50.0, 12.0][seed]
        return {n: Timing(ms, ms - 1, ms + 1, runs) for n in fns}

    monkeypatch.setattr(surgeon.timing, "time_side_by_side", fake)
    res = surgeon.timing.time_models({"a": zoo.get("tinynet")}, X, "torch", runs=5, sessions=3)
    assert seeds == [0, 1, 2]
    assert res["a"] == Timing(12.0, 11.0, 13.0, 15)
    assert Timing.median_of([res["a"]]) is res["a"]


@pytest.mark.parametrize(("kwargs", "match"), [
    pytest.param({"backend": "tvm"}, r"unknown backend\(s\) \['tvm'\]; choose from torch, ort", id="backend"),
    pytest.param({"backend": "torch", "sessions": 0}, "sessions must be >= 1, got 0", id="sessions"),
    pytest.param({"backend": "ort"}, r"needs an ONNX path for every model; \['a'\] have none", id="ort-no-file"),
])
def test_time_models_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        surgeon.timing.time_models({"a": zoo.get("tinynet")}, X, **kwargs)


class TwoInputs(torch.nn.Module):
    """A model whose second input changes the work: a runner that fed only the first would fail."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, y):
        return self.conv(x) * y


@pytest.mark.parametrize("inputs", [
    pytest.param((torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8)), id="positional"),
    pytest.param({"x": torch.randn(1, 3, 8, 8), "y": torch.randn(1, 4, 8, 8)}, id="keywords"),
])
def test_time_models_feeds_every_input_to_onnx_runtime(tmp_path, inputs, monkeypatch):
    """Every input reaches the session, in the order the export gave them; the runner returns
    what ONNX Runtime computed (the torch model's output)."""
    model = TwoInputs().eval()
    path = surgeon.export_onnx(model, inputs, tmp_path / "two.onnx")
    seen = {}

    def once(fns, runs, warmup, seed):
        seen.update({n: fn() for n, fn in fns.items()})
        return {n: Timing(1.0, 1.0, 1.0, runs) for n in fns}
    monkeypatch.setattr(surgeon.timing, "time_side_by_side", once)
    surgeon.timing.time_models({"m": model}, inputs, "ort", files={"m": path}, runs=1, warmup=0)
    with torch.no_grad():
        want = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    torch.testing.assert_close(torch.from_numpy(seen["m"][0]), want, rtol=1e-4, atol=1e-5)
