"""Accuracy benchmark: what each prune -> recover workflow keeps, on real data (digits).

    python benchmarks/accuracy.py             # the full run (under 30 min on 2 cores)
    python benchmarks/accuracy.py --quick     # one tiny configuration, seconds; writes nothing unless --out

scikit-learn's handwritten digits (1,797 images, 8x8 upsampled to 16x16 by default, 1,437 train /
360 test with a fixed split) train a ResNet-20 and a short MobileNetV2 (``mobilenet_v2_32``) from
our zoo. Every workflow gets a stated epoch budget counted from random initialisation:

- after training (dense ``D`` epochs, shared, then ``F`` recovery epochs): one-shot without any
  recovery, with BatchNorm recalibration only, with least-squares reconstruction (no labels, no
  gradient), with fine-tuning; iterative (cubic schedule, 3 steps, the F epochs split over them);
  soft filter pruning (F epochs of soft pruning from the trained model, then physical removal);
  network slimming (D epochs of sparsity training instead of plain training, global |gamma|
  prune, F epochs of fine-tuning);
- before training (D + F epochs on the pruned architecture): random structured pruning at
  initialisation; the lottery ticket (the shared dense run is its search; the survivors are rewound
  to their initial values and retrained D + F epochs: it alone spends D more); its control, the same
  architecture re-initialised at random and trained as long.

Each at 50%, 75% and 90% of channels removed, local and global scope for the methods in
``SCOPED``, over 3 seeds (seed = weight init and data order; the split stays fixed). Reports
parameters, MACs and test accuracy mean +- std. Writes ``accuracy.json``, ``accuracy.md`` and
``accuracy.png`` (accuracy vs MACs kept) under ``--out`` (default ``benchmarks/results``). Work
runs in ``--jobs`` processes of one thread each (small models use one core better than two).
The defaults (16x16, D = 8, F = 4) are what fits 30 minutes on 2 cores: at 32x32 an epoch costs
about 3x as much (measured: ResNet-20 11.7 s vs 3.6 s per dense epoch on one thread).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

import surgeon
import surgeon_models as zoo
from surgeon.train import (Trainer, digits, loaders, lottery_ticket, random_at_init, reinit_control, seed_everything,
                           sgd, soft_filter_pruning, workflows)

MODELS = ("resnet20", "mobilenet_v2_32")
RATIOS = (0.5, 0.75, 0.9)
SEEDS = (0, 1, 2)
SCOPES = ("local", "global")
# (learning rate, weight decay) per model: ResNet-20 reaches 99.7% in 15 epochs with the first,
# MobileNetV2 98% with the second (its depthwise layers want little decay)
RECIPES = {"resnet20": (0.05, 5e-4), "mobilenet_v2_32": (0.05, 4e-5), "tinynet": (0.05, 5e-4)}
SLIMMING_LAMBDA = 1e-4
ITERATIVE_STEPS = 3
RECONSTRUCT_BATCHES = 4
INPUT = (1, 3, 32, 32)


@dataclass(frozen=True)
class Budget:
    dense: int      # D: epochs of the dense (or sparsity) training
    recover: int    # F: epochs of recovery after an after-training prune


@dataclass(frozen=True)
class Job:
    model: str
    seed: int
    method: str
    scope: str = "-"
    ratio: float = 0.0


AFTER = ("one-shot", "one-shot + BN recal", "one-shot + reconstruction", "one-shot + fine-tune", "iterative (cubic)", "soft filter pruning",
         "slimming")
BEFORE = ("random at init", "lottery ticket", "re-initialised control")
# Methods run at both scopes. Soft filter pruning cuts every layer at the same rate (as He et al.
# do); the before-training methods run local scope only, to fit the 30-minute budget.
SCOPED = {"one-shot", "one-shot + BN recal", "one-shot + reconstruction", "one-shot + fine-tune", "iterative (cubic)"}


def _trainer(name: str, seed: int, size: int, progress: bool = False) -> Trainer:
    lr, wd = RECIPES.get(name, (0.05, 5e-4))
    train, test = digits(size=size)
    a, b = loaders(train, test, batch_size=64, seed=seed)
    return Trainer(a, b, optimizer=sgd(lr=lr, weight_decay=wd), progress=progress, device="cpu")


def _footprint(model: torch.nn.Module, size: int) -> tuple[int, int]:
    c = surgeon.count(model, torch.randn(1, 3, size, size))
    return int(c.params), int(c.macs)


def _dense_stage(name: str, seed: int, budget: Budget, size: int, workdir: str) -> dict[str, Any]:
    """Train the dense model (and its sparsity-trained twin for slimming); save both and the init."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    trainer = _trainer(name, seed, size)
    seed_everything(seed)
    model = zoo.get(name, num_classes=10)
    torch.save(model.state_dict(), f"{workdir}/{name}-{seed}-init.pt")
    sparse = copy.deepcopy(model)
    t0 = time.perf_counter()
    trainer.fit(model, budget.dense, desc=f"{name} dense")
    seed_everything(seed)  # the same data order for the sparsity run
    trainer_s = _trainer(name, seed, size)
    trainer_s.fit(sparse, budget.dense, desc=f"{name} sparse",
                  after_backward=lambda m: surgeon.bn_l1_subgradient_(m, SLIMMING_LAMBDA))
    torch.save(model.state_dict(), f"{workdir}/{name}-{seed}-dense.pt")
    torch.save(sparse.state_dict(), f"{workdir}/{name}-{seed}-sparse.pt")
    params, macs = _footprint(model, size)
    return {"model": name, "seed": seed, "method": "dense", "scope": "-", "ratio": 0.0,
            "accuracy": trainer.evaluate(model), "params": params, "macs": macs, "epochs": budget.dense,
            "seconds": time.perf_counter() - t0}


def _load(name: str, seed: int, which: str, workdir: str) -> torch.nn.Module:
    model = zoo.get(name, num_classes=10)
    model.load_state_dict(torch.load(f"{workdir}/{name}-{seed}-{which}.pt", weights_only=True))
    return model


def _run_job(job: Job, budget: Budget, size: int, workdir: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    seed_everything(job.seed)
    trainer = _trainer(job.model, job.seed, size)
    x = torch.randn(1, 3, size, size)
    kw: dict[str, Any] = {"scope": job.scope} if job.scope != "-" else {}
    D, F = budget.dense, budget.recover
    t0 = time.perf_counter()
    if job.method == "one-shot":
        out = workflows.one_shot(_load(job.model, job.seed, "dense", workdir), x, trainer, job.ratio, **kw)
    elif job.method == "one-shot + BN recal":
        out = workflows.one_shot(_load(job.model, job.seed, "dense", workdir), x, trainer, job.ratio,
                                 recalibrate=len(trainer.train), **kw)
    elif job.method == "one-shot + reconstruction":
        out = workflows.one_shot(_load(job.model, job.seed, "dense", workdir), x, trainer, job.ratio,
                                 reconstruct=RECONSTRUCT_BATCHES, **kw)
    elif job.method == "one-shot + fine-tune":
        out = workflows.one_shot(_load(job.model, job.seed, "dense", workdir), x, trainer, job.ratio, epochs=F, **kw)
    elif job.method == "iterative (cubic)":
        out = workflows.iterative(_load(job.model, job.seed, "dense", workdir), x, trainer, job.ratio,
                                  steps=min(ITERATIVE_STEPS, F), epochs=F, schedule="cubic", **kw)
    elif job.method == "soft filter pruning":
        out = soft_filter_pruning(_load(job.model, job.seed, "dense", workdir), x, trainer, job.ratio, epochs=F, **kw)
    elif job.method == "slimming":
        out = workflows.slimming(_load(job.model, job.seed, "sparse", workdir), x, trainer, job.ratio,
                                 sparsity_epochs=0, epochs=F)
    elif job.method == "random at init":
        out = random_at_init(zoo.get(job.model, num_classes=10), x, trainer, job.ratio, epochs=D + F, seed=job.seed)
    elif job.method in ("lottery ticket", "re-initialised control"):
        init = torch.load(f"{workdir}/{job.model}-{job.seed}-init.pt", weights_only=True)
        ticket = _load(job.model, job.seed, "dense", workdir)  # the search run: the shared dense training
        retrain = D + F if job.method == "lottery ticket" else 0
        out = lottery_ticket(ticket, x, trainer, job.ratio, epochs=0, retrain_epochs=retrain, rewind=init, **kw)
        if job.method == "re-initialised control":
            out = reinit_control(out.model, trainer, epochs=D + F, seed=job.seed + 1000, example_inputs=x)
    else:
        raise ValueError(f"unknown method {job.method!r}")
    params, macs = _footprint(out.model, size)
    row = {**asdict(job), "params": params, "macs": macs, "accuracy": out.accuracy,
           "epochs": {"lottery ticket": D + D + F, "random at init": D + F, "re-initialised control": D + F}.get(
               job.method, D + (F if "one-shot" not in job.method or "fine" in job.method else 0)),
           "seconds": time.perf_counter() - t0}
    if out.steps and job.method != "re-initialised control":
        row["accuracy_pruned"] = out.steps[0].accuracy_pruned
    return row


def jobs_for(models: tuple[str, ...], seeds: tuple[int, ...], ratios: tuple[float, ...],
             scopes: tuple[str, ...], methods: tuple[str, ...]) -> list[Job]:
    jobs = []
    for name in models:
        for seed in seeds:
            for method in methods:
                for ratio in ratios:
                    if method in SCOPED:
                        jobs += [Job(name, seed, method, scope, ratio) for scope in scopes]
                    else:
                        jobs.append(Job(name, seed, method, "global" if method == "slimming" else "local", ratio))
    return jobs


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds of every (model, method, scope, ratio)."""
    keys: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        keys.setdefault((r["model"], r["method"], r["scope"], r["ratio"]), []).append(r)
    dense = {(r["model"], r["seed"]): r for r in rows if r["method"] == "dense"}
    out = []
    for (model, method, scope, ratio), rs in keys.items():
        acc = [100 * r["accuracy"] for r in rs]
        d = [dense[(model, r["seed"])] for r in rs if (model, r["seed"]) in dense]
        out.append({"model": model, "method": method, "scope": scope, "ratio": ratio, "seeds": len(rs),
                    "accuracy_mean": statistics.fmean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "params": statistics.fmean(r["params"] for r in rs), "macs": statistics.fmean(r["macs"] for r in rs),
                    "macs_kept": statistics.fmean(r["macs"] / x["macs"] for r, x in zip(rs, d)) if d else float("nan"),
                    "params_kept": statistics.fmean(r["params"] / x["params"] for r, x in zip(rs, d)) if d else float("nan"),
                    "epochs": rs[0]["epochs"],
                    "accuracy_pruned_mean": statistics.fmean(100 * r["accuracy_pruned"] for r in rs)
                    if all(r.get("accuracy_pruned") is not None for r in rs) else None})
    order = {m: i for i, m in enumerate(("dense",) + AFTER + BEFORE)}
    return sorted(out, key=lambda s: (s["model"], s["ratio"], order.get(s["method"], 99), s["scope"]))


def to_markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    b = meta["budget"]
    lines = [f"# Accuracy after pruning: digits ({meta['train']} train / {meta['test']} test, {meta['size']}x{meta['size']})",
             "",
             f"Budget: dense training D = {b['dense']} epochs; recovery F = {b['recover']} epochs; before-training "
             f"methods train D + F = {b['dense'] + b['recover']} epochs (the lottery ticket also spends its D-epoch "
             f"dense search). Seeds {meta['seeds']}; accuracy in % (mean +- std over seeds; one test image = "
             f"{100 / meta['test']:.2f} points). Measured {meta['date']} on {meta['machine']}, "
             f"{meta['minutes']:.1f} min for the full run."
             + (f" Re-measured in a later run ({meta['remeasured']['minutes']:.1f} min): "
                f"{', '.join(meta['remeasured']['methods'])}." if meta.get("remeasured") else ""), ""]
    for model in dict.fromkeys(s["model"] for s in summary):
        lines += [f"## {model}", "", "| removed | method | scope | params kept | MACs kept | accuracy (%) | right after the prune (%) | epochs |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in summary:
            if s["model"] != model:
                continue
            right = f"{s['accuracy_pruned_mean']:.1f}" if s["accuracy_pruned_mean"] is not None else ""
            lines.append(f"| {s['ratio']:.0%} | {s['method']} | {s['scope']} | {s['params_kept']:.3f} | "
                         f"{s['macs_kept']:.3f} | {s['accuracy_mean']:.2f} +- {s['accuracy_std']:.2f} | {right} | {s['epochs']} |")
        lines.append("")
    return "\n".join(lines)


def headline(summary: list[dict[str, Any]], scope: str = "local") -> str:
    """One compact table for the README: accuracy (mean +- std) per method and ratio, per model, at
    ``scope`` (slimming is global by definition); the MACs kept under each ratio."""
    models = list(dict.fromkeys(s["model"] for s in summary))
    ratios = sorted({s["ratio"] for s in summary if s["ratio"] > 0})
    by = {(s["model"], s["method"], s["scope"], s["ratio"]): s for s in summary}
    head = "| method | " + " | ".join(f"{m} {r:.0%}" for m in models for r in ratios) + " |"
    lines = [head, "|---" * (1 + len(models) * len(ratios)) + "|"]
    dense = [by.get((m, "dense", "-", 0.0)) for m in models]
    lines.append("| dense | " + " | ".join(f"{d['accuracy_mean']:.2f}" if d else "" for d in dense
                                            for _ in ratios) + " |")
    for method in AFTER + BEFORE:
        sc = "global" if method == "slimming" else scope
        cells = []
        for m in models:
            for r in ratios:
                s = by.get((m, method, sc, r))
                cells.append(f"{s['accuracy_mean']:.1f} +- {s['accuracy_std']:.1f}" if s else "")
        if any(cells):
            lines.append(f"| {method}{' (global)' if sc == 'global' and scope != 'global' else ''} | " + " | ".join(cells) + " |")
    macs = []
    for m in models:
        for r in ratios:
            s = by.get((m, "one-shot + fine-tune", scope, r))
            macs.append(f"{s['macs_kept']:.3f}" if s else "")
    lines.append("| *MACs kept* | " + " | ".join(macs) + " |")
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """Accuracy vs MACs kept, one panel per model: a colour per method, solid = local scope,
    dashed = global, the dense accuracy as a grey line; the legend sits below the panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.NullFormatter below)
    models = list(dict.fromkeys(s["model"] for s in summary))
    methods = [m for m in AFTER + BEFORE if any(s["method"] == m for s in summary)]
    colours = dict(zip(methods, plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]))
    markers = dict(zip(methods, "osD^vP*Xhp<>" * 2))
    fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 9.5), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.2]})
    for row, zoom in ((0, False), (1, True)):  # the bottom row zooms into the recovered models
        for ax, model in zip(axes[row], models):
            rows = [s for s in summary if s["model"] == model]
            for s in rows:
                if s["method"] == "dense":
                    ax.axhline(s["accuracy_mean"], color="0.5", lw=1, ls=":", label="dense")
            for method, scope in dict.fromkeys((s["method"], s["scope"]) for s in rows if s["method"] != "dense"):
                pts = sorted((s["macs_kept"], s["accuracy_mean"], s["accuracy_std"]) for s in rows
                             if s["method"] == method and s["scope"] == scope)
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, color=colours[method], marker=markers[method], ms=5, capsize=2,
                            ls="--" if scope == "global" else "-", label=f"{method} ({scope})")
            ax.set_xscale("log")
            ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
                     if min(s["macs_kept"] for s in rows) / 2 <= t <= 1.0]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("MACs kept (fraction of the dense model, log scale)")
            ax.set_ylabel("test accuracy (%, mean +- std over seeds)")
            ax.set_title(f"{model} on digits" + (": zoom on 85-100%" if zoom else ""))
            ax.set_ylim((85, 100.5) if zoom else (0, 101))
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.11, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tinynet, 1 seed, ratio 0.5, 1 + 1 epochs at 16x16 "
                   "(seconds); writes nothing unless --out")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    p.add_argument("--scopes", default=",".join(SCOPES))
    p.add_argument("--methods", default=",".join(AFTER + BEFORE))
    p.add_argument("--dense-epochs", type=int, default=8, help="D (default 8)")
    p.add_argument("--recover-epochs", type=int, default=4, help="F (default 4)")
    p.add_argument("--size", type=int, default=16, help="image side after upsampling the 8x8 digits (default 16; "
                   "32 costs 3x the time)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)")
    p.add_argument("--out", help="output directory (default benchmarks/results; none for --quick)")
    p.add_argument("--merge", action="store_true", help="keep the rows of OUT/accuracy.json for the methods not "
                   "run now (re-measure some methods, e.g. after a fix; the dense rows are re-measured too)")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.seeds, args.ratios = "tinynet", "0", "0.5"
        args.dense_epochs, args.recover_epochs, args.size = 1, 1, 16
    elif args.out is None:
        args.out = str(Path(__file__).parent / "results")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    ratios = tuple(float(r) for r in args.ratios.split(","))
    scopes = tuple(args.scopes.split(","))
    methods = tuple(args.methods.split(","))
    unknown = set(methods) - set(AFTER + BEFORE)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {AFTER + BEFORE}")
    budget = Budget(args.dense_epochs, args.recover_epochs)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
            futs = [pool.submit(_dense_stage, m, s, budget, args.size, workdir) for m in models for s in seeds]
            for f in as_completed(futs):
                rows.append(f.result())
                print(f"dense {rows[-1]['model']} seed {rows[-1]['seed']}: {100 * rows[-1]['accuracy']:.2f}%", flush=True)
            jobs = jobs_for(models, seeds, ratios, scopes, methods)
            futs = {pool.submit(_run_job, j, budget, args.size, workdir): j for j in jobs}
            for i, f in enumerate(as_completed(futs), 1):
                r = f.result()
                rows.append(r)
                print(f"[{i}/{len(jobs)}] {r['model']} seed {r['seed']} {r['method']} {r['scope']} {r['ratio']:.0%}: "
                      f"{100 * r['accuracy']:.2f}% ({r['seconds']:.0f} s)", flush=True)
    minutes = (time.perf_counter() - t0) / 60
    merged_from = None
    if args.merge and args.out and (Path(args.out) / "accuracy.json").exists():
        old = json.loads((Path(args.out) / "accuracy.json").read_text())
        if old["meta"]["budget"] != asdict(budget) or old["meta"]["size"] != args.size:
            raise SystemExit("--merge: the stored run has another budget or size; re-run everything")
        rows += [r for r in old["rows"] if r["method"] not in set(methods) | {"dense"}]
        merged_from = {"date": old["meta"]["date"], "minutes": old["meta"]["minutes"]}
        minutes = old["meta"]["minutes"]
    summary = summarise(rows)
    train, test = digits(size=args.size)
    meta = {"budget": asdict(budget), "seeds": list(seeds), "size": args.size, "train": len(train), "test": len(test),
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, {args.jobs} single-thread workers",
            "minutes": minutes, "torch": torch.__version__,
            "remeasured": {"methods": list(methods), "minutes": (time.perf_counter() - t0) / 60} if merged_from else None}
    md = to_markdown(summary, meta)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "accuracy.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=1))
        (out / "accuracy.md").write_text(md + "\n")
        plot(summary, out / "accuracy.png")
        print(f"wrote {out / 'accuracy.json'}, accuracy.md, accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
