"""Latency-aware vs uniform pruning at the same measured latency, on real data (digits).

    python benchmarks/latency_accuracy.py             # the full run (about 15 min on 2 cores)
    python benchmarks/latency_accuracy.py --quick     # tinynet, one seed, 1 + 1 epochs (seconds); writes nothing unless --out
    python benchmarks/latency_accuracy.py --merge A/latency_accuracy.json B/latency_accuracy.json --out C
                                                      # one report over the seeds of several runs

The acceptance test of the latency targets (issue 10): at the same measured latency, does the
latency-aware plan (``surgeon.plan(target_latency=...)``, L1) keep more total importance than the
uniform plan (local scope, one ratio, L1), and is its accuracy after the same fine-tune at least as
high? For each model and seed:

1. train the dense model on digits (``benchmarks/accuracy.py``'s recipe and data: SGD, cosine,
   batch 64, ``D`` epochs, one thread);
2. the uniform plan at ratio 0.5; its latency fraction ``f`` measured side by side with the dense
   model (ONNX Runtime CPU, 2 intra-op threads, the benchmark batch);
3. the latency-aware plan with ``target_latency=f`` (it measures its own result and re-allocates
   while it misses by more than 10%);
4. the reported latencies: dense, uniform and latency-aware timed side by side in one final run;
   importance kept (``surgeon.allocate.importance_kept``: L1 scores normalised per group by their
   mean), channels removed, parameters and MACs (at batch 1);
5. test accuracy right after the prune, then after ``F`` epochs of fine-tuning, the same recipe
   and the same data order for both plans.

Input: 32x32 images (the 8x8 digits upsampled, for training too) at batch 64 (the training batch).
Why: the digits models at 16x16 and batch 1 run in 0.25-0.65 ms in ONNX Runtime here, too short for
a latency to be measured well; at batch 64, 32x32 they take about 64 ms (ResNet-20) and 15 ms
(MobileNetV2), measured on this machine with ``time_models_onnx``. At 16x16 / batch 64 (12 and 6 ms)
the isolated layers of the lookup table run 0.1-0.4 ms each and their sum overshoots the whole model
by 1.3-2.4x (fixed per-session costs dominate), so the latency model, and with it the target, is
judged where it is least meaningful; 32x32 is also the size these CIFAR-style models were built for.
The cost is training time (an epoch at 32x32 costs 2-3x one at 16x16), so the default budget is
smaller than ``accuracy.py``'s: D = 6, F = 3. ``--size 16`` runs the cheaper variant.

Every plan is applied with ``verify=True`` (the surgical-equivalence oracle). The lookup table is
measured once per run into a temporary cache (not the user's), shared by the seeds of a model.
Training runs on one thread (``torch.set_num_threads(1)``); the timings use ``--threads`` (2).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

import surgeon
import surgeon_models as zoo
from surgeon.allocate import importance_kept
from surgeon.latency import VALUES, LatencySettings, time_models_onnx
from surgeon.lut import Measure
from surgeon.train import digits, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import _footprint, _trainer  # noqa: E402  (the same recipe, data and counting)
from latency_targets import _removed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet20", "mobilenet_v2_32")
SEEDS = (0, 1, 2)
VARIANTS = ("uniform", "latency")
TimeModels = Callable[[Sequence[torch.nn.Module], Any, int], Sequence[float]]


def _example(size: int, batch: int) -> torch.Tensor:
    """The first ``batch`` training images: the shape every plan and timing uses (real pixels, so
    the oracle of ``apply(verify=True)`` compares real activations)."""
    train, _ = digits(size=size)
    return train.tensors[0][:batch].clone()


def _widths(model: torch.nn.Module) -> dict[str, list[int]]:
    """[in, out] channels of every conv / linear: the shapes a plan left (its latency depends on them)."""
    return {n: [m.in_channels, m.out_channels] if isinstance(m, torch.nn.modules.conv._ConvNd)
            else [m.in_features, m.out_features]
            for n, m in model.named_modules() if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))}


def _finetune(name: str, seed: int, size: int, model: torch.nn.Module, epochs: int) -> tuple[float, float, float]:
    """(accuracy right after the prune, after ``epochs`` of fine-tuning, seconds); the same data
    order and recipe for every model of a seed."""
    trainer = _trainer(name, seed, size)
    before = trainer.evaluate(model)
    seed_everything(seed)
    t0 = time.perf_counter()
    trainer.fit(model, epochs, desc=f"{name} fine-tune")
    return before, trainer.evaluate(model), time.perf_counter() - t0


def run_seed(name: str, seed: int, args: argparse.Namespace, timer: TimeModels, final_timer: TimeModels,
             measure_layers: Optional[Measure], cache: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train, prune both ways, time side by side, fine-tune both: one row per variant (and dense)."""
    t0 = time.perf_counter()
    seed_everything(seed)
    dense = zoo.get(name, num_classes=10)
    trainer = _trainer(name, seed, args.size)
    trainer.fit(dense, args.dense_epochs, desc=f"{name} dense")
    dense.eval()
    rows: dict[str, dict[str, Any]] = {"dense": {"accuracy": trainer.evaluate(dense), "train_s": time.perf_counter() - t0}}
    log(f"  seed {seed}: dense {100 * rows['dense']['accuracy']:.2f}% ({rows['dense']['train_s']:.0f} s)")
    x = _example(args.size, args.batch)

    um = copy.deepcopy(dense)
    up = surgeon.plan(um, x, ratio=args.ratio)
    rows["uniform"] = {"importance_kept": importance_kept(up.cuts), "removed": _removed(up)}
    up.apply(verify=True)
    d_ms, u_ms = timer([dense, um], x, args.threads)
    f = u_ms / d_ms
    log(f"  uniform {args.ratio:g}: measured {f:.3f} of dense ({u_ms:.2f} / {d_ms:.2f} ms)")

    lm = copy.deepcopy(dense)
    settings = LatencySettings(threads=args.threads, runs=args.runs, cache_dir=cache, progress=False,
                               time_models=timer, measure_layers=measure_layers, value=args.value)
    t1 = time.perf_counter()
    lp = surgeon.plan(lm, x, target_latency=min(1.0, f), latency=settings, max_layer_ratio=args.max_layer_ratio)
    plan_s = time.perf_counter() - t1
    rep = lp.target
    rows["latency"] = {"importance_kept": importance_kept(lp.cuts), "removed": _removed(lp), "target": min(1.0, f),
                       "predicted_fraction": rep.predicted_fraction, "plan_measured_fraction": rep.measured_fraction,
                       "rounds": len(rep.rounds), "step": rep.step, "plan_s": plan_s, "report": str(rep)}
    lp.apply(verify=True)
    log("    " + str(rep).replace("\n", "\n    "))

    ms = final_timer([dense, um, lm], x, args.threads)
    for key, m, t in zip(("dense",) + VARIANTS, (dense, um, lm), ms):
        params, macs = _footprint(m, args.size)
        rows[key].update(ms=float(t), measured_fraction=float(t) / float(ms[0]), params=params, macs=macs)
    rows["uniform"]["plan_measured_fraction"] = f
    rows["uniform"]["widths"], rows["latency"]["widths"] = _widths(um), _widths(lm)
    for key, m in (("uniform", um), ("latency", lm)):
        before, after, ft_s = _finetune(name, seed, args.size, m, args.finetune_epochs)
        rows[key].update(accuracy_pruned=before, accuracy=after, finetune_s=ft_s)
    log("  " + "; ".join(f"{k}: {r['measured_fraction']:.3f} of dense, importance {r['importance_kept']:.3f}, "
                         f"{100 * r['accuracy_pruned']:.1f}% -> {100 * r['accuracy']:.2f}%"
                         for k, r in rows.items() if k != "dense") + f" ({time.perf_counter() - t0:.0f} s)")
    return [{"model": name, "seed": seed, "variant": k, **r} for k, r in rows.items()]


def _source() -> str:
    """Which surgeon ran: the repository's commit, and whether its ``surgeon/`` had uncommitted
    changes (or where surgeon was imported from, when not from this repository)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "surgeon")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    here = Path(surgeon.__file__).resolve().parent
    if here != ROOT / "surgeon":
        return f"surgeon from {here} (repository at {commit or 'unknown'})"
    return (commit or "unknown") + (" with uncommitted changes in surgeon/" if dirty else "")


# ------------------------------------------------------------------------------------ reporting
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


NUMERIC = ("ms", "measured_fraction", "predicted_fraction", "importance_kept", "removed", "params", "macs",
           "accuracy_pruned", "accuracy")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (model, variant), and the paired latency - uniform differences."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        for variant in ("dense",) + VARIANTS:
            rs = [r for r in mine if r["variant"] == variant]
            s: dict[str, Any] = {"model": model, "variant": variant, "seeds": len(rs)}
            for k in NUMERIC:
                vals = [float(r[k]) for r in rs if r.get(k) is not None]
                if len(vals) == len(rs) and vals:
                    s[k], s[k + "_std"] = _mean_std(vals)
            out.append(s)
        by = {(r["seed"], r["variant"]): r for r in mine}
        seeds = sorted({r["seed"] for r in mine})
        paired: dict[str, Any] = {"model": model, "variant": "latency - uniform", "seeds": len(seeds)}
        for k in ("measured_fraction", "importance_kept", "accuracy_pruned", "accuracy"):
            diffs = [by[(s, "latency")][k] - by[(s, "uniform")][k] for s in seeds]
            paired[k], paired[k + "_std"] = _mean_std(diffs)
            paired[k + "_per_seed"] = diffs
            paired[k + "_latency_wins"] = sum(d > 0 for d in diffs)
            paired[k + "_ties"] = sum(d == 0 for d in diffs)
        out.append(paired)
    return out


def _pm(s: dict[str, Any], k: str, scale: float = 1.0, fmt: str = ".3f") -> str:
    if k not in s:
        return ""
    return f"{scale * s[k]:{fmt}} +- {scale * s[k + '_std']:{fmt}}"


def _count(n: float) -> str:
    return f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} K"


def to_markdown(summary: list[dict[str, Any]], rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Latency-aware vs uniform pruning at the same latency: digits ({meta['size']}x{meta['size']}, "
             f"latency at batch {meta['batch']})", "",
             f"ONNX Runtime {meta['onnxruntime']} CPU, {meta['threads']} threads, {meta['cpu']}; load average "
             f"{meta['load_before']} before, {meta['load_after']} after; torch {meta['torch']}, training on 1 thread. "
             f"Dense training D = {meta['dense_epochs']} epochs, fine-tune F = {meta['finetune_epochs']} epochs (same "
             f"recipe and data order for both plans); surgeon at {meta['surgeon']}; seeds {meta['seeds']}; mean +- std over seeds. Uniform: ratio "
             f"{meta['ratio']}, local scope, L1. Latency-aware: `target_latency` = the uniform plan's measured "
             f"fraction, L1, max_layer_ratio {meta.get('max_layer_ratio') or 'default (0.9)'}, value {meta.get('value', BEFORE_VALUE['value'])}. Latency: fraction of the dense model's ONNX Runtime latency, all three timed side by "
             f"side in one final run per seed. Importance kept: L1 scores normalised per group by their mean, "
             f"share kept. Accuracy in % (one test image = {100 / meta['test']:.2f} points).", "",
             "| model | plan | latency (fraction) | predicted | importance kept | channels removed | params | "
             "MACs | accuracy right after the prune (%) | accuracy after fine-tune (%) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        if s["variant"] == "latency - uniform":
            continue
        if s["variant"] == "dense":
            lines.append(f"| {s['model']} | dense ({s['ms']:.1f} ms) | 1 |  | 1 | 0 | {_count(s['params'])} | "
                         f"{_count(s['macs'])} |  | {_pm(s, 'accuracy', 100, '.2f')} |")
            continue
        lines.append(f"| {s['model']} | {s['variant']} | {_pm(s, 'measured_fraction')} | {_pm(s, 'predicted_fraction')} | "
                     f"{_pm(s, 'importance_kept')} | {s['removed']:.0f} | {_count(s['params'])} | {_count(s['macs'])} | "
                     f"{_pm(s, 'accuracy_pruned', 100, '.1f')} | {_pm(s, 'accuracy', 100, '.2f')} |")
    lines += ["", "Paired per seed, latency-aware minus uniform (wins = seeds where the latency-aware plan is higher):", "",
              "| model | latency fraction | importance kept | accuracy after the prune (points) | accuracy after fine-tune (points) |",
              "|---|---|---|---|---|"]
    for s in summary:
        if s["variant"] != "latency - uniform":
            continue

        def cell(k: str, scale: float, fmt: str) -> str:
            per = " / ".join(f"{scale * d:+{fmt}}" for d in s[k + "_per_seed"])
            return (f"{scale * s[k]:+{fmt}} ({per}; wins {s[k + '_latency_wins']}/{s['seeds']}"
                    + (f", ties {s[k + '_ties']}" if s[k + "_ties"] else "") + ")")
        lines.append(f"| {s['model']} | {cell('measured_fraction', 1, '.3f')} | {cell('importance_kept', 1, '.3f')} | "
                     f"{cell('accuracy_pruned', 100, '.1f')} | {cell('accuracy', 100, '.2f')} |")
    lines.append("")
    for model in dict.fromkeys(r["model"] for r in rows):
        first = next(r for r in rows if r["model"] == model and r["variant"] == "latency")
        lines += [f"- {model}, seed {first['seed']}'s latency plan:", "", "  ```",
                  *("  " + line for line in first["report"].splitlines()), "  ```"]
    if meta.get("merged"):
        lines += ["", f"Command: `{meta['command']}`: the seeds of {len(meta['merged'])} runs pooled "
                      f"({', '.join(meta['merged'])}; {meta['wall_s'] / 60:.1f} min in all, {meta['date']})"]
    else:
        lines += ["", f"Command: `{meta['command']}` ({meta['wall_s'] / 60:.1f} min, {meta['date']})"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tinynet, seed 0, 1 + 1 epochs at 16x16, batch 8, short "
                   "timings (seconds); writes nothing unless --out")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--ratio", type=float, default=0.5, help="the uniform plan's ratio (default 0.5)")
    p.add_argument("--size", type=int, default=32, help="image side, for training and timing (default 32)")
    p.add_argument("--batch", type=int, default=64, help="batch of the latency measurements (default 64)")
    p.add_argument("--dense-epochs", type=int, default=6, help="D (default 6)")
    p.add_argument("--finetune-epochs", type=int, default=3, help="F (default 3)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--runs", type=int, default=20, help="timing rounds per session (the final timing uses twice)")
    p.add_argument("--max-layer-ratio", type=float, default=None, help="the latency-aware plan's cap on what one "
                   "group may lose (default: the planner's, 0.9)")
    p.add_argument("--value", default=LatencySettings.value, choices=VALUES,
                   help=f"the latency-aware plan's LatencySettings.value (default {LatencySettings.value})")
    p.add_argument("--out", help="output directory (default benchmarks/results; none for --quick)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="train nothing: pool the seeds of earlier runs' "
                   "latency_accuracy.json (same recipe, distinct seeds) into one report")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.seeds, args.size, args.batch = "tinynet", "0", 16, 8
        args.dense_epochs, args.finetune_epochs = 1, 1
    elif args.out is None and not args.merge:
        args.out = str(Path(__file__).parent / "results")
    return args


def run(args: argparse.Namespace, command: str, time_models: Optional[TimeModels] = None,
        measure_layers: Optional[Measure] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark; ``time_models`` / ``measure_layers`` replace every timing (tests)."""
    from surgeon.bench import machine_info
    if time_models is not None:
        timer = final_timer = time_models
    elif args.quick:
        timer = final_timer = partial(time_models_onnx, runs=3, min_seconds=0.1, sessions=1)
    else:
        timer, final_timer = partial(time_models_onnx, runs=args.runs), partial(time_models_onnx, runs=2 * args.runs)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    meta = {**machine_info(args.threads), "load_before": round(os.getloadavg()[0], 2), "command": command,
            "size": args.size, "batch": args.batch, "ratio": args.ratio, "dense_epochs": args.dense_epochs,
            "finetune_epochs": args.finetune_epochs, "max_layer_ratio": args.max_layer_ratio,
            "value": args.value,
            "date": time.strftime("%Y-%m-%d"),
            "fake_timings": time_models is not None, "surgeon": _source()}
    rows: list[dict[str, Any]] = []
    seeds = [int(s) for s in str(args.seeds).split(",")]
    try:
        torch.set_num_threads(1)
        with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="latency-accuracy-lut-") as cache:
            warnings.simplefilter("ignore")
            for name in [m for m in args.models.split(",") if m]:
                log(f"[{name}]")
                for seed in seeds:
                    rows += run_seed(name, seed, args, timer, final_timer, measure_layers, Path(cache), log)
    finally:
        torch.set_num_threads(threads)
    _, test = digits(size=args.size)
    meta.update(seeds=seeds, test=len(test), load_after=round(os.getloadavg()[0], 2),
                wall_s=round(time.perf_counter() - t0, 1))
    summary = summarise(rows)
    return {"meta": meta, "rows": rows, "summary": summary, "markdown": to_markdown(summary, rows, meta)}


RECIPE = ("size", "batch", "ratio", "dense_epochs", "finetune_epochs", "max_layer_ratio", "value", "threads", "test")
BEFORE_VALUE = {"value": "linear"}  # runs from before LatencySettings.value existed counted linearly


def merge(paths: Sequence[str], command: str) -> dict[str, Any]:
    """One report over the seeds of several runs (``--merge a.json b.json``): their rows pooled and
    summarised again. Refused when the runs differ in recipe (``RECIPE``) or share a (model, seed)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    for r in runs:
        r["meta"] = {**BEFORE_VALUE, **r["meta"]}
    first = runs[0]["meta"]
    for path, r in zip(paths[1:], runs[1:]):
        differ = [k for k in RECIPE if r["meta"].get(k) != first.get(k)]
        if differ:
            raise ValueError(f"cannot merge {path} with {paths[0]}: they differ in "
                             + ", ".join(f"{k} ({r['meta'].get(k)!r} vs {first.get(k)!r})" for k in differ))
    rows = [row for r in runs for row in r["rows"]]
    seen: set[tuple[str, int]] = set()
    for row in rows:
        if row["variant"] == "dense":
            if (row["model"], row["seed"]) in seen:
                raise ValueError(f"cannot merge: {row['model']} seed {row['seed']} is in more than one run")
            seen.add((row["model"], row["seed"]))
    meta = {**first, "command": command, "seeds": sorted({row["seed"] for row in rows}),
            "surgeon": " + ".join(dict.fromkeys(r["meta"]["surgeon"] for r in runs)),
            "load_before": " / ".join(str(r["meta"]["load_before"]) for r in runs),
            "load_after": " / ".join(str(r["meta"]["load_after"]) for r in runs),
            "date": " / ".join(dict.fromkeys(r["meta"]["date"] for r in runs)),
            "wall_s": sum(r["meta"]["wall_s"] for r in runs), "merged": list(paths)}
    summary = summarise(rows)
    return {"meta": meta, "rows": rows, "summary": summary, "markdown": to_markdown(summary, rows, meta)}


def main(argv: list[str] | None = None, time_models: Optional[TimeModels] = None,
         measure_layers: Optional[Measure] = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = "python benchmarks/latency_accuracy.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    if args.merge:
        try:
            result = merge(args.merge, command)
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"latency_accuracy.py --merge: {e}")
    else:
        result = run(args, command, time_models, measure_layers)
    print(result["markdown"])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency_accuracy.json").write_text(json.dumps(
            {k: result[k] for k in ("meta", "rows", "summary")}, indent=1) + "\n")
        (out / "latency_accuracy.md").write_text(result["markdown"])
        print(f"wrote {out / 'latency_accuracy.json'} and latency_accuracy.md")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
