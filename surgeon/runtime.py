"""ONNX Runtime sessions: made (never spinning), run, compared with torch.

The one place that opens an ONNX file in ONNX Runtime: :func:`surgeon.export_onnx` proves its file
with :func:`compare_onnx`, and ``surgeon.bench`` times the sessions :func:`onnx_session` makes.
``onnxruntime`` is imported on first use, so ``import surgeon`` stays light.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from .onnx_io import check_model, eval_no_grad, export_inputs, flat_outputs, positional

__all__ = ["OnnxMismatchError", "compare_onnx", "onnx_session", "run_onnx", "to_numpy"]

PathLike = Union[str, "os.PathLike[str]"]


class OnnxMismatchError(RuntimeError):
    """ONNX Runtime and PyTorch disagree on the outputs of the same model."""


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (detached, on the CPU) or array-like as the numpy array ONNX Runtime is fed."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def onnx_session(path: PathLike, threads: int | None = None) -> Any:
    """Open ``path`` in ONNX Runtime on the CPU.

    ``threads`` sets ``intra_op_num_threads`` so benchmarks can pin the thread
    count (ORT's default uses every core, which makes timings noisy on shared
    machines).  ORT's own C++ warnings are limited to errors: its usual chatter
    (unused initializers etc.) is not actionable for users.  The intra-op workers
    never spin after a run: ORT's default busy-waiting lets a session timed after
    another lose its cores to the first one's idle workers (``surgeon.bench``
    measured 40 ms instead of 20 ms per ResNet-18 run with 2 threads).
    """
    import onnxruntime as ort

    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX file not found: {p}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, inputs: Any) -> list[np.ndarray]:
    """Run ``session`` and return all outputs as numpy arrays.

    ``inputs`` may be a tensor/array, a sequence of them (matched to the
    session's inputs by position, which is how the exporters order them) or a
    mapping from input name to value.
    """
    return list(session.run(None, onnx_feed(session, inputs)))


def onnx_feed(session: Any, inputs: Any) -> dict[str, np.ndarray]:
    """The ``session.run`` feed for ``inputs``: a tensor/array, a sequence of them (matched to the
    session's inputs by position, which is how the exporters order them) or a mapping from input
    name to value. ``ValueError`` naming the session's inputs when a sequence has another length."""
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, Mapping):
        return {str(k): to_numpy(v) for k, v in inputs.items()}
    seq = [inputs] if isinstance(inputs, (torch.Tensor, np.ndarray)) else list(inputs)
    if len(seq) != len(names):
        raise ValueError(f"the ONNX model takes {len(names)} input(s) {names}, got {len(seq)}")
    return {n: to_numpy(v) for n, v in zip(names, seq)}


def compare_onnx(
    model: nn.Module,
    path: PathLike | Any,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> list[float]:
    """Check that ONNX Runtime reproduces ``model``'s outputs on ``example_inputs``.

    ``path`` is an ``.onnx`` file or an already open ``InferenceSession``.  The
    model runs in eval mode under ``torch.no_grad`` and its train/eval flags are
    restored.  Outputs must satisfy ``max|ort - torch| <= atol + rtol * max|torch|``
    (relative to the output's scale).  Returns the max abs difference per output;
    raises :class:`OnnxMismatchError` naming the first failing output, its max
    abs difference and the tolerance.
    """
    check_model(model)
    model, example_inputs = positional(model, example_inputs)
    inputs = export_inputs(example_inputs, need_batch=False)
    session = onnx_session(path) if isinstance(path, (str, os.PathLike)) else path
    with eval_no_grad(model):
        expected = [to_numpy(t) for t in flat_outputs(model(*inputs))]
    got = run_onnx(session, inputs)
    if len(got) != len(expected):
        raise OnnxMismatchError(
            f"ONNX model has {len(got)} output(s) but PyTorch produced {len(expected)} tensor(s)"
        )
    diffs: list[float] = []
    for i, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape:
            raise OnnxMismatchError(
                f"ONNX output {i} has shape {tuple(g.shape)}, PyTorch output has {tuple(e.shape)}"
            )
        if e.size == 0:
            diffs.append(0.0)
            continue
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        both_nan = np.isnan(g64) & np.isnan(e64)
        err = np.where(both_nan, 0.0, np.abs(g64 - e64))
        err = np.where(np.isnan(err), np.inf, err)
        max_err = float(err.max())
        # Tolerance relative to the output's scale, not element-wise: float32 sums through 50+
        # layers round differently in ORT's and torch's conv kernels, and an element-wise rule
        # would flag a logit near zero whose neighbours are in the hundreds.
        scale = float(np.abs(np.nan_to_num(e64)).max())
        tol = atol + rtol * scale
        if not max_err <= tol:
            raise OnnxMismatchError(
                f"ONNX output {i} differs from PyTorch: max abs difference {max_err:.3g} "
                f"exceeds tolerance {tol:.3g} (atol={atol:g} + rtol={rtol:g} x max|output| {scale:.3g})"
            )
        diffs.append(max_err)
    return diffs
