"""``benchmarks/accuracy.py --quick``: every workflow runs end to end and the report is complete.

Accuracies are not asserted (one epoch on a tiny model says nothing); the bookkeeping is: every
method at every scope it has, pruned models smaller than the dense one, the stated budget, and
valid JSON / markdown / PNG output.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import accuracy  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("accuracy")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_workflow_is_reported(quick: Path) -> None:
    data = json.loads((quick / "accuracy.json").read_text())
    seen = {(s["method"], s["scope"]) for s in data["summary"]}
    for method in accuracy.AFTER + accuracy.BEFORE:
        scopes = {"local", "global"} if method in accuracy.SCOPED else (
            {"global"} if method == "slimming" else {"local"})
        assert {(method, scope) for scope in scopes} <= seen, method
    assert ("dense", "-") in seen
    dense = next(r for r in data["rows"] if r["method"] == "dense")
    for r in data["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        if r["method"] != "dense":
            assert r["params"] < dense["params"] and r["macs"] < dense["macs"], r
    assert data["meta"]["budget"] == {"dense": 1, "recover": 1}


def test_report_files_are_valid(quick: Path) -> None:
    md = (quick / "accuracy.md").read_text()
    assert "Budget: dense training D = 1 epochs" in md and "| 50% | slimming | global |" in md
    assert (quick / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_method_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown methods"):
        accuracy.main(["--quick", "--methods", "one-shot,pruning by vibes"])
