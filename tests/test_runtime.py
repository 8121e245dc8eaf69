"""Tests for surgeon.runtime: ONNX Runtime sessions (never spinning), running them, and the parity
check against torch (what export_onnx relies on to prove a file)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from surgeon.export import export_onnx
from surgeon.runtime import OnnxMismatchError, compare_onnx, onnx_session, run_onnx, to_numpy

from onnx_models import TinyResNet, TwoInTwoOut, ViewNet, inputs_for  # tests/ is on sys.path under pytest


# ---------------------------------------------------------------------------
# sessions and runs
# ---------------------------------------------------------------------------


def test_onnx_session_threads_and_run_onnxinputs_for(tmp_path: pathlib.Path) -> None:
    model, x = TwoInTwoOut(), inputs_for(TwoInTwoOut(), 2)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    session = onnx_session(path, threads=1)
    assert session.get_session_options().intra_op_num_threads == 1
    positional = run_onnx(session, x)
    named = run_onnx(session, {"input_0": x[0].numpy(), "input_1": x[1]})
    assert all(np.array_equal(a, b) for a, b in zip(positional, named))
    with pytest.raises(ValueError, match=r"takes 2 input\(s\)"):
        run_onnx(session, x[0])
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        onnx_session(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="threads"):
        onnx_session(path, threads=0)


def test_sessions_do_not_spin(tmp_path: pathlib.Path) -> None:
    """Interleaved ORT sessions must not busy-wait: a spinning one steals the next one's cores."""
    path = export_onnx(ViewNet(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    for threads in (None, 2):
        opts = onnx_session(path, threads=threads).get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 2


def test_to_numpy_detaches_tensors_and_passes_arrays() -> None:
    t = torch.ones(2, requires_grad=True) * 3
    assert np.array_equal(to_numpy(t), [3.0, 3.0]) and to_numpy([1, 2]).tolist() == [1, 2]


# ---------------------------------------------------------------------------
# compare_onnx: mismatch detection
# ---------------------------------------------------------------------------


def test_compare_onnx_reports_changed_weights(tmp_path: pathlib.Path) -> None:
    model, x = TinyResNet().eval(), torch.randn(2, 3, 8, 8)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    assert max(compare_onnx(model, path, x)) < 1e-4
    with torch.no_grad():
        model.fc.weight.add_(0.5)  # the file still holds the old weights
    with pytest.raises(OnnxMismatchError, match=r"output 0 .*max abs difference .*atol=1e-05 \+ rtol=0.0001 x max\|output\|"):
        compare_onnx(model, path, x, rtol=1e-4, atol=1e-5)


def test_compare_onnx_names_the_failing_output(tmp_path: pathlib.Path) -> None:
    model = TwoInTwoOut()
    x = inputs_for(model, 1)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # only output 0 depends on fc
    with pytest.raises(OnnxMismatchError, match=r"output 0 .*max abs difference 1"):
        compare_onnx(model, path, x)


def test_compare_onnx_uses_the_given_tolerance(tmp_path: pathlib.Path) -> None:
    model, x = ViewNet(), torch.randn(1, 3, 8, 8)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    with torch.no_grad():
        model.fc.bias.add_(1e-3)
    assert max(compare_onnx(model, path, x, rtol=0, atol=1e-2)) == pytest.approx(1e-3, rel=0.05)
    with pytest.raises(OnnxMismatchError, match="atol=0.0001"):
        compare_onnx(model, path, x, rtol=0, atol=1e-4)
