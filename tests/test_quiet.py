"""Tests for surgeon.quiet: what the exporters print is captured, not shown and not lost."""
from __future__ import annotations

import logging
import os
import sys
import warnings

import pytest

from surgeon.quiet import HARMLESS_WARNINGS, Captured, captured_output, quiet


def test_quiet_drops_harmless_warnings_records_the_rest_and_mutes_loggers(caplog):
    logger = logging.getLogger("surgeon.test.quiet")
    logger.setLevel(logging.INFO)
    with quiet(["surgeon.test.quiet"]) as caught:
        warnings.warn("You are using the legacy TorchScript-based ONNX export. x", DeprecationWarning)
        warnings.warn("a value was baked into the trace", UserWarning)
        logger.warning("a partial FX graph")
        assert logger.level == logging.CRITICAL
    assert [str(w.message) for w in caught] == ["a value was baked into the trace"]
    assert logger.level == logging.INFO and "partial FX graph" not in caplog.text
    assert any(m.startswith("You are using the legacy") for m, _ in HARMLESS_WARNINGS)


def test_captured_output_keeps_python_and_file_descriptor_output(capfd: pytest.CaptureFixture[str]):
    captured = Captured()
    with captured_output(captured):
        print("from python")
        print("to stderr", file=sys.stderr)
        os.write(1, b"from C++ via fd 1\n")
    assert capfd.readouterr() == ("", "")
    for text in ("from python", "to stderr", "from C++ via fd 1"):
        assert text in captured.output
    print("after")  # the terminal is back
    assert capfd.readouterr().out == "after\n"
