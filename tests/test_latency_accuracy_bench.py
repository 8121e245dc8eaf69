"""``benchmarks/latency_accuracy.py --quick`` with fake timings: both plans are made, applied, timed
side by side and fine-tuned, and the report is complete. Nothing is timed for real: a layer costs
1 ms per 1e6 multiply-accumulates and a whole model the sum over its layers, so the latency model
predicts the fake exactly and the latency-aware plan must land on its target. Accuracies are only
checked to be accuracies (one epoch of tinynet says nothing)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from test_latency import fake_model_ms, fake_ms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import latency_accuracy  # noqa: E402


class FakeTimer:
    """time_models: each model under test_latency's fake (its layers at their real shapes); counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, models, inputs, threads):
        self.calls += 1
        return [fake_model_ms(m, inputs) for m in models]


def fake_measure_layers(samples, threads):
    return [fake_ms(s.sig, s.cin, s.cout) for s in samples]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency_accuracy")
    timer = FakeTimer()
    threads = torch.get_num_threads()
    result = latency_accuracy.main(["--quick", "--out", str(out)], time_models=timer, measure_layers=fake_measure_layers)
    assert torch.get_num_threads() == threads, "the benchmark must restore the thread count"
    return out, result, timer


def test_both_plans_are_made_timed_and_fine_tuned(quick):
    _, result, timer = quick
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "uniform", "latency"}
    dense, uniform, lat = rows["dense"], rows["uniform"], rows["latency"]
    for r in (uniform, lat):
        for k in ("ms", "measured_fraction", "importance_kept", "removed", "params", "macs", "accuracy_pruned",
                  "accuracy", "finetune_s"):
            assert k in r, (r["variant"], k)
        assert 0.0 <= r["accuracy_pruned"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        assert isinstance(r["accuracy"], float)
        assert 0.0 < r["importance_kept"] < 1.0 and r["removed"] > 0
        assert r["params"] < dense["params"] and r["macs"] < dense["macs"]
        assert 0.0 < r["measured_fraction"] < 1.0
    assert 0.0 <= dense["accuracy"] <= 1.0 and dense["measured_fraction"] == 1.0
    # the widths left: tinynet's conv1 / conv2 share the residual group, whose removal reaches fc
    for r in (uniform, lat):
        assert set(r["widths"]) == {"conv1", "conv2", "fc"}
        assert r["widths"]["conv1"][1] == r["widths"]["conv2"][1] < 8
        assert r["widths"]["fc"][0] == 16 * 16 * r["widths"]["conv1"][1]
    # the target is the uniform plan's measured fraction, and under an exact fake the plan meets it
    # within the planner's 10% tolerance, as its own check and in the final side-by-side timing
    assert lat["target"] == pytest.approx(uniform["measured_fraction"])
    assert lat["plan_measured_fraction"] == pytest.approx(lat["measured_fraction"])
    assert abs(lat["measured_fraction"] / lat["target"] - 1) <= 0.1
    assert lat["predicted_fraction"] == pytest.approx(lat["measured_fraction"], rel=1e-6)
    assert lat["rounds"] >= 1 and "target_latency=" in lat["report"]
    assert timer.calls >= 3  # the uniform fraction, the plan's own check(s), the final timing


def test_report_files_are_valid(quick):
    out, result, _ = quick
    data = json.loads((out / "latency_accuracy.json").read_text())
    assert data["meta"]["fake_timings"] is True and data["meta"]["batch"] == 8 and data["meta"]["size"] == 16
    assert [s["variant"] for s in data["summary"]] == ["dense", "uniform", "latency", "latency - uniform"]
    paired = data["summary"][-1]
    assert len(paired["importance_kept_per_seed"]) == 1
    md = (out / "latency_accuracy.md").read_text()
    assert md == result["markdown"]
    assert "| tinynet | uniform |" in md and "| tinynet | latency |" in md and "Paired per seed" in md


def test_quick_writes_nothing_unless_asked():
    assert latency_accuracy.parse_args(["--quick"]).out is None
    full = latency_accuracy.parse_args([])
    assert Path(full.out).name == "results" and full.models == "resnet20,mobilenet_v2_32" and full.seeds == "0,1,2"


def _with_seed(result: dict, seed: int) -> dict:
    """A copy of a run's JSON as if it had run another seed."""
    data = json.loads(json.dumps({k: result[k] for k in ("meta", "rows", "summary")}))
    for row in data["rows"]:
        row["seed"] = seed
    data["meta"]["seeds"] = [seed]
    return data


def test_merge_pools_the_seeds_of_runs(quick, tmp_path):
    """--merge summarises the rows of several runs again: one paired entry per model over all seeds."""
    _, result, _ = quick
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_with_seed(result, 0)))
    b.write_text(json.dumps(_with_seed(result, 1)))
    merged = latency_accuracy.main(["--merge", str(a), str(b), "--out", str(tmp_path / "m")])
    paired = [s for s in merged["summary"] if s["variant"] == "latency - uniform"]
    assert len(paired) == 1 and paired[0]["seeds"] == 2 and len(paired[0]["accuracy_per_seed"]) == 2
    assert merged["meta"]["seeds"] == [0, 1]
    assert "seeds of 2 runs pooled" in (tmp_path / "m" / "latency_accuracy.md").read_text()


@pytest.mark.parametrize("change, match", [({"meta": {"finetune_epochs": 10}}, "differ in finetune_epochs"),
                                           ({}, "seed 0 is in more than one run")])
def test_merge_refuses_runs_that_do_not_pool(quick, tmp_path, change, match):
    """Runs of another recipe, or the same seed twice, are refused with a message saying which."""
    _, result, _ = quick
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_with_seed(result, 0)))
    other = _with_seed(result, 1 if change else 0)
    other["meta"].update(change.get("meta", {}))
    b.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=match):
        latency_accuracy.main(["--merge", str(a), str(b)])
