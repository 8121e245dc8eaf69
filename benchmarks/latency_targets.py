"""The latency-target section of ``benchmarks/latency.py`` (``--latency-targets 0.5,0.3``).

For each model and target: the latency-aware plan (``surgeon.plan(target_latency=t)``, L1), and the
uniform plan (local scope, one ratio for every group) whose *measured* latency is the same, found by
bisection on the ratio with measurements. Plus, per model, the other direction: the uniform ratio
0.5 plan, and the latency-aware plan targeting its measured latency. Reported: target, predicted and
measured latency (fractions of the dense ONNX Runtime latency), importance kept (L1 scores normalised
per group by their mean, as the allocation does) and channels removed, for both plans. Every figure
of the table comes from one final side-by-side timing of all variants of a model (batch 1, ONNX
Runtime CPU, ``--threads`` intra-op threads); the plan's own checks are separate measurements.
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

import surgeon
import surgeon_models as zoo
from surgeon.allocate import importance_kept
from surgeon.latency import LatencySettings, measure_models

DEFAULT_MODELS = ("resnet50", "mobilenet_v2", "resnet18")


def _removed(plan: surgeon.Plan) -> int:
    return int(sum(len(c.remove) for c in plan.cuts))


def _measured_fraction(dense: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor, threads: int,
                       runs: int, runtime: str) -> float:
    d, p = measure_models([dense, pruned], x, threads, runtime, runs)
    return p / d


def _uniform_matching(model: torch.nn.Module, x: torch.Tensor, want: float, threads: int, runs: int,
                      runtime: str, log: Callable[[str], None]) -> tuple[float, surgeon.Plan, torch.nn.Module]:
    """The local-scope ratio whose measured latency fraction is closest to ``want`` (bisection on
    the ratio, at most 7 measurements)."""
    lo, hi, best = 0.0, 0.9, None
    for _ in range(7):
        r = (lo + hi) / 2
        m = copy.deepcopy(model)
        p = surgeon.plan(m, x, ratio=r)
        p.apply()
        got = _measured_fraction(model, m, x, threads, runs, runtime)
        log(f"  uniform ratio {r:.3f}: measured {got:.3f} (want {want:.3f})")
        if best is None or abs(got - want) < abs(best[3] - want):
            best = (r, p, m, got)
        if abs(got / want - 1) <= 0.03:
            break
        lo, hi = (r, hi) if got > want else (lo, r)
    assert best is not None
    return best[0], best[1], best[2]


def run_model(name: str, targets: list[float], threads: int, runs: int, log: Callable[[str], None],
              runtime: str = "onnxruntime") -> dict:
    model = zoo.get(name).eval()
    x = torch.randn(zoo.input_shape(name))
    settings = LatencySettings(threads=threads, runs=runs, runtime=runtime)
    variants: dict[str, torch.nn.Module] = {"dense": model}
    rows: list[dict[str, Any]] = []

    def latency_plan(target: float) -> tuple[surgeon.Plan, torch.nn.Module, float]:
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        p = surgeon.plan(m, x, target_latency=target, latency=settings)
        plan_s = time.perf_counter() - t0
        log(f"  target {target:g}:\n" + "\n".join("    " + line for line in str(p.target).splitlines()))
        imp = importance_kept(p.cuts)
        p.apply(verify=True)
        return p, m, plan_s, imp

    for t in targets:
        p, m, plan_s, imp = latency_plan(t)
        want = p.target.measured_fraction or t
        r, up, um = _uniform_matching(model, x, want, threads, runs, runtime, log)
        variants[f"latency@{t:g}"], variants[f"uniform@{t:g}"] = m, um
        rows.append({"kind": "target", "target": t, "predicted": p.target.predicted_fraction,
                     "rounds": len(p.target.rounds), "plan_s": round(plan_s, 1), "uniform_ratio": r,
                     "importance_latency": imp, "importance_uniform": importance_kept(up.cuts),
                     "removed_latency": _removed(p), "removed_uniform": _removed(up),
                     "step": p.target.step, "calibration": str(p.target.calibration),
                     "probe": str(p.target.probe), "latency_key": f"latency@{t:g}", "uniform_key": f"uniform@{t:g}"})
    # the other direction: uniform 0.5, and the latency plan at its measured latency
    um = copy.deepcopy(model)
    up = surgeon.plan(um, x, ratio=0.5)
    up.apply()
    f = _measured_fraction(model, um, x, threads, runs, runtime)
    p, m, plan_s, imp = latency_plan(min(1.0, f))
    variants["uniform@r0.5"], variants["latency@r0.5"] = um, m
    rows.append({"kind": "at uniform 0.5", "target": f, "predicted": p.target.predicted_fraction,
                 "rounds": len(p.target.rounds), "plan_s": round(plan_s, 1), "uniform_ratio": 0.5,
                 "importance_latency": imp, "importance_uniform": importance_kept(up.cuts),
                 "removed_latency": _removed(p), "removed_uniform": _removed(up), "step": p.target.step,
                 "calibration": str(p.target.calibration), "probe": str(p.target.probe),
                 "latency_key": "latency@r0.5", "uniform_key": "uniform@r0.5"})
    # the reported figures: every variant side by side, in one run
    names = list(variants)
    ms = measure_models([variants[n] for n in names], x, threads, runtime, runs * 2)
    measured = dict(zip(names, ms))
    for row in rows:
        row["measured_latency"] = measured[row["latency_key"]] / measured["dense"]
        row["measured_uniform"] = measured[row["uniform_key"]] / measured["dense"]
    return {"model": name, "dense_ms": measured["dense"], "ms": measured, "rows": rows}


def to_markdown(results: list[dict], meta: dict) -> str:
    where = (f"ONNX Runtime {meta['onnxruntime']} CPU" if meta.get("runtime", "onnxruntime") == "onnxruntime"
             else f"torch {meta['torch']} eager CPU")
    lines = [f"# Latency targets ({where}, batch 1, {meta['threads']} threads, "
             f"{meta['cpu']}; load average {meta['load_before']} before, {meta['load_after']} after)", "",
             "Fractions of the dense model's latency, all variants of a model timed side by side in one run. "
             "Importance: L1 scores normalised per group, share kept. Uniform: local scope, one ratio, "
             "bisected on measured latency to match the latency-aware plan.", "",
             "| model | row | target | predicted | measured | uniform ratio | uniform measured | importance kept "
             "(latency / uniform) | channels removed (latency / uniform) | rounds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            lines.append(f"| {res['model']} ({res['dense_ms']:.1f} ms) | {r['kind']} | {r['target']:.3f} | "
                         f"{r['predicted']:.3f} | {r['measured_latency']:.3f} | {r['uniform_ratio']:.3f} | "
                         f"{r['measured_uniform']:.3f} | {r['importance_latency']:.3f} / {r['importance_uniform']:.3f} | "
                         f"{r['removed_latency']} / {r['removed_uniform']} | {r['rounds']} |")
    lines.append("")
    for res in results:
        r = res["rows"][0]
        lines += [f"- {res['model']}: {r['calibration']}", f"  - channel step: {r['probe']}"]
    lines += ["", f"Command: `{meta['command']}` ({meta['wall_s']} s)"]
    return "\n".join(lines) + "\n"


def run(models: list[str], targets: list[float], threads: int, runs: int, out: Path | None, command: str,
        log: Callable[[str], None], runtime: str = "onnxruntime") -> str:
    from surgeon.bench import machine_info
    t0 = time.perf_counter()
    meta = {**machine_info(threads), "load_before": round(os.getloadavg()[0], 2), "targets": targets,
            "command": command, "runtime": runtime}
    results = []
    for name in models:
        log(f"[{name}]")
        results.append(run_model(name, targets, threads, runs, log, runtime))
    meta["load_after"] = round(os.getloadavg()[0], 2)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    md = to_markdown(results, meta)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = "latency_targets" if runtime == "onnxruntime" else f"latency_targets_{runtime}"
        (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        (out / f"{stem}.md").write_text(md)
    return md
