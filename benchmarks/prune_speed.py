"""How long pruning takes: surgeon (trace + plan + apply) vs Torch-Pruning (build + step).

    python benchmarks/prune_speed.py            # zoo models + depth sweep (a few minutes on 2 cores)
    python benchmarks/prune_speed.py --quick    # tinynet + depths 4, 8: seconds, for the tests

Part 1, zoo models: both pruners start from copies of the same fresh model, L1, ratio 0.5, the
classifier ignored; the order alternates every repeat and the medians are compared (the timing of
``benchmarks/latency.py``, ``surgeon.bench.prune_with_surgeon`` / ``prune_with_torch_pruning``).

Part 2, depth sweep: a residual net whose blocks concatenate two branches (conv3x3 and conv1x1,
then a 1x1 conv back to the residual width, added to the input) at 25, 50, 100 and 200 blocks.
The log-log slope of time against depth says how the cost grows: 1 is linear.

Writes ``prune_speed.json`` and ``prune_speed.md`` under ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import surgeon_models as zoo
from surgeon.bench import machine_info, prune_with_surgeon, prune_with_torch_pruning

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vgg16_bn", "densenet121")
DEPTHS = (25, 50, 100, 200)


class ConcatBlock(nn.Module):
    """x + conv1x1(cat([conv3x3(x), conv1x1(x)])): a residual add and a concatenation per block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        half = width // 2
        self.a = nn.Sequential(nn.Conv2d(width, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.merge = nn.Sequential(nn.Conv2d(2 * half, width, 1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.merge(torch.cat([self.a(x), self.b(x)], 1)))


class ConcatResNet(nn.Module):
    """A stem, ``depth`` ConcatBlocks of ``width`` channels, global pooling and a classifier."""

    def __init__(self, depth: int, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[ConcatBlock(width) for _ in range(depth)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def timed(dense: nn.Module, x: torch.Tensor, repeats: int, methods: tuple[str, ...]) -> dict[str, float]:
    """Median seconds per method, pruning fresh copies of ``dense``; the order alternates."""
    times: dict[str, list[float]] = {m: [] for m in methods}
    run: dict[str, Callable[[nn.Module], float]] = {
        "surgeon": lambda m: prune_with_surgeon(m, x, 0.5),
        "torch-pruning": lambda m: prune_with_torch_pruning(m, x, 0.5),
    }
    for rep in range(repeats):
        for method in (methods if rep % 2 == 0 else methods[::-1]):
            times[method].append(run[method](copy.deepcopy(dense)))
    return {m: statistics.median(v) for m, v in times.items()}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def to_markdown(res: dict[str, Any]) -> str:
    lines = [f"# Pruning time: surgeon vs Torch-Pruning ({res['machine']['threads']} threads, "
             f"load average {res['loadavg'][0]:.1f} at start, {res['loadavg'][1]:.1f} at the end)", "",
             "Trace + plan + apply (surgeon) vs build + step (Torch-Pruning), L1, ratio 0.5, medians of "
             f"{res['repeats']} alternating runs from the same fresh model.", "",
             "| model | surgeon (s) | Torch-Pruning (s) | surgeon / TP |", "|---|---:|---:|---:|"]
    for r in res["models"]:
        tp = r.get("torch-pruning")
        ratio = f"{r['surgeon'] / tp:.2f}" if tp else "n/a"
        lines.append(f"| {r['model']} | {r['surgeon']:.3f} | {tp:.3f} | {ratio} |" if tp else
                     f"| {r['model']} | {r['surgeon']:.3f} | n/a | n/a |")
    lines += ["", f"Depth sweep (ConcatResNet, width {res['width']}, input {res['input']}):", "",
              "| blocks | surgeon (s) | Torch-Pruning (s) |", "|---:|---:|---:|"]
    for r in res["depths"]:
        tp = r.get("torch-pruning")
        lines.append(f"| {r['depth']} | {r['surgeon']:.3f} | {tp:.3f} |" if tp is not None else
                     f"| {r['depth']} | {r['surgeon']:.3f} | skipped |")
    if res["slope"]:  # needs at least two depths
        lines += ["", "log-log slope of time vs depth: " + ", ".join(
            f"{'surgeon' if m == 'surgeon' else 'Torch-Pruning'} {v:.2f}" for m, v in res["slope"].items()), ""]
    else:
        lines += ["", "log-log slope of time vs depth: needs at least two depths", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tinynet and depths 4, 8, one repeat; no files unless --out")
    p.add_argument("--models", help=f"comma-separated zoo names (default {','.join(MODELS)})")
    p.add_argument("--depths", help=f"comma-separated block counts (default {','.join(map(str, DEPTHS))})")
    p.add_argument("--repeats", type=int, default=5, help="runs per pruner and model (median; default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tp-max-depth", type=int, default=200, help="skip Torch-Pruning above this depth")
    p.add_argument("--skip-tp", action="store_true", help="time surgeon only")
    p.add_argument("--out", help="output directory (default benchmarks/results; none for --quick)")
    args = p.parse_args(argv)
    models = (args.models or ("tinynet" if args.quick else ",".join(MODELS))).split(",")
    depths = [int(d) for d in (args.depths or ("4,8" if args.quick else ",".join(map(str, DEPTHS)))).split(",")]
    repeats = 1 if args.quick else args.repeats
    out = Path(args.out) if args.out else (None if args.quick else Path(__file__).parent / "results")
    torch.set_num_threads(args.threads)
    methods: tuple[str, ...] = ("surgeon",) if args.skip_tp else ("surgeon", "torch-pruning")
    import warnings
    warnings.simplefilter("ignore")
    tiny = zoo.get("tinynet").eval()
    timed(tiny, torch.randn(1, 3, 16, 16), 1, methods)  # one-off costs (imports, caches) paid here
    res: dict[str, Any] = {"machine": machine_info(args.threads), "loadavg": [os.getloadavg()[0]], "repeats": repeats, "models": [], "depths": [],
                           "width": 32, "input": [1, 3, 32, 32]}
    for name in models:
        t = timed(zoo.get(name).eval(), torch.randn(*zoo.input_shape(name)), repeats, methods)
        res["models"].append({"model": name, **t})
        print(f"{name:14s} " + "  ".join(f"{k} {v:.3f}s" for k, v in t.items())
              + (f"  ratio {t['surgeon'] / t['torch-pruning']:.2f}" if "torch-pruning" in t else ""), file=sys.stderr)
    x = torch.randn(1, 3, 32, 32)
    for depth in depths:
        use = tuple(m for m in methods if m == "surgeon" or depth <= args.tp_max_depth)
        t = timed(ConcatResNet(depth).eval(), x, repeats, use)
        res["depths"].append({"depth": depth, **t})
        print(f"depth {depth:4d}  " + "  ".join(f"{k} {v:.3f}s" for k, v in t.items()), file=sys.stderr)
    res["slope"] = {m: slope([r["depth"] for r in res["depths"] if m in r], [r[m] for r in res["depths"] if m in r])
                    for m in methods if sum(m in r for r in res["depths"]) >= 2}
    res["loadavg"].append(os.getloadavg()[0])
    print(to_markdown(res))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "prune_speed.json").write_text(json.dumps(res, indent=1))
        (out / "prune_speed.md").write_text(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
