"""Latency measured side by side: torch models and their ONNX Runtime sessions, in one process.

Timing follows nanoGPT's ``bench.py``: a burn-in stage, then the measured one; medians; and all
models side by side in one process. On a noisy machine two models timed minutes apart can differ
by more than the effect being measured, so :func:`time_side_by_side` interleaves them: every round
calls each model once (in a fresh random order), and each model's median is taken over its rounds.

:func:`side_by_side` is the whole flow that ``surgeon.demo``, ``surgeon prune`` and
``surgeon.bench.run_benchmark`` share: export named models to ONNX, open each file in a non-spinning
``runtime.onnx_session`` with a fixed thread count, and time torch and / or ONNX Runtime.
"""
from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["BACKENDS", "Timing", "SideBySide", "time_side_by_side", "side_by_side", "torch_runner", "ort_runner",
           "check_backends"]

BACKENDS = ("torch", "ort")  # the model itself, and its ONNX file in ONNX Runtime


@dataclass(frozen=True)
class Timing:
    """Wall-clock statistics of one callable, in milliseconds."""

    median_ms: float  # the figure reported everywhere
    p10_ms: float     # 10th / 90th percentiles: the spread the median hides
    p90_ms: float
    runs: int         # measured calls (burn-in calls excluded)

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> "Timing":
        if not samples:
            raise ValueError("no timing samples: runs must be >= 1")
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 10)), float(np.percentile(ms, 90)), len(ms))


def time_side_by_side(fns: Mapping[str, Callable[[], Any]], runs: int = 20, warmup: int = 3,
                      seed: int = 0) -> dict[str, Timing]:
    """Time every callable of ``fns``: ``warmup`` burn-in calls each, then ``runs`` rounds in which
    each is called once, in a fresh random order every round (fixed seed), so that slow phases of a
    noisy machine hit every method alike and no method always runs right after the same neighbour
    (whose leftovers in the caches or on the cores it would inherit). Returns the median per name."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one timed call would charge one method for everyone's garbage
    try:
        rng = random.Random(seed)
        for _ in range(runs):
            for name in rng.sample(names, len(names)):
                fn = fns[name]
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return {n: Timing.from_seconds(s) for n, s in samples.items()}


def torch_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """A no-argument callable running ``model(x)`` in eval mode without autograd."""
    model.eval()

    def run() -> Any:
        with torch.inference_mode():
            return model(x)
    return run


def ort_runner(session: Any, x: torch.Tensor) -> Callable[[], Any]:
    """A no-argument callable running an onnxruntime session on ``x`` (converted once, up front)."""
    from .runtime import to_numpy

    feed = {session.get_inputs()[0].name: to_numpy(x)}
    return lambda: session.run(None, feed)


def check_backends(backends: Sequence[str]) -> None:
    """``ValueError`` naming the backends that are not among :data:`BACKENDS`."""
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}")


@dataclass
class SideBySide:
    """What :func:`side_by_side` wrote and measured."""

    onnx: dict[str, Path]                  # model name -> its verified ONNX file
    latency: dict[str, dict[str, Timing]]  # "torch/b1", "ort/b8", ... -> model name -> Timing


def side_by_side(models: Mapping[str, nn.Module], x: torch.Tensor, onnx: Mapping[str, str | Path] | None = None,
                 *, inputs: Sequence[torch.Tensor] | None = None, backends: Sequence[str] = BACKENDS,
                 runs: int = 20, warmup: int = 3, threads: int = 2,
                 progress: Callable[[str], None] | None = None) -> SideBySide:
    """Export named models to ONNX, then time them side by side in torch and / or ONNX Runtime.

    Each model named in ``onnx`` is exported at ``x`` to its path there (``surgeon.export_onnx``:
    checked against torch in ONNX Runtime, dynamic batch). Then for each backend (``"torch"``: the
    model under ``torch.inference_mode``; ``"ort"``: its ONNX file in a fresh, non-spinning
    ``runtime.onnx_session`` with ``threads`` intra-op threads) and each of ``inputs`` (default
    ``[x]``), every model is timed by :func:`time_side_by_side`, interleaved with the others, under
    the key ``"{backend}/b{batch}"``. ``progress`` is called with a short description before each step.
    """
    from .export import export_onnx
    from .runtime import onnx_session

    check_backends(backends)
    onnx = dict(onnx or {})
    unknown = [n for n in onnx if n not in models]
    if unknown:
        raise ValueError(f"onnx gives paths for {unknown}, which are not among the models {list(models)}")
    no_file = [n for n in models if n not in onnx]
    if "ort" in backends and no_file:
        raise ValueError(f"timing in ONNX Runtime needs an ONNX path for every model; {no_file} have none")
    say = progress or (lambda _msg: None)
    torch.set_num_threads(threads)
    files: dict[str, Path] = {}
    for name, path in onnx.items():
        say(f"ONNX export: {name}")
        files[name] = export_onnx(models[name], x, path)
    latency: dict[str, dict[str, Timing]] = {}
    for backend in backends:
        for xb in inputs or [x]:
            key = f"{backend}/b{xb.shape[0]}"
            say(f"timing {key} ({len(models)} models side by side, {runs} runs, {threads} threads)")
            if backend == "torch":
                fns = {n: torch_runner(m, xb) for n, m in models.items()}
            else:
                fns = {n: ort_runner(onnx_session(files[n], threads=threads), xb) for n in models}
            latency[key] = time_side_by_side(fns, runs=runs, warmup=warmup)
            del fns  # the sessions, before the next ones are made
            gc.collect()
    return SideBySide(files, latency)
