"""What a plan costs in *time*: ``LatencyModel`` predicts a model's latency after a removal, as
``cost.CostModel`` predicts its MACs and parameters, from per-node terms and the removed counts
``{Pos: count}``.

- Layers (Conv, depthwise Conv, ConvTranspose, Linear called as modules) read the lookup table of
  ``surgeon.lut`` at their new (c_in, c_out): measured alone on a grid of counts at their real input
  size and batch, interpolated bilinearly (linearly for depthwise, whose one count is c_in = c_out).
  Both counts matter: halving c_in and c_out leaves a quarter, not zero.
- Everything else (activations, adds, pooling, norms, layers the table cannot build) is memory-bound:
  its time is taken proportional to its work as ``surgeon.count`` counts it (output elements for
  elementwise ops), scaled like ``CostModel`` scales MACs by (new size / old size) of its dims.
- Calibration: the whole dense model is measured once. What the layers do not explain is spread
  over the memory-bound terms; when the isolated layers already add up to more than the whole model
  (each standalone layer pays layout conversions a whole model shares), the layer terms are scaled
  down instead and memory-bound terms get nothing. ``Calibration`` reports which.

Runtimes (``LatencySettings.runtime``, ``lut.RUNTIMES``): ``"onnxruntime"`` (CPU, the default) or
``"torch"`` (eager, CPU). Layers, the dense model and the pruned plans are all measured in that
runtime, and its tables are cached apart from the other's.

Channel counts: on ONNX Runtime's x86 CPU kernels a count that is not a multiple of the SIMD block
can cost *more* than the next multiple up (a slower kernel path). ``probe_multiple`` measures this
on the model's own widest layers rather than assuming it (in whichever runtime is targeted), and the
latency allocation then moves in steps of the measured multiple.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from .cost import CostModel, cost_model
from .graph import iter_module_calls, layer_positions
from .indexmap import Pos
from .lut import CacheKey, LatencyTable, Measure, Sample, Signature, check_runtime

if TYPE_CHECKING:
    from .trace import ChannelGraph

__all__ = ["LatencySettings", "LatencyModel", "Calibration", "MultipleProbe", "build_latency_model",
           "measure_models", "time_models_onnx", "layer_signature"]

GRID = (1.0, 0.75, 0.5, 0.25, 0.1)  # sampled fractions of a layer's original channel count
ALIGN = 16                          # grid counts are multiples of this (the fast path, see the docstring)

TimeModels = Callable[[Sequence[nn.Module], Any, int], Sequence[float]]


VALUES = ("log", "linear")  # LatencySettings.value


@dataclass
class LatencySettings:
    """How latency is measured and targets are checked. The callables exist so tests can inject
    fake timings (unit tests never time anything).

    runtime: where latency is measured and targeted: ``"onnxruntime"`` (CPU, default) or ``"torch"``
        (eager on the CPU; ``lut.RUNTIMES``). Anything else is a ``ValueError``.
    threads: intra-op threads of the runtime (2: benchmarks on shared machines pin it). torch's
        process-wide count is set only while torch is timed, and restored.
    refresh: re-measure the lookup table even when the cache has it.
    rounds / tolerance: after planning, the pruned model is measured; while measured latency is off
        the target by more than ``tolerance`` (relative), the goal is corrected along the line
        through the measured plans (``allocate.next_aim``) and channels re-allocated, at most
        ``rounds`` plans in all. The default 5% is half the 10% a target is judged by: a second
        measurement of the same model on this shared 2-core machine moved by up to ~8%, so a plan
        that stops at 9.9% off often lands above 10%.
    multiple: channel step of the allocation; None measures it (``probe_multiple``).
    measure_layers(samples, threads) -> ms: times lookup-table samples (default: the runtime's,
        ``lut.measure_onnx`` or ``lut.measure_torch``).
    time_models(models, inputs, threads) -> ms: times whole models side by side (default
        ``measure_models`` in the runtime, see ``model_timer``); ``check=False`` skips measuring the
        plan (prediction only).
    value: how the allocation counts lost importance. ``"log"`` (default): a channel costs its
        normalised score times the group's original width over the channels it still keeps, so a
        group is worth about ``width * log(kept)`` and cutting a stream to its last few channels
        costs several times its first cuts. ``"linear"``: a channel costs its score wherever it is
        (the allocation then piles cuts onto the groups where time goes: on ResNet-20 / digits it
        lost 1.7 points of accuracy against the uniform plan of the same latency over 10 seeds,
        ``"log"`` 0.25; see benchmarks/README.md).
    """

    runtime: str = "onnxruntime"
    threads: int = 2
    refresh: bool = False
    rounds: int = 3
    tolerance: float = 0.05
    multiple: Optional[int] = None
    cache_dir: Optional[Path] = None
    measure_layers: Optional[Measure] = None
    time_models: Optional[TimeModels] = None
    check: bool = True
    progress: bool = True
    runs: int = 20
    value: str = "log"

    def __post_init__(self) -> None:
        check_runtime(self.runtime)
        if self.value not in VALUES:
            raise ValueError(f"LatencySettings(value={self.value!r}): choose 'linear' (a removed channel costs its "
                             "score) or 'log' (its score times original width / channels left)")

    def model_timer(self) -> TimeModels:
        """``time_models``, or by default ``measure_models`` in ``runtime`` with ``runs`` rounds."""
        return self.time_models or partial(measure_models, runtime=self.runtime, runs=self.runs)


@dataclass(frozen=True)
class Calibration:
    """How the sum over nodes was matched to the measured dense model (all in ms)."""

    measured_ms: float      # the whole dense model, measured
    layers_ms: float        # the lookup-table layers, summed as measured alone
    layer_scale: float      # factor applied to layer terms (1 unless they overshoot the whole model)
    memory_ms: float        # what the memory-bound terms were given

    def __str__(self) -> str:
        how = (f"the other ops get the remaining {self.memory_ms:.2f} ms" if self.layer_scale == 1.0 else
               f"layers scaled by {self.layer_scale:.2f} (alone they add up to more than the whole model)")
        return (f"dense model measured {self.measured_ms:.2f} ms; its layers alone {self.layers_ms:.2f} ms; {how}")


@dataclass(frozen=True)
class MultipleProbe:
    """Whether channel counts off a multiple cost extra, as measured: per probe layer (signature
    key) and side ("out": output channels varied, "in": input channels varied), ms at b, b + 1,
    b + 8 and b + 16 channels (b a multiple of 16)."""

    multiple: int
    evidence: tuple[tuple[str, str, int, tuple[float, float, float, float]], ...] = ()

    def __str__(self) -> str:
        rows = "; ".join(f"{sig.split('|')[0]} {sig.split('|')[1][1:]} {sig.split('|')[6]} {side} at "
                         f"{b}/{b + 1}/{b + 8}/{b + 16}: " + "/".join(f"{t:.3f}" for t in ms) + " ms"
                         for sig, side, b, ms in self.evidence)
        verdict = (f"counts off a multiple of {self.multiple} cost as much as the next multiple up: "
                   f"allocating in steps of {self.multiple}") if self.multiple > 1 else \
            "no measured penalty for counts off a multiple of 8 or 16: allocating channel by channel"
        return verdict + (f" ({rows})" if rows else "")


def _pair(v: Any, n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def layer_signature(module: nn.Module, in_shape: Sequence[int]) -> Optional[tuple[Signature, int, int]]:
    """(signature, c_in, c_out) of a layer the lookup table can measure, else None (grouped convs,
    non-zero padding modes, anything else: those count as memory-bound terms)."""
    if isinstance(module, nn.Linear):
        rows = int(np.prod(in_shape[:-1]))
        return Signature("Gemm", batch=rows, bias=module.bias is not None), module.in_features, module.out_features
    if not isinstance(module, nn.modules.conv._ConvNd):
        return None
    n = len(in_shape) - 2
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
    if (module.groups > 1 and not depthwise) or (transposed and module.groups > 1) or \
            module.padding_mode != "zeros" or any(module.output_padding if transposed else ()):
        return None
    k, s, d = _pair(module.kernel_size, n), _pair(module.stride, n), _pair(module.dilation, n)
    if isinstance(module.padding, str):  # "same" / "valid", as explicit pads
        if module.padding == "valid":
            pads = (0,) * 2 * n
        else:
            total = [di * (ki - 1) for ki, di in zip(k, d)]
            pads = tuple(t // 2 for t in total) + tuple(t - t // 2 for t in total)
    else:
        p = _pair(module.padding, n)
        pads = p + p
    sig = Signature("ConvTranspose" if transposed else "Conv", k, s, pads, d, depthwise,
                    tuple(int(v) for v in in_shape[2:]), int(in_shape[0]), module.bias is not None)
    return sig, module.in_channels, module.out_channels


def grid(n: int) -> list[int]:
    """Sampled counts for a layer with ``n`` channels: n and GRID fractions of it, as multiples of
    ALIGN (n=256: 256, 192, 128, 64, 32; n=24: 24, 16, 8, ...). Ascending."""
    out = {n}
    for f in GRID[1:]:
        c = int(round(f * n / ALIGN)) * ALIGN if n >= 2 * ALIGN else int(round(f * n))
        out.add(max(1, min(n, c)))
    return sorted(out)


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Piecewise linear through (xs, ys), extrapolated linearly past the ends, never negative."""
    if len(xs) == 1:
        return float(ys[0]) * x / float(xs[0])
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = len(xs) - 2
    else:
        return float(np.interp(x, xs, ys))
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return max(0.0, float(ys[i] + slope * (x - xs[i])))


@dataclass
class _LayerTerm:
    name: str
    sig: Signature
    cin_pos: Optional[Pos]
    cout_pos: Optional[Pos]
    cin0: int
    cout0: int
    xs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ys: np.ndarray = field(default_factory=lambda: np.zeros(0))
    table: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [i_cin, j_cout] ms

    def samples(self) -> list[Sample]:
        if self.sig.depthwise:
            return [Sample(self.sig, c, c) for c in grid(self.cout0)]
        return [Sample(self.sig, a, b) for a in grid(self.cin0) for b in grid(self.cout0)]

    def fill(self, table: LatencyTable) -> None:
        self.ys = np.asarray(grid(self.cout0), dtype=np.float64)
        if self.sig.depthwise:
            self.xs = self.ys
            self.table = np.asarray([[table[Sample(self.sig, c, c)]] for c in grid(self.cout0)])
        else:
            self.xs = np.asarray(grid(self.cin0), dtype=np.float64)
            self.table = np.asarray([[table[Sample(self.sig, a, b)] for b in grid(self.cout0)]
                                     for a in grid(self.cin0)])

    def ms(self, cin: float, cout: float) -> float:
        if self.sig.depthwise:
            return _interp(self.ys, self.table[:, 0], cout)
        row = np.asarray([_interp(self.ys, self.table[i], cout) for i in range(len(self.xs))])
        return _interp(self.xs, row, cin)


@dataclass
class _MemoryTerm:
    name: str
    work: float            # surgeon.count's MACs of the node (elements for elementwise ops), or one term of them
    positions: list[Pos]   # the sizes that scale it (``cost.CostModel.node_terms``)


class LatencyModel:
    """Predicted latency (ms) of ``graph.model`` after removing ``removed[pos]`` indices of each
    position; ``dense_ms`` is the measured dense model, ``calibration`` how the terms were fitted."""

    def __init__(self, graph: "ChannelGraph", table: LatencyTable | None = None,
                 cost: Optional[CostModel] = None) -> None:
        self.sizes: dict[Pos, int] = {p: graph.size(p) for p in graph.nx.nodes}
        self.layers: list[_LayerTerm] = []
        self.memory: list[_MemoryTerm] = []
        self.layer_scale = 1.0
        self.memory_coef = 0.0
        self.calibration: Optional[Calibration] = None
        self.probe = MultipleProbe(1)
        measured: set[str] = set()
        for node, qn, module, entry in iter_module_calls(graph.traced):
            x = node.args[0] if node.args else None
            meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
            found = layer_signature(module, meta.shape) if isinstance(meta, TensorMetadata) else None
            if found is None:
                continue
            sig, cin, cout = found
            pin, pout = layer_positions(node, entry.layer.in_dim, entry.layer.out_dim)
            self.layers.append(_LayerTerm(qn, sig, pin if pin in self.sizes else None,
                                          pout if pout in self.sizes else None, cin, cout))
            measured.add(node.name)
        terms = (cost or cost_model(graph)).node_terms
        for node in graph.traced.gm.graph.nodes:
            if node.op in ("call_module", "call_function", "call_method") and node.name not in measured:
                self.memory += [_MemoryTerm(node.name, float(w), ps) for w, ps in terms.get(node.name, ()) if w]
        self.by_pos: dict[Pos, list[tuple[str, int]]] = {}
        for i, t in enumerate(self.layers):
            for p in {t.cin_pos, t.cout_pos} - {None}:
                self.by_pos.setdefault(p, []).append(("layer", i))
        for i, m in enumerate(self.memory):
            for p in m.positions:
                self.by_pos.setdefault(p, []).append(("memory", i))
        if table is not None:
            table.ensure([s for t in self.layers for s in t.samples()])
            for t in self.layers:
                t.fill(table)

    # ------------------------------------------------------------------------------ prediction
    def _new(self, p: Optional[Pos], n0: int, removed: Mapping[Pos, int]) -> float:
        if p is None:
            return n0
        return n0 * (self.sizes[p] - removed.get(p, 0)) / self.sizes[p]

    def term_ms(self, term: tuple[str, int], removed: Mapping[Pos, int]) -> float:
        kind, i = term
        if kind == "layer":
            t = self.layers[i]
            return self.layer_scale * t.ms(self._new(t.cin_pos, t.cin0, removed), self._new(t.cout_pos, t.cout0, removed))
        m = self.memory[i]
        f = 1.0
        for p in m.positions:
            k = removed.get(p, 0)
            if k:
                f *= (self.sizes[p] - k) / self.sizes[p]
        return self.memory_coef * m.work * f

    def terms(self) -> list[tuple[str, int]]:
        return [("layer", i) for i in range(len(self.layers))] + [("memory", i) for i in range(len(self.memory))]

    def predict(self, removed: Mapping[Pos, int]) -> float:
        """Milliseconds once ``removed[pos]`` indices are gone from each position."""
        return sum(self.term_ms(t, removed) for t in self.terms())

    @property
    def dense_ms(self) -> float:
        return self.calibration.measured_ms if self.calibration else self.predict({})

    def calibrate(self, measured_ms: float) -> Calibration:
        """Fit the terms so the dense prediction equals ``measured_ms`` (see the module docstring)."""
        self.layer_scale, self.memory_coef = 1.0, 0.0
        layers = self.predict({})
        work = sum(m.work for m in self.memory)
        if layers <= measured_ms and work > 0:
            self.memory_coef = (measured_ms - layers) / work
        elif layers > 0:
            self.layer_scale = measured_ms / layers
        self.calibration = Calibration(measured_ms, layers, self.layer_scale, self.memory_coef * work)
        return self.calibration


# -------------------------------------------------------------------------------- the multiple
def probe_samples(model: LatencyModel, n: int = 4) -> list[tuple[_LayerTerm, int, int]]:
    """Up to ``n`` dense convs to probe, one per signature, largest input first (where a channel's
    own work dominates the fixed costs), each with its base counts (multiples of 16 near half its
    input and half its output channels)."""
    convs = [t for t in model.layers if t.sig.op == "Conv" and not t.sig.depthwise and t.cout0 >= 48
             and t.cin0 >= 16]
    convs.sort(key=lambda t: -int(np.prod(t.sig.spatial)) * t.cin0)
    seen, out = set(), []
    for t in convs:
        if t.sig.key() not in seen:
            seen.add(t.sig.key())
            out.append((t, max(ALIGN, (t.cin0 // 2) // ALIGN * ALIGN), max(ALIGN, (t.cout0 // 2) // ALIGN * ALIGN)))
    return out[:n]


def _rise(ms: Sequence[float], lo: int, mid: int, hi: int) -> float:
    """How much of the rise from count ``lo`` to ``hi`` is already paid at ``mid`` (indices into
    ``ms``): 1/16 for b+1 of b..b+16 if time is linear in the count, about 1 if a kernel pads to
    the multiple, more if the odd count takes a slower path. The rise is floored at 2% of t(lo) so
    that noise on a flat curve does not divide by nearly zero."""
    return (ms[mid] - ms[lo]) / max(ms[hi] - ms[lo], 0.02 * ms[lo])


_STEPS = (0, 1, 8, 16)


def _probe_sample(t: _LayerTerm, side: str, b: int, j: int) -> Sample:
    return Sample(t.sig, t.cin0, b + j) if side == "out" else Sample(t.sig, b + j, t.cout0)


def _verdict(rows: Sequence[tuple[float, float, float, float]]) -> int:
    """16 when b + 1 already pays half the rise to b + 16 and b + 8 three quarters (linear would be
    1/16 and 1/2); else 8 when b + 1 pays half the rise to b + 8 (linear: 1/8); else 1. Medians
    over the probe layers, so one noisy layer does not decide."""
    if not rows:
        return 1
    if float(np.median([_rise(ms, 0, 1, 3) for ms in rows])) >= 0.5 and \
            float(np.median([_rise(ms, 0, 2, 3) for ms in rows])) >= 0.75:
        return 16
    return 8 if float(np.median([_rise(ms, 0, 1, 2) for ms in rows])) >= 0.5 else 1


def probe_multiple(model: LatencyModel, table: LatencyTable) -> MultipleProbe:
    """Measure whether counts just past a multiple cost as much as the next multiple up.

    A group's count is the output count of its producers and the input count of its consumers, so
    both are probed: at b, b + 1, b + 8 and b + 16 output channels of each probe layer (its input
    as it is), and the same for its input channels. Each side gets a verdict (``_verdict``), and
    the larger multiple wins: a penalty on either side is paid by every group that has that side.
    Measured here, MobileNetV2's output side shows the penalty (a 1x1 conv at 56x56: 0.29 ms at 64
    outputs, 0.59 at 65) while its input side, probed at small counts (16 of 32 inputs), is noise."""
    probes = [(t, side, b) for t, b_in, b_out in probe_samples(model) for side, b in (("out", b_out), ("in", b_in))]
    table.ensure([_probe_sample(t, side, b, j) for t, side, b in probes for j in _STEPS])
    evidence = []
    for t, side, b in probes:
        ms = tuple(table[_probe_sample(t, side, b, j)] for j in _STEPS)
        evidence.append((t.sig.key(), side, b, ms))
    multiple = max(_verdict([ms for _, s, _, ms in evidence if s == side]) for side in ("out", "in"))
    return MultipleProbe(multiple, tuple(evidence))


# --------------------------------------------------------------------------------- whole models
def measure_models(models: Sequence[nn.Module], inputs: Any, threads: int, runtime: str = "onnxruntime",
                   runs: int = 20, min_seconds: float = 1.5, sessions: int = 3) -> list[float]:
    """Median ms of each model in ``runtime`` (for ONNX Runtime exported once to a temporary folder),
    side by side (``timing.time_models``, which restores the torch thread count and train flags).

    Timed ``sessions`` times (ONNX Runtime: each time in fresh sessions), over at least ``runs``
    rounds and at least ``min_seconds`` of the first model's time (capped at 400 rounds); the result
    is the median over the sessions of each model's median. On this shared 2-core machine one timing
    is not enough: 20 runs of an 11 ms MobileNetV2 last 0.2 s (a burst of another process moved the
    median by 10%), and the same ResNet-50 plan measured 0.55 and 0.62 of dense in two sessions a
    minute apart."""
    from .export import export_onnx
    from .timing import time_models

    backend = check_runtime(runtime).backend
    named = {f"m{i}": m for i, m in enumerate(models)}
    with tempfile.TemporaryDirectory(prefix="surgeon-latency-") as tmp:
        files = ({n: export_onnx(m, inputs, Path(tmp) / f"{n}.onnx", check=False) for n, m in named.items()}
                 if backend == "ort" else None)
        t = time_models(named, inputs, backend, files=files, threads=threads, runs=runs, warmup=3,
                        min_seconds=min_seconds, sessions=sessions)
    return [t[n].median_ms for n in named]


def time_models_onnx(models: Sequence[nn.Module], inputs: Any, threads: int, runs: int = 20,
                     min_seconds: float = 1.5, sessions: int = 3) -> list[float]:
    """``measure_models`` in ONNX Runtime (the name ``benchmarks/latency_targets.py`` uses)."""
    return measure_models(models, inputs, threads, "onnxruntime", runs, min_seconds, sessions)


def _input_shape(inputs: Any) -> tuple[int, ...]:
    x = inputs if not isinstance(inputs, (tuple, list)) else inputs[0]
    if isinstance(x, dict):
        x = next(iter(x.values()))
    return tuple(int(s) for s in getattr(x, "shape", ()))


def build_latency_model(graph: "ChannelGraph", settings: LatencySettings,
                        cost: Optional[CostModel] = None) -> LatencyModel:
    """Measure (or read from the cache) every layer's table, probe the channel multiple, measure
    the dense model and calibrate. ``cost``: the plan's ``CostModel``, whose per-node terms scale
    the unmeasured ops (counted here when not given)."""
    key = CacheKey.current(settings.threads, _input_shape(graph.traced.inputs), settings.runtime)
    table = LatencyTable(key, settings.measure_layers, settings.cache_dir, settings.refresh, settings.progress)
    model = LatencyModel(graph, table, cost)
    model.probe = probe_multiple(model, table) if settings.multiple is None else MultipleProbe(settings.multiple)
    dense = float(settings.model_timer()([graph.model], graph.traced.inputs, settings.threads)[0])
    if not math.isfinite(dense) or dense <= 0:
        raise ValueError(f"the dense model's measured latency must be a positive number of ms, got {dense!r}")
    model.calibrate(dense)
    return model
