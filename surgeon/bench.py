"""Step 8: the benchmark. Is the pruned model really faster and smaller, and was it worth it?

Timing follows nanoGPT's ``bench.py``: a burn-in stage, then the measured one; medians; and all
methods side by side in one process. On a noisy machine two methods timed minutes apart can differ
by more than the effect being measured, so :func:`time_side_by_side` interleaves them: every round
calls each method once (in a rotated order), and each method's median is taken over its rounds.

One model at a set of ratios is compared across four methods (:data:`METHODS`):

* ``dense``: the unpruned model;
* ``mask``: ``torch.nn.utils.prune`` element masking (through ``surgeon.mask``) at the parameter
  sparsity that equals surgeon's parameter reduction at the same ratio; the zeros stay in dense
  tensors, so it runs as fast as the dense model (the masks are made permanent before timing);
* ``surgeon``: ``surgeon.plan(model, x, ratio).apply()``, L1, local scope;
* ``torch-pruning``: Torch-Pruning's ``MagnitudePruner`` (L1) at the same ratio, classifier ignored.

Trace + prune time of surgeon and Torch-Pruning is measured interleaved too, each on a fresh copy of
the same dense model, dependency-graph building included.
"""
from __future__ import annotations

import copy
import gc
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["METHODS", "Timing", "Row", "BenchResult", "time_side_by_side", "before_after", "bench_session", "torch_runner",
           "ort_runner", "classifier_of", "prune_with_surgeon", "prune_with_torch_pruning",
           "mask_to_match", "effective_macs", "run_benchmark", "machine_info"]

METHODS = ("dense", "mask", "surgeon", "torch-pruning")


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


def bench_session(path: str | Path, threads: int = 2) -> Any:
    """An onnxruntime CPU session for side-by-side timing: ``export.onnx_session`` with ``threads``
    intra-op threads (default 2), whose workers do not spin once a run ends."""
    from .export import onnx_session
    return onnx_session(path, threads=threads)


def ort_runner(session: Any, x: torch.Tensor) -> Callable[[], Any]:
    """A no-argument callable running an onnxruntime session on ``x`` (converted once, up front)."""
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
    return lambda: session.run(None, feed)


def before_after(before: nn.Module, after: nn.Module, x: torch.Tensor, onnx: tuple[Path, Path] | None = None,
                 runs: int = 20, warmup: int = 3, threads: int = 2) -> dict[str, dict[str, Timing]]:
    """Latency of two models (and of their ONNX files, when given) side by side, at ``x``'s batch:
    {"torch/b1": {"before": Timing, "after": Timing}, "ort/b1": {...}}."""
    torch.set_num_threads(threads)
    key = f"b{x.shape[0]}"
    out = {f"torch/{key}": time_side_by_side({"before": torch_runner(before, x), "after": torch_runner(after, x)},
                                             runs=runs, warmup=warmup)}
    if onnx is not None:
        out[f"ort/{key}"] = time_side_by_side({"before": ort_runner(bench_session(onnx[0], threads), x),
                                               "after": ort_runner(bench_session(onnx[1], threads), x)},
                                              runs=runs, warmup=warmup)
    return out


# ------------------------------------------------------------------------------------- methods
def classifier_of(model: nn.Module) -> nn.Module | None:
    """The model's last ``nn.Linear`` (the classifier Torch-Pruning must be told to ignore)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def prune_with_surgeon(model: nn.Module, x: torch.Tensor, ratio: float, **plan_kwargs: Any) -> float:
    """Prune ``model`` in place with ``surgeon.plan(...).apply()``; returns the seconds it took
    (trace, dependency graph, scoring, surgery and its post-condition checks)."""
    from .plan import plan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        plan(model, x, ratio=ratio, **plan_kwargs).apply()
        return time.perf_counter() - t0


def prune_with_torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float) -> float:
    """Prune ``model`` in place with Torch-Pruning's L1 ``MagnitudePruner`` (classifier ignored);
    returns the seconds it took, dependency-graph building included."""
    import torch_pruning as tp

    fc = classifier_of(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=[fc] if fc is not None else [])
        pruner.step()
        return time.perf_counter() - t0


def _maskable_weights(model: nn.Module) -> int:
    from .mask import is_maskable

    return sum(m.weight.numel() for m in model.modules() if is_maskable(m))


def mask_to_match(model: nn.Module, removed_params: int) -> float:
    """Zero ``removed_params`` weights of ``model``'s conv / linear layers by element masking (same
    fraction in each layer), make the masks permanent, and return the sparsity used. Copy the model
    first: masking is in place."""
    from .mask import mask, remove_masks

    sparsity = min(1.0, max(0.0, removed_params / max(_maskable_weights(model), 1)))
    mask(model, ratio=sparsity, granularity="element")
    remove_masks(model)
    return sparsity


def effective_macs(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(executed MACs, MACs that touch a non-zero weight) at ``x``'s batch: for a masked model the
    second is what an ideal sparse kernel would execute; for a dense one they are equal."""
    from .count import count

    c = count(model, x)
    modules = dict(model.named_modules())
    eff = 0.0
    for node in c.per_node:
        m = modules.get(node.module) if node.module is not None else None
        w = getattr(m, "weight", None) if m is not None else None
        if node.kind in ("conv", "conv_transpose", "linear") and isinstance(w, torch.Tensor) and w.numel():
            eff += node.macs * float((w != 0).sum()) / w.numel()
        else:
            eff += node.macs
    return c.macs, int(round(eff))


# --------------------------------------------------------------------------------------- results
@dataclass
class Row:
    """One variant of one model: sizes, latencies and, for pruning methods, the time to prune."""

    model: str
    method: str                 # one of METHODS
    ratio: float                # channels removed per group (the mask row: same ratio's sparsity)
    params: int                 # stored parameters
    nonzero_params: int
    macs: int                   # executed MACs at batch 1
    effective_macs: int         # MACs on non-zero weights (differs from macs only for masks)
    onnx_bytes: int
    latency: dict[str, Timing] = field(default_factory=dict)   # "torch/b1", "ort/b8", ...
    prune_s: float | None = None  # trace + prune seconds (median over repeats)
    sparsity: float | None = None  # mask rows: fraction of conv / linear weights zeroed

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = {k: asdict(v) for k, v in self.latency.items()}
        return d


@dataclass
class BenchResult:
    """Every row of one benchmark run, plus how and where it was measured."""

    rows: list[Row]
    meta: dict[str, Any]

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def find(self, model: str, method: str, ratio: float) -> Row | None:
        for r in self.rows:
            if r.model == model and r.method == method and abs(r.ratio - ratio) < 1e-9:
                return r
        return None

    def dense(self, model: str) -> Row:
        row = next((r for r in self.rows if r.model == model and r.method == "dense"), None)
        assert row is not None, f"no dense row for {model}"
        return row

    def speedup(self, row: Row, key: str) -> float | None:
        """Measured speedup of ``row`` over the dense model (same run, same latency key)."""
        base = self.dense(row.model).latency.get(key)
        mine = row.latency.get(key)
        return base.median_ms / mine.median_ms if base and mine and mine.median_ms > 0 else None

    def theoretical(self, row: Row) -> float:
        """Dense MACs / MACs on non-zero weights: what the MAC count promises."""
        return self.dense(row.model).macs / max(row.effective_macs, 1)

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": [r.to_json() for r in self.rows]}


def machine_info(threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch_pruning as tp
        tp_version = getattr(tp, "__version__", "unknown")
    except ImportError:
        tp_version = None
    return {"cpu": cpu, "threads": threads, "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": ort.__version__, "torch_pruning": tp_version}


def _loadavg() -> float | None:
    """The 1-minute load average: above the thread count, other processes competed for the cores."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


# ------------------------------------------------------------------------------------ the run
@dataclass
class _Variant:
    row: Row
    model: nn.Module
    onnx: Path


def _sizes(model: nn.Module) -> tuple[int, int]:
    ps = list(model.parameters())
    return sum(p.numel() for p in ps), sum(int((p != 0).sum()) for p in ps)


def _timed_prunes(dense: nn.Module, x: torch.Tensor, ratio: float, methods: Sequence[str], repeats: int,
                  plan_kwargs: Mapping[str, Any]) -> dict[str, tuple[nn.Module, float]]:
    """Prune fresh copies with surgeon and Torch-Pruning, alternating which goes first, ``repeats``
    times; the last copies and the median seconds per method."""
    todo = [m for m in ("surgeon", "torch-pruning") if m in methods]
    times: dict[str, list[float]] = {m: [] for m in todo}
    models: dict[str, nn.Module] = {}
    for rep in range(repeats):
        for method in (todo if rep % 2 == 0 else todo[::-1]):
            m = copy.deepcopy(dense)
            if method == "surgeon":
                times[method].append(prune_with_surgeon(m, x, ratio, **plan_kwargs))
            else:
                times[method].append(prune_with_torch_pruning(m, x, ratio))
            models[method] = m.eval()
    return {m: (models[m], statistics.median(times[m])) for m in todo}


def _burn_in_pruners(methods: Sequence[str]) -> None:
    """First calls pay one-off costs (imports, fx and dispatcher caches): pay them on a tiny model."""
    from surgeon_models import tinynet

    x = torch.randn(1, 3, 16, 16)
    if "surgeon" in methods:
        prune_with_surgeon(tinynet().eval(), x, 0.5)
    if "torch-pruning" in methods:
        prune_with_torch_pruning(tinynet().eval(), x, 0.5)


def run_benchmark(name: str, build: Callable[[], nn.Module], input_shape: Sequence[int],
                  ratios: Sequence[float] = (0.0, 0.25, 0.5, 0.75), methods: Sequence[str] = METHODS,
                  batches: Sequence[int] = (1, 8), backends: Sequence[str] = ("torch", "ort"),
                  runs: int = 20, warmup: int = 3, threads: int = 2, prune_repeats: int = 3,
                  plan_kwargs: Mapping[str, Any] | None = None, workdir: str | Path | None = None,
                  progress: Callable[[str], None] | None = None) -> BenchResult:
    """Benchmark one model: every method at every ratio, sizes, ONNX files and latencies.

    ``build`` returns the dense model (called once; every variant is a copy of it). Ratio 0 is the
    dense model itself. ``progress`` is called with a short description before each step.
    """
    from .export import export_onnx

    bad = [m for m in methods if m not in METHODS]
    if bad or "dense" not in methods:
        raise ValueError(f"methods must include 'dense' and come from {', '.join(METHODS)}; got {list(methods)}")
    bad_b = [b for b in backends if b not in ("torch", "ort")]
    if bad_b:
        raise ValueError(f"unknown backend(s) {bad_b}; choose from torch, ort")
    if any(not 0.0 <= r < 1.0 for r in ratios):
        raise ValueError(f"ratios must be in [0, 1), got {list(ratios)}")
    say = progress or (lambda _msg: None)
    plan_kwargs = dict(plan_kwargs or {})
    torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory(prefix="surgeon-bench-") if workdir is None else None
    wd = Path(tmp.name if tmp is not None else workdir)  # type: ignore[arg-type]
    wd.mkdir(parents=True, exist_ok=True)
    x1 = torch.randn(tuple(input_shape))
    load_start = _loadavg()
    _burn_in_pruners(methods)
    try:
        dense = build().eval()
        variants: list[_Variant] = []

        def add(method: str, ratio: float, model: nn.Module, prune_s: float | None = None,
                sparsity: float | None = None) -> Row:
            say(f"{name}: {method} @ {ratio:g}: count + ONNX export")
            params, nonzero = _sizes(model)
            macs, eff = effective_macs(model, x1)
            path = wd / f"{name}-{method}-{ratio:g}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx(model, x1, path)
            row = Row(name, method, ratio, params, nonzero, macs, eff, path.stat().st_size,
                      prune_s=prune_s, sparsity=sparsity)
            variants.append(_Variant(row, model, path))
            return row

        dense_row = add("dense", 0.0, dense)
        for ratio in [r for r in ratios if r > 0]:
            say(f"{name}: pruning @ {ratio:g} (surgeon and Torch-Pruning, interleaved)")
            pruned = _timed_prunes(dense, x1, ratio, methods, prune_repeats, plan_kwargs)
            for method in ("surgeon", "torch-pruning"):
                if method in pruned:
                    add(method, ratio, *pruned[method])
            if "mask" in methods:
                if "surgeon" in pruned:
                    target = dense_row.params - _sizes(pruned["surgeon"][0])[0]
                else:  # no surgeon run to match: prune a throwaway copy to learn the reduction
                    probe = copy.deepcopy(dense)
                    prune_with_surgeon(probe, x1, ratio, **plan_kwargs)
                    target = dense_row.params - _sizes(probe)[0]
                masked = copy.deepcopy(dense)  # copy before masking: masked models do not deepcopy
                s = mask_to_match(masked, target)
                add("mask", ratio, masked.eval(), sparsity=s)

        for backend in backends:
            for b in batches:
                key = f"{backend}/b{b}"
                say(f"{name}: timing {key} ({len(variants)} variants side by side, {runs} runs)")
                xb = torch.randn(b, *tuple(input_shape)[1:])
                if backend == "torch":
                    fns = {str(i): torch_runner(v.model, xb) for i, v in enumerate(variants)}
                else:
                    fns = {str(i): ort_runner(bench_session(v.onnx, threads=threads), xb)
                           for i, v in enumerate(variants)}
                timings = time_side_by_side(fns, runs=runs, warmup=warmup)
                for i, v in enumerate(variants):
                    v.row.latency[key] = timings[str(i)]
                del fns
                gc.collect()
        meta = machine_info(threads) | {"model": name, "input_shape": list(input_shape), "runs": runs,
                                        "warmup": warmup, "prune_repeats": prune_repeats,
                                        "batches": list(batches), "ratios": list(ratios),
                                        "loadavg_start": load_start, "loadavg_end": _loadavg()}
        return BenchResult([v.row for v in variants], meta)
    finally:
        if tmp is not None:
            tmp.cleanup()
