"""The benchmark library and ``benchmarks/latency.py --quick``.

Timings are never asserted against each other (the machine is noisy); what is asserted is the
bookkeeping: every method present, sizes that agree with an independent pruner, a masking baseline
at the sparsity it claims, and valid JSON / markdown / PNG output.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import surgeon_models as zoo
from surgeon.bench import (METHODS, classifier_of, effective_macs, mask_to_match, prune_with_surgeon,
                           prune_with_torch_pruning, run_benchmark)
from surgeon.bench_report import headline, load_json, merge, to_markdown, write_all

ROOT = Path(__file__).resolve().parents[1]
X = torch.randn(1, 3, 16, 16)


def test_surgeon_and_torch_pruning_agree_on_sizes():
    """Torch-Pruning is an independent oracle: at the same ratio on the same model, both remove the
    same number of parameters and MACs (both L1, local, classifier kept)."""
    a, b = zoo.get("tinynet").eval(), zoo.get("tinynet").eval()
    assert prune_with_surgeon(a, X, 0.5) > 0 and prune_with_torch_pruning(b, X, 0.5) > 0
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters()) < 21314
    assert effective_macs(a, X) == effective_macs(b, X)
    assert classifier_of(a) is a.fc


def test_mask_matches_the_requested_parameter_reduction():
    model = zoo.get("tinynet").eval()
    dense_macs, _ = effective_macs(model, X)
    s = mask_to_match(model, 10000)
    zeros = sum(int((m.weight == 0).sum()) for m in (model.conv1, model.conv2, model.fc))
    assert zeros == pytest.approx(10000, abs=3)  # rounded per layer
    assert 0 < s < 1 and not hasattr(model.fc, "weight_orig")  # masks made permanent
    macs, eff = effective_macs(model, X)
    assert macs == dense_macs and eff < 0.6 * macs  # same work executed, less of it useful


def test_run_benchmark_rejects_bad_arguments():
    build = lambda: zoo.get("tinynet")  # noqa: E731
    with pytest.raises(ValueError, match="must include 'dense'"):
        run_benchmark("t", build, (1, 3, 16, 16), methods=("surgeon",))
    with pytest.raises(ValueError, match="unknown backend"):
        run_benchmark("t", build, (1, 3, 16, 16), backends=("tvm",))
    with pytest.raises(ValueError, match=r"ratios must be in \[0, 1\)"):
        run_benchmark("t", build, (1, 3, 16, 16), ratios=(0.0, 1.0))


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """`benchmarks/latency.py --quick` run once, as a user would, into a temporary directory."""
    out = tmp_path_factory.mktemp("quick")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"quick benchmark: {time.perf_counter() - t0:.1f} s")  # the < 30 s budget, reported
    return out


def test_quick_benchmark_writes_every_method(quick):
    data = json.loads((quick / "results.json").read_text())
    rows = data["rows"]
    assert data["meta"]["threads"] == 2 and data["meta"]["cpu"]
    ratios = sorted({r["ratio"] for r in rows})
    assert ratios == [0.0, 0.25, 0.5, 0.75]
    for ratio in ratios[1:]:
        assert {r["method"] for r in rows if r["ratio"] == ratio} == set(METHODS) - {"dense"}
    assert [r["method"] for r in rows if r["ratio"] == 0.0] == ["dense"]
    for r in rows:
        assert set(r["latency"]) == {"torch/b1", "torch/b8", "ort/b1", "ort/b8"}
        assert all(t["median_ms"] > 0 and t["runs"] == 3 for t in r["latency"].values())
        assert r["onnx_bytes"] > 0 and r["macs"] > 0
        assert (r["prune_s"] is not None) == (r["method"] in ("surgeon", "torch-pruning"))


def test_quick_benchmark_sizes_are_consistent(quick):
    res = load_json(quick / "results.json")
    dense = res.dense("tinynet")
    for ratio in (0.25, 0.5, 0.75):
        s, t, m = (res.find("tinynet", k, ratio) for k in ("surgeon", "torch-pruning", "mask"))
        assert s.params == t.params and s.macs == t.macs < dense.macs
        assert m.params == dense.params and m.macs == dense.macs  # masking keeps every tensor
        assert m.nonzero_params == pytest.approx(s.params, rel=0.01)  # ... at surgeon's sparsity
        assert res.theoretical(s) > 1 and res.speedup(dense, "ort/b1") == pytest.approx(1.0)


def test_quick_benchmark_report_files(quick):
    md = (quick / "results.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in md
    assert "realised/theory ort/b1" in md
    for png in ("latency_vs_macs.png", "speedup_vs_theory.png"):
        assert (quick / png).read_bytes()[:4] == b"\x89PNG"
    assert (quick / "tinynet.json").is_file()


def test_report_round_trip_and_headline(quick, tmp_path):
    res = load_json(quick / "results.json")
    again = merge([res])
    assert [r.to_json() for r in again.rows] == [r.to_json() for r in res.rows]
    items = headline(res)
    assert [i["ratio"] for i in items] == [0.25, 0.5, 0.75]
    assert all(i["efficiency ort/b8"] == pytest.approx(i["surgeon ort/b8"] / i["theoretical"]) for i in items)
    paths = write_all(res, tmp_path, plots=False)
    assert set(paths) == {"json", "markdown"}
    assert to_markdown(res).count("| tinynet") == 0 and "**tinynet**" in to_markdown(res)
