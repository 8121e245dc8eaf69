"""`surgeon prune --target-latency`: parsing and refusals (no timing: the plan itself is tested in
test_latency.py with fake measurements)."""
from __future__ import annotations

import argparse

import pytest

from surgeon.cli import _latency_target, main


@pytest.mark.parametrize("text, parsed", [("0.5", ("target_latency", 0.5)), ("1", ("target_latency", 1.0)),
                                          ("12ms", ("target_latency_ms", 12.0)),
                                          ("2.5 ms", ("target_latency_ms", 2.5))])
def test_parse_latency_target(text, parsed):
    assert _latency_target(text) == parsed


@pytest.mark.parametrize("text, match", [("5s", "the only unit is ms"), ("fast", "the only unit is ms"),
                                         ("1.5", r"in \(0, 1\]"), ("-0.5", r"in \(0, 1\]"),
                                         ("0ms", "must be positive")])
def test_bad_latency_target(text, match):
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        _latency_target(text)


def test_cli_refuses_bad_unit_and_ratio_with_target(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["prune", "tinynet", "--target-latency", "12us", "-o", str(tmp_path)])
    assert e.value.code == 2 and "the only unit is ms" in capsys.readouterr().err
    code = main(["prune", "tinynet", "--target-latency", "0.5", "--ratio", "0.2", "-o", str(tmp_path), "-q",
                 "--no-onnx", "--no-latency"])
    assert code != 0 and "either ratio or a target" in capsys.readouterr().err


@pytest.mark.parametrize("extra, runtime", [([], "onnxruntime"), (["--latency-runtime", "torch"], "torch")])
def test_latency_runtime_option(extra, runtime):
    """--latency-runtime reaches LatencySettings (default: ONNX Runtime)."""
    from surgeon.cli import _latency_settings, build_parser
    args = build_parser().parse_args(["prune", "tinynet", "--target-latency", "0.5", "-o", "out", *extra])
    assert _latency_settings(args, {"target_latency": 0.5})["latency"].runtime == runtime


def test_cli_refuses_unknown_latency_runtime(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["prune", "tinynet", "--target-latency", "0.5", "--latency-runtime", "tvm", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'tvm'" in err and "'onnxruntime', 'torch'" in err


def test_cli_summary_records_the_latency_target(tmp_path, monkeypatch):
    """`surgeon prune --target-latency` writes where the target was measured and what was reached
    into summary.json (timings faked: the settings the CLI builds get test_latency's fakes)."""
    import json

    import surgeon.cli as cli
    from test_latency import CountingMeasure, fake_time_models

    built = cli._latency_settings

    def fake_settings(args, kwargs):
        out = built(args, kwargs)
        s = out["latency"]
        s.measure_layers, s.time_models, s.multiple, s.cache_dir = CountingMeasure(), fake_time_models, 1, tmp_path
        return out
    monkeypatch.setattr(cli, "_latency_settings", fake_settings)
    out = tmp_path / "out"
    code = main(["prune", "tinynet", "--target-latency", "0.6", "--latency-runtime", "torch", "-o", str(out), "-q",
                 "--no-onnx", "--no-latency", "--verify"])
    assert code == 0
    record = json.loads((out / "summary.json").read_text())["latency_target"]
    assert record["runtime"] == "torch" and record["requested_fraction"] == 0.6 and record["rounds"] >= 1
    assert abs(record["measured_fraction"] / 0.6 - 1) <= 0.1  # the fake timings are what the model predicts
