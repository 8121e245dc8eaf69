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

Everything the exporters print is captured (see :mod:`surgeon.quiet`) and
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
import os
import pathlib
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Union

import torch
from torch import nn

from .onnx_io import check_model, eval_no_grad, export_inputs, flat_outputs, positional
from .quiet import Captured, captured_output, quiet
# ONNX Runtime's side is runtime.py's; its names stay importable from here, where they were defined
from .runtime import OnnxMismatchError, compare_onnx, onnx_session

__all__ = ["OnnxExportError", "OnnxMismatchError", "export_onnx"]

PathLike = Union[str, "os.PathLike[str]"]
Exporter = Literal["auto", "torchscript", "dynamo"]

#: Above this many bytes of weights the dynamo exporter must use external data
#: (protobuf cannot serialise a single message over 2 GiB).
_EXTERNAL_DATA_BYTES = 1_800_000_000

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
# the two exporters
# ----------------------------------------------------------------------------


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def _export_torchscript(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: pathlib.Path,
    opset: int | None,
    dynamic_batch: bool,
    n_outputs: int,
    attempt: Captured,
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
    with quiet() as caught, captured_output(attempt), torch.enable_grad():
        try:
            torch.onnx.export(
                model, inputs, str(path), dynamo=False,
                input_names=in_names, output_names=out_names, do_constant_folding=True,
                **kwargs,
            )
        finally:
            attempt.warnings = list(caught)
            # undo the logger leak described in quiet.captured_output
            torch._C._jit_set_onnx_log_enabled(log_was_enabled)


def _export_dynamo(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: pathlib.Path,
    opset: int | None,
    dynamic_batch: bool,
    n_outputs: int,
    attempt: Captured,
) -> None:
    in_names, out_names = _names("input", len(inputs)), _names("output", n_outputs)
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        kwargs["dynamic_shapes"] = tuple({0: batch} for _ in inputs)
    if opset is not None:
        kwargs["opset_version"] = opset
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with quiet(_DYNAMO_LOGGERS) as caught, captured_output(attempt):
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


# ----------------------------------------------------------------------------
# files: staged next to the target, published once verified
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# the batch check and export_onnx
# ----------------------------------------------------------------------------


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

    check_model(model)
    model, example_inputs = positional(model, example_inputs)
    inputs = export_inputs(example_inputs, need_batch=dynamic_batch)
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
    with eval_no_grad(model), _staging_dir(p) as staging:
        n_outputs = len(flat_outputs(model(*inputs)))
        if n_outputs == 0:
            raise ValueError("the model returned no tensors; there is nothing to export")
        target = staging / p.name
        for name in order:
            attempt = Captured()
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
