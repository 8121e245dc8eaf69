"""ONNX export with a built-in numerical proof that the exported file is right.

A pruned network is only useful if it can be deployed, and deployment for us
means ONNX Runtime.  Exporting is where silent breakage hides: a shape that the
tracer baked in as a constant, an op that lowers slightly differently, a batch
dimension that is only dynamic on paper.  :func:`export_onnx` therefore never
just writes a file: it exports, runs the ONNX checker, loads the file in ONNX
Runtime and compares ONNX Runtime against PyTorch on the example inputs *and* on
a batch of a different size, so that a file it returns is known to work.

Exporter choice (measured with torch 2.13, onnx 1.23, onnxscript 0.7,
onnxruntime 1.32 on CNNs: ResNet-like with BN / residual add / adaptive pool /
flatten + Linear, ConvTranspose2d + ``torch.cat``, ``x.view(x.size(0), -1)``,
two-input/two-output): both exporters produce correct files with a working
dynamic batch for all of them.

* The legacy TorchScript exporter (``dynamo=False``) takes ~0.01-0.1 s per
  small model (the dynamo one 1-4 s; at ResNet-18/224 both are dominated by
  the verification), writes one self-contained ``.onnx`` file and keeps the
  batch symbolic through ``x.size(0)``.  It is tried first.  Weak spots: it is
  deprecated (a ``DeprecationWarning`` on every call; it may disappear from a
  future torch), it has no symbolic for newer ops (``F.rms_norm`` /
  ``nn.RMSNorm``, ``torch.diff``, ``logcumsumexp`` raise
  ``UnsupportedOperatorError``), and on such a failure it dumps its whole IR
  graph to fd 1 from C++ (its ``setup_onnx_logging`` switches that logger on
  and never off).
* The ``torch.export``-based exporter (``dynamo=True`` + onnxscript) is the
  fallback: it handles those newer ops, but writes a ``.onnx.data`` sidecar by
  default (we pass ``external_data=False`` below 1.8 GB of weights), logs
  "torchvision is not installed" warnings, cannot export data-dependent
  Python control flow (``if x.sum() > 0``, which the TorchScript exporter
  traces through with a ``TracerWarning``) and prints partial FX graphs to
  stderr when it fails.

Everything the exporters print is captured (see :func:`_captured_output`) and
kept in :attr:`OnnxExportError.diagnostics`; warnings other than the known
harmless ones are re-emitted only for the exporter whose file is returned.  An
attempt counts as failed when exporting raises, the checker rejects the file,
ONNX Runtime cannot load it, or (with ``check=True``) its outputs do not match
PyTorch, including on the larger batch (a batch size baked in as a constant
shows up there); the next exporter is then tried.  Files are written to a
staging folder next to ``path`` and only moved into place once verified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import pathlib
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import nn

from .capture import as_input_tuple, eval_mode

__all__ = [
    "OnnxExportError",
    "OnnxMismatchError",
    "compare_onnx",
    "export_onnx",
    "onnx_session",
    "run_onnx",
]

PathLike = Union[str, "os.PathLike[str]"]
Exporter = Literal["auto", "torchscript", "dynamo"]

#: Above this many bytes of weights the dynamo exporter must use external data
#: (protobuf cannot serialise a single message over 2 GiB).
_EXTERNAL_DATA_BYTES = 1_800_000_000

#: Warnings that torch emits on *every* export and that carry no information
#: for our users; matched by message so that anything else still shows.
_HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"You are using the legacy TorchScript-based ONNX export", DeprecationWarning),
    (r"The feature will be removed\. Please remove usage of this function", DeprecationWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)

#: Loggers the dynamo exporter writes to.  The registration logger warns about
#: torchvision ops on every process' first export; the others dump partial
#: graphs when ``torch.export`` fails, which we report in our own exception.
_DYNAMO_LOGGERS = (
    "torch.onnx",
    "torch.onnx._internal.exporter._registration",
    "torch.export",
    "torch.export._trace",
    "torch._export",
    "torch.fx.experimental.symbolic_shapes",
    "torch._dynamo",
)


class OnnxMismatchError(RuntimeError):
    """ONNX Runtime and PyTorch disagree on the outputs of the same model."""


class OnnxExportError(RuntimeError):
    """No exporter produced a valid ONNX file; ``attempts`` says why per exporter.

    ``diagnostics`` holds whatever the exporters printed while failing (kept
    out of the user's terminal but available for debugging).
    """

    def __init__(self, message: str, attempts: dict[str, BaseException], diagnostics: str = ""):
        super().__init__(message)
        self.attempts = attempts
        self.diagnostics = diagnostics


# ----------------------------------------------------------------------------
# input / output plumbing
# ----------------------------------------------------------------------------


def _as_input_tuple(example_inputs: Any, *, need_batch: bool) -> tuple[torch.Tensor, ...]:
    """Normalise ``example_inputs`` (see ``surgeon.capture.as_input_tuple``); a dynamic batch also
    needs every input to have a batch dimension."""
    inputs = as_input_tuple(example_inputs)
    for i, t in enumerate(inputs):
        if need_batch and t.dim() == 0:
            raise ValueError(
                f"example_inputs[{i}] is a 0-d tensor and has no batch dimension; "
                "pass dynamic_batch=False to export it with a static shape"
            )
    return inputs


def _flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors of a (nested) model output in the order the exporters emit them."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _flatten_tensors(item)]
    if isinstance(obj, Mapping):
        return [t for item in obj.values() for t in _flatten_tensors(item)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _flatten_tensors(getattr(obj, f.name))]
    return []


class _Positional(nn.Module):
    """Exports a model called with keyword inputs (``model(input_ids=..., attention_mask=...)``)
    or returning a dataclass (Hugging Face ``ModelOutput``): positional tensors in, the output's
    tensors out as a flat tuple, in ``flatten_tensors`` order. The ONNX inputs are in ``names``
    order."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from .record import flatten_tensors
        out = self.model(**dict(zip(self.names, tensors))) if self.names else self.model(*tensors)
        return tuple(flatten_tensors(out))


def _positional(model: nn.Module, example_inputs: Any) -> tuple[nn.Module, Any]:
    """(model, inputs) as the exporters take them: keyword inputs and dataclass outputs adapted."""
    if isinstance(example_inputs, Mapping):
        bad = [k for k, v in example_inputs.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"keyword example input {bad[0]!r} must be a torch.Tensor to export it")
        return _Positional(model, list(example_inputs)), tuple(example_inputs.values())
    return model, example_inputs


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (every submodule's own flag restored afterwards, see ``trace.eval_mode``) under
    ``torch.no_grad``."""
    with eval_mode(model), torch.no_grad():
        yield model


def _other_batch(inputs: tuple[torch.Tensor, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs plus one extra random sample, i.e. a batch of size B+1.

    Random rows (same dtype/range as the example) make sure ONNX Runtime is not
    just returning a cached constant; integer inputs are repeated instead since
    random ids could be out of range for an embedding.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x in inputs:
        first = x[:1]
        if x.is_floating_point():
            noise = torch.randn(first.shape, generator=gen, dtype=torch.float32)
            std = float(x.float().std()) if x.numel() > 1 else 1.0
            extra = (noise * (std if std > 0 else 1.0) + float(x.float().mean())).to(x.dtype)
            extra = extra.to(x.device)
        else:
            extra = first.clone()
        out.append(torch.cat([x, extra], dim=0))
    return tuple(out)


# ----------------------------------------------------------------------------
# ONNX Runtime helpers
# ----------------------------------------------------------------------------


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
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, Mapping):
        feed = {str(k): _to_numpy(v) for k, v in inputs.items()}
    else:
        seq = [inputs] if isinstance(inputs, (torch.Tensor, np.ndarray)) else list(inputs)
        if len(seq) != len(names):
            raise ValueError(
                f"the ONNX model takes {len(names)} input(s) {names}, got {len(seq)}"
            )
        feed = {n: _to_numpy(v) for n, v in zip(names, seq)}
    return list(session.run(None, feed))


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
    _check_model(model)
    model, example_inputs = _positional(model, example_inputs)
    inputs = _as_input_tuple(example_inputs, need_batch=False)
    session = onnx_session(path) if isinstance(path, (str, os.PathLike)) else path
    with _eval_mode(model):
        expected = [_to_numpy(t) for t in _flatten_tensors(model(*inputs))]
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


# ----------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet(
    logger_names: Sequence[str] = (),
) -> Iterator[list[warnings.WarningMessage]]:
    """Drop the known harmless warnings, record the rest, mute the given loggers.

    Other warnings (e.g. a ``TracerWarning`` about a value baked into the
    trace) are *recorded*, not shown: :func:`export_onnx` re-emits them only if
    this exporter's file is the one returned, so a failed first attempt that
    was superseded by the fallback leaves no misleading warnings behind.
    """
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in logger_names]
    try:
        for lg, _ in saved:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(record=True) as caught:
            for message, category in _HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield caught
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


class _Attempt:
    """What one exporter left behind besides the file."""

    def __init__(self) -> None:
        self.warnings: list[warnings.WarningMessage] = []
        self.output = ""


def _flush_c_stdio() -> None:
    """Flush C ``stdout``/``stderr`` buffers (C++ ``std::cout`` writes land there)."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no libc symbol table (e.g. Windows)
        pass


@contextlib.contextmanager
def _captured_output(attempt: _Attempt) -> Iterator[None]:
    """Capture everything the exporter prints, at Python *and* file-descriptor level.

    Both exporters print on failure: the TorchScript exporter dumps its whole
    IR graph through a C++ logger straight to fd 1 (torch 2.13's
    ``setup_onnx_logging`` tests a function object for truthiness, so that
    logger is switched on by every export and never switched off), and
    ``torch.export`` prints partial FX graphs to ``sys.stderr``.  The text is
    kept in ``attempt.output`` (and in :attr:`OnnxExportError.diagnostics`)
    rather than flooding the terminal when, e.g., the fallback then succeeds.
    """
    import tempfile

    py_buf = io.StringIO()
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _flush_c_stdio()
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(tmp.fileno(), fd)
        except OSError:  # no usable fds (embedded interpreters): Python-level only
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            saved = []
        try:
            with contextlib.redirect_stdout(py_buf), contextlib.redirect_stderr(py_buf):
                yield
        finally:
            _flush_c_stdio()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            fd_text = tmp.read().decode("utf-8", errors="replace")
            attempt.output = py_buf.getvalue() + fd_text


def _export_torchscript(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: pathlib.Path,
    opset: int | None,
    dynamic_batch: bool,
    n_outputs: int,
    attempt: _Attempt,
) -> None:
    in_names, out_names = _names("input", len(inputs)), _names("output", n_outputs)
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in in_names + out_names}
    if opset is not None:
        kwargs["opset_version"] = opset
    log_was_enabled = torch._C._jit_is_onnx_log_enabled()
    # Grad mode on while tracing: in no_grad eval mode nn.MultiheadAttention and
    # nn.TransformerEncoderLayer take a fused fast path (aten::_native_multi_head_attention) that
    # has no ONNX symbolic; with grad enabled they run the plain ops. Nothing is trained here.
    with _quiet() as caught, _captured_output(attempt), torch.enable_grad():
        try:
            torch.onnx.export(
                model, inputs, str(path), dynamo=False,
                input_names=in_names, output_names=out_names, do_constant_folding=True,
                **kwargs,
            )
        finally:
            attempt.warnings = list(caught)
            # undo the logger leak described in _captured_output
            torch._C._jit_set_onnx_log_enabled(log_was_enabled)


def _export_dynamo(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: pathlib.Path,
    opset: int | None,
    dynamic_batch: bool,
    n_outputs: int,
    attempt: _Attempt,
) -> None:
    in_names, out_names = _names("input", len(inputs)), _names("output", n_outputs)
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        kwargs["dynamic_shapes"] = tuple({0: batch} for _ in inputs)
    if opset is not None:
        kwargs["opset_version"] = opset
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with _quiet(_DYNAMO_LOGGERS) as caught, _captured_output(attempt):
        try:
            torch.onnx.export(
                model, inputs, str(path), dynamo=True,
                input_names=in_names, output_names=out_names,
                external_data=weight_bytes > _EXTERNAL_DATA_BYTES,
                verbose=False, report=False, **kwargs,
            )
        finally:
            attempt.warnings = list(caught)


_EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


def _prepare_path(path: PathLike) -> pathlib.Path:
    """Validate ``path`` and create its parent folders before exporting.

    Exporting can take a while; failing afterwards on a typo'd folder wastes
    it, and the exporters' own errors for this are obscure.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = pathlib.Path(path).expanduser()
    if p.is_dir():
        raise IsADirectoryError(f"cannot write ONNX file {p}: it is a directory")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot write ONNX file {p}: {exc.strerror or exc}") from exc
    return p


@contextlib.contextmanager
def _staging_dir(p: pathlib.Path) -> Iterator[pathlib.Path]:
    """A private folder next to ``p`` to export into.

    Files only replace ``p`` (and its external-data sidecars, which keep their
    relative names) once they are verified, so a failed export neither leaves
    half-written files nor destroys a previous good export.  Being in the same
    folder proves it is writable and makes the final move an atomic rename.
    """
    import shutil
    import tempfile

    try:
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot write ONNX file {p}: {exc.strerror or exc}") from exc
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: pathlib.Path, p: pathlib.Path) -> None:
    """Move the verified export (main file last) from ``staging`` to ``p``'s folder."""
    main = staging / p.name
    for f in sorted(staging.iterdir()):
        if f != main:
            os.replace(f, p.parent / f.name)
    os.replace(main, p)


def _clear(staging: pathlib.Path) -> None:
    for f in staging.iterdir():
        with contextlib.suppress(OSError):
            f.unlink()


def _check_other_batch(
    model: nn.Module, session: Any, inputs: tuple[torch.Tensor, ...], rtol: float, atol: float
) -> None:
    """Prove the batch axis really is dynamic by running a batch one larger."""
    bigger = _other_batch(inputs)
    where = f"dynamic batch check (batch {bigger[0].shape[0]})"
    try:
        compare_onnx(model, session, bigger, rtol, atol)
    except OnnxMismatchError as exc:
        raise OnnxMismatchError(f"{where}: {exc}") from exc
    except Exception as exc:
        raise _BatchCheckError(f"{where}: ONNX Runtime failed: {_root_cause(exc)}") from exc


class _BatchCheckError(RuntimeError):
    """ONNX Runtime could not run the larger batch (the axis is not really dynamic)."""


def _root_cause(exc: BaseException) -> str:
    """One line naming the innermost cause: torch's wrappers bury it under advice."""
    while exc.__cause__ is not None and not isinstance(exc, (OnnxMismatchError, _BatchCheckError)):
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}"


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: PathLike,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    check: bool = True,
    exporter: Exporter = "auto",
) -> pathlib.Path:
    """Export ``model`` to ONNX at ``path`` and prove the file is correct.

    Inputs are named ``input`` (``input_0``, ``input_1``, ... for several),
    outputs likewise; with ``dynamic_batch`` dimension 0 of every input and
    output is the symbolic ``batch``.  ``opset=None`` lets the exporter choose
    its default.  The file is always validated with ``onnx.checker`` (by path,
    so models over 2 GiB work) and loaded in ONNX Runtime; with ``check`` the
    ORT outputs must match PyTorch (see :func:`compare_onnx` for the tolerance
    rule) on ``example_inputs`` and, with ``dynamic_batch``, on a batch one
    larger.  ``exporter="auto"`` tries the TorchScript exporter then the
    dynamo one (see the module docstring); name one to force it.

    The model is exported in eval mode under ``torch.no_grad`` and every
    submodule's train/eval flag is restored afterwards.

    Raises ``TypeError``/``ValueError`` for bad arguments, ``OSError`` for an
    unwritable path, :class:`OnnxMismatchError` when every exporter produced a
    file that disagrees with PyTorch, and :class:`OnnxExportError` otherwise.
    """
    import onnx

    _check_model(model)
    model, example_inputs = _positional(model, example_inputs)
    inputs = _as_input_tuple(example_inputs, need_batch=dynamic_batch)
    if exporter not in ("auto", *_EXPORTERS):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    if opset is not None and (not isinstance(opset, int) or opset < 7):
        raise ValueError(f"opset must be an int >= 7 or None, got {opset!r}")
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    p = _prepare_path(path)
    order = list(_EXPORTERS) if exporter == "auto" else [exporter]

    failures: dict[str, BaseException] = {}
    diagnostics: list[str] = []
    with _eval_mode(model), _staging_dir(p) as staging:
        n_outputs = len(_flatten_tensors(model(*inputs)))
        if n_outputs == 0:
            raise ValueError("the model returned no tensors; there is nothing to export")
        target = staging / p.name
        for name in order:
            attempt = _Attempt()
            try:
                _EXPORTERS[name](model, inputs, target, opset, dynamic_batch, n_outputs, attempt)
                onnx.checker.check_model(str(target))
                session = onnx_session(target)
                if check:
                    compare_onnx(model, session, inputs, rtol, atol)
                    if dynamic_batch:
                        _check_other_batch(model, session, inputs, rtol, atol)
                del session  # release the file before moving it (Windows)
            except Exception as exc:  # try the next exporter, report all at the end
                failures[name] = exc
                if attempt.output:
                    diagnostics.append(f"--- {name} ---\n{attempt.output}")
                _clear(staging)
                continue
            _publish(staging, p)
            for w in attempt.warnings:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            return p

    if all(isinstance(e, OnnxMismatchError) for e in failures.values()):
        first = next(iter(failures.values()))
        raise OnnxMismatchError(str(first)) from first
    summary = "; ".join(f"{n}: {_root_cause(e)}" for n, e in failures.items())
    raise OnnxExportError(
        f"could not export {type(model).__name__} to ONNX ({summary})",
        failures,
        "\n".join(diagnostics),
    ) from next(reversed(failures.values()))
