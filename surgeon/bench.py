"""Step 8: the benchmark. Is the pruned model really faster and smaller, and was it worth it?

One model at a set of ratios is compared across four methods (:data:`METHODS`):

* ``dense``: the unpruned model;
* ``mask``: ``torch.nn.utils.prune`` element masking (through ``surgeon.mask``) at the parameter
  sparsity that equals surgeon's parameter reduction at the same ratio; the zeros stay in dense
  tensors, so it runs as fast as the dense model (the masks are made permanent before timing);
* ``surgeon``: ``surgeon.plan(model, x, ratio).apply()``, L1, local scope;
* ``torch-pruning``: Torch-Pruning's ``MagnitudePruner`` (L1) at the same ratio, classifier ignored.

Trace + prune time of surgeon and Torch-Pruning is measured interleaved too, each on a fresh copy of
the same dense model, dependency-graph building included. Every variant is exported to ONNX and
timed with all the others interleaved, in torch and ONNX Runtime, by ``timing.side_by_side``.
"""
from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .timing import BACKENDS, Timing, check_backends, side_by_side

__all__ = ["METHODS", "Row", "BenchResult", "classifier_of", "prune_with_surgeon", "prune_with_torch_pruning",
           "mask_to_match", "effective_macs", "run_benchmark", "machine_info"]

METHODS = ("dense", "mask", "surgeon", "torch-pruning")


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
                  batches: Sequence[int] = (1, 8), backends: Sequence[str] = BACKENDS,
                  runs: int = 20, warmup: int = 3, threads: int = 2, prune_repeats: int = 3,
                  plan_kwargs: Mapping[str, Any] | None = None, workdir: str | Path | None = None,
                  progress: Callable[[str], None] | None = None) -> BenchResult:
    """Benchmark one model: every method at every ratio, sizes, ONNX files and latencies.

    ``build`` returns the dense model (called once; every variant is a copy of it). Ratio 0 is the
    dense model itself. ``progress`` is called with a short description before each step.
    """
    bad = [m for m in methods if m not in METHODS]
    if bad or "dense" not in methods:
        raise ValueError(f"methods must include 'dense' and come from {', '.join(METHODS)}; got {list(methods)}")
    check_backends(backends)
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
        variants: dict[str, tuple[Row, nn.Module]] = {}  # by ONNX file stem: "resnet18-surgeon-0.5"

        def add(method: str, ratio: float, model: nn.Module, prune_s: float | None = None,
                sparsity: float | None = None) -> Row:
            say(f"{name}: {method} @ {ratio:g}: count")
            params, nonzero = _sizes(model)
            macs, eff = effective_macs(model, x1)
            row = Row(name, method, ratio, params, nonzero, macs, eff, onnx_bytes=0, prune_s=prune_s,
                      sparsity=sparsity)
            variants[f"{name}-{method}-{ratio:g}"] = (row, model)
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

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measured = side_by_side({k: m for k, (_, m) in variants.items()}, x1,
                                    {k: wd / f"{k}.onnx" for k in variants},
                                    inputs=[torch.randn(b, *tuple(input_shape)[1:]) for b in batches],
                                    backends=backends, runs=runs, warmup=warmup, threads=threads,
                                    progress=lambda msg: say(f"{name}: {msg}"))
        for k, (row, _) in variants.items():
            row.onnx_bytes = measured.onnx[k].stat().st_size
            row.latency = {key: timings[k] for key, timings in measured.latency.items()}
        meta = machine_info(threads) | {"model": name, "input_shape": list(input_shape), "runs": runs,
                                        "warmup": warmup, "prune_repeats": prune_repeats,
                                        "batches": list(batches), "ratios": list(ratios),
                                        "loadavg_start": load_start, "loadavg_end": _loadavg()}
        return BenchResult([row for row, _ in variants.values()], meta)
    finally:
        if tmp is not None:
            tmp.cleanup()
