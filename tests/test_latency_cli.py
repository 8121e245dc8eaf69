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
