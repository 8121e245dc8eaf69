"""Latency measured side by side: torch models and their ONNX Runtime sessions, in one process.

Timing follows nanoGPT's ``bench.py``: a burn-in stage, then the measured one; medians; and all
models side by side in one process. On a noisy machine two models timed minutes apart can differ
by more than the effect being measured, so :func:`time_side_by_side` interleaves them: every round
calls each model once (in a fresh random order), and each model's median is taken over its rounds.

:func:`side_by_side` is the whole flow that ``surgeon.demo``, ``surgeon prune`` and
``surgeon.bench.run_benchmark`` share: export named models to ONNX, open each file in a non-spinning
``runtime.onnx_session`` with a fixed thread count, and time torch and / or ONNX Runtime.
:func:`time_models` is its timing half, the one place that times whole models in one runtime; the
latency target's measurements (``latency.measure_models``) use it too. Whatever torch thread count it
sets (:func:`torch_threads`) and whatever train / eval flags it changes are restored when it returns:
a library call must not change the process-wide thread count.
"""
from __future__ import annotations

import gc
import math
import random
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["BACKENDS", "Timing", "SideBySide", "time_side_by_side", "time_models", "side_by_side", "torch_runner",
           "ort_runner", "torch_threads", "check_backends"]

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

    @classmethod
    def median_of(cls, timings: Sequence["Timing"]) -> "Timing":
        """Several timings of one model (fresh sessions) as one: each statistic the median over
        them, ``runs`` their sum. One timing is returned as it is."""
        if not timings:
            raise ValueError("no timings to combine: sessions must be >= 1")
        if len(timings) == 1:
            return timings[0]
        return cls(float(np.median([t.median_ms for t in timings])), float(np.median([t.p10_ms for t in timings])),
                   float(np.median([t.p90_ms for t in timings])), sum(t.runs for t in timings))


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


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside, the previous count restored on exit."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def torch_runner(model: nn.Module, x: Any) -> Callable[[], Any]:
    """A no-argument callable running ``model(x)`` in eval mode without autograd. ``x``: a tensor,
    a tuple of positional inputs or a dict of keyword inputs."""
    from .capture import as_example_inputs

    ex = as_example_inputs(x)
    model.eval()

    def run() -> Any:
        with torch.inference_mode():
            return ex.call(model)
    return run


def ort_runner(session: Any, x: Any) -> Callable[[], Any]:
    """A no-argument callable running an onnxruntime session on ``x`` (converted once, up front):
    a tensor, a tuple of positional inputs or a dict of keyword inputs, fed in order, as
    ``surgeon.export_onnx`` made the file's inputs (``onnx_io.positional``)."""
    from .onnx_io import export_inputs
    from .runtime import onnx_feed

    feed = onnx_feed(session, export_inputs(tuple(x.values()) if isinstance(x, Mapping) else x, need_batch=False))
    return lambda: session.run(None, feed)


def check_backends(backends: Sequence[str]) -> None:
    """``ValueError`` naming the backends that are not among :data:`BACKENDS`."""
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}")


def time_models(models: Mapping[str, nn.Module], x: Any, backend: str, *, files: Mapping[str, Path] | None = None,
                threads: int = 2, runs: int = 20, warmup: int = 3, min_seconds: float = 0.0, sessions: int = 1,
                seed: int = 0) -> dict[str, Timing]:
    """Time named models side by side (:func:`time_side_by_side`) in one ``backend`` of :data:`BACKENDS`.

    ``"torch"``: each model called on ``x`` (a tensor, a tuple or a dict of keyword inputs) in eval
    mode under ``torch.inference_mode`` with ``threads`` torch threads; the thread count and every
    module's train / eval flag are restored afterwards. ``"ort"``: ``files[name]``, the model's ONNX
    file, in a fresh non-spinning ``runtime.onnx_session`` with ``threads`` intra-op threads, fed
    every input of ``x`` (``runtime.onnx_feed``).

    Timed ``sessions`` times (for ONNX Runtime each time in fresh sessions), each over at least
    ``runs`` rounds and at least ``min_seconds`` of the first model's time (capped at 400 rounds):
    each model's statistics are the median over the sessions (:meth:`Timing.median_of`)."""
    from .capture import eval_mode
    from .runtime import onnx_session

    check_backends([backend])
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    if not models:
        return {}
    if backend == "ort":
        no_file = [n for n in models if n not in (files or {})]
        if no_file:
            raise ValueError(f"timing in ONNX Runtime needs an ONNX path for every model; {no_file} have none")
    per_session: list[dict[str, Timing]] = []
    with ExitStack() as stack:
        if backend == "torch":
            stack.enter_context(torch_threads(threads))
            for m in models.values():
                stack.enter_context(eval_mode(m))
        for k in range(sessions):
            if backend == "torch":
                fns = {n: torch_runner(m, x) for n, m in models.items()}
            else:
                assert files is not None
                fns = {n: ort_runner(onnx_session(files[n], threads=threads), x) for n in models}
            n_runs = runs
            if min_seconds > 0:  # size the session: warm the first model, then time one call
                first = next(iter(fns.values()))
                first()
                t0 = time.perf_counter()
                first()
                one = time.perf_counter() - t0
                n_runs = min(400, max(runs, math.ceil(min_seconds / max(one, 1e-4))))
            per_session.append(time_side_by_side(fns, runs=n_runs, warmup=warmup, seed=seed + k))
            del fns  # the sessions, before the next ones are made
            gc.collect()
    return {n: Timing.median_of([t[n] for t in per_session]) for n in models}


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
    ``[x]``), every model is timed by :func:`time_models`, interleaved with the others, under the
    key ``"{backend}/b{batch}"``. ``progress`` is called with a short description before each step.
    torch's thread count is ``threads`` while torch is timed and restored afterwards.
    """
    from .export import export_onnx

    check_backends(backends)
    onnx = dict(onnx or {})
    unknown = [n for n in onnx if n not in models]
    if unknown:
        raise ValueError(f"onnx gives paths for {unknown}, which are not among the models {list(models)}")
    no_file = [n for n in models if n not in onnx]
    if "ort" in backends and no_file:
        raise ValueError(f"timing in ONNX Runtime needs an ONNX path for every model; {no_file} have none")
    say = progress or (lambda _msg: None)
    files: dict[str, Path] = {}
    for name, path in onnx.items():
        say(f"ONNX export: {name}")
        files[name] = export_onnx(models[name], x, path)
    latency: dict[str, dict[str, Timing]] = {}
    for backend in backends:
        for xb in inputs or [x]:
            key = f"{backend}/b{xb.shape[0]}"
            say(f"timing {key} ({len(models)} models side by side, {runs} runs, {threads} threads)")
            latency[key] = time_models(models, xb, backend, files=files, threads=threads, runs=runs, warmup=warmup)
    return SideBySide(files, latency)
