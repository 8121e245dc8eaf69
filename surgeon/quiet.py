"""What the ONNX exporters print, kept out of the user's terminal but not lost.

Both exporters are noisy: the TorchScript one warns on every call and dumps its IR graph from C++
to fd 1 when it fails, the dynamo one logs and prints partial FX graphs. :func:`surgeon.export_onnx`
runs each attempt under :func:`quiet` (known harmless warnings dropped, the rest recorded, loggers
muted) and :func:`captured_output` (fd 1 / 2 and ``sys.stdout`` / ``sys.stderr`` captured), and
keeps what it caught in a :class:`Captured`: the warnings are re-emitted only for the exporter
whose file is returned, the text goes into ``OnnxExportError.diagnostics``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["HARMLESS_WARNINGS", "Captured", "captured_output", "quiet"]

#: Warnings that torch emits on *every* export and that carry no information
#: for our users; matched by message so that anything else still shows.
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"You are using the legacy TorchScript-based ONNX export", DeprecationWarning),
    (r"The feature will be removed\. Please remove usage of this function", DeprecationWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)


class Captured:
    """What one exporter left behind besides the file."""

    def __init__(self) -> None:
        self.warnings: list[warnings.WarningMessage] = []
        self.output = ""


@contextlib.contextmanager
def quiet(
    logger_names: Sequence[str] = (),
) -> Iterator[list[warnings.WarningMessage]]:
    """Drop the known harmless warnings, record the rest, mute the given loggers.

    Other warnings (e.g. a ``TracerWarning`` about a value baked into the
    trace) are *recorded*, not shown: ``export_onnx`` re-emits them only if
    this exporter's file is the one returned, so a failed first attempt that
    was superseded by the fallback leaves no misleading warnings behind.
    """
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in logger_names]
    try:
        for lg, _ in saved:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(record=True) as caught:
            for message, category in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield caught
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _flush_c_stdio() -> None:
    """Flush C ``stdout``/``stderr`` buffers (C++ ``std::cout`` writes land there)."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no libc symbol table (e.g. Windows)
        pass


@contextlib.contextmanager
def captured_output(captured: Captured) -> Iterator[None]:
    """Capture everything the exporter prints, at Python *and* file-descriptor level.

    Both exporters print on failure: the TorchScript exporter dumps its whole
    IR graph through a C++ logger straight to fd 1 (torch 2.13's
    ``setup_onnx_logging`` tests a function object for truthiness, so that
    logger is switched on by every export and never switched off), and
    ``torch.export`` prints partial FX graphs to ``sys.stderr``.  The text is
    kept in ``captured.output`` (and in ``OnnxExportError.diagnostics``)
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
            captured.output = py_buf.getvalue() + fd_text
