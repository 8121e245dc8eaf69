"""Latency benchmark: dense vs ``torch.nn.utils.prune`` masking vs surgeon vs Torch-Pruning.

    python benchmarks/latency.py                 # the full run (tens of minutes on 2 cores)
    python benchmarks/latency.py --quick --out /tmp/quick   # tinynet, 3 runs: under 30 s
    python benchmarks/latency.py --latency-targets 0.5,0.3  # latency targets (benchmarks/latency_targets.py)

For each model and ratio: parameters, MACs, ONNX file size, and the median latency in torch eager
and in ONNX Runtime (batch 1 and 8, 2 intra-op threads, warm-up first) of every variant, all
variants of a model timed side by side in one process (see ``surgeon.bench``); plus surgeon's and
Torch-Pruning's trace + prune time, interleaved. Writes ``results.json``, ``results.md``,
``latency_vs_macs.png`` and ``speedup_vs_theory.png`` under ``--out`` (and one JSON per model as it
finishes, so ``--resume`` can skip models already measured).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import surgeon_models as zoo
from surgeon.bench import METHODS, run_benchmark
from surgeon.bench_report import headline_markdown, load_json, merge, to_markdown, write_all
from surgeon.resolve import parse_ratios

FULL_MODELS = ("resnet18", "resnet50", "vgg16_bn", "mobilenet_v2")
QUICK_MODELS = ("tinynet",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tinynet, 3 runs, 1 warm-up, 1 prune repeat, no files "
                   "unless --out")
    p.add_argument("--models", help=f"comma-separated zoo names (default {','.join(FULL_MODELS)})")
    p.add_argument("--ratios", default="0,0.25,0.5,0.75")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--runs", type=int, default=20, help="timed runs per variant (default 20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="trace + prune repeats (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224, help="input H = W for the ImageNet models (default 224)")
    p.add_argument("--out", help="output directory (default benchmarks/results; none for --quick)")
    p.add_argument("--resume", action="store_true", help="reuse OUT/<model>.json of models already measured")
    p.add_argument("--latency-targets", metavar="F,F", help="run the latency-target section instead: for each "
                   "fraction, the latency-aware plan vs the uniform plan of the same measured latency (models "
                   "default resnet50,mobilenet_v2,resnet18; writes OUT/latency_targets.md and .json)")
    p.add_argument("--latency-runtime", default="onnxruntime", choices=("onnxruntime", "torch"),
                   help="with --latency-targets: where latency is measured and targeted (torch: eager, CPU; "
                   "files OUT/latency_targets_torch.*)")
    args = p.parse_args(argv)
    args.models_given = args.models
    if args.quick:
        args.models = args.models or ",".join(QUICK_MODELS)
        args.runs, args.warmup, args.repeats = min(args.runs, 3), min(args.warmup, 1), 1
    else:
        args.models = args.models or ",".join(FULL_MODELS)
        args.out = args.out or str(Path(__file__).parent / "results")
    return args


def input_shape(name: str, size: int) -> tuple[int, ...]:
    shape = zoo.input_shape(name)
    return (*shape[:2], size, size) if shape[-1] == 224 else shape


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.latency_targets:
        return latency_targets_main(args, argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        zoo.entry(m)  # unknown names fail before anything runs
    ratios = parse_ratios(args.ratios)
    batches = [int(b) for b in args.batches.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    out = Path(args.out) if args.out else None
    results = []
    t_start = time.perf_counter()
    for name in models:
        per_model = out / f"{name}.json" if out else None
        if args.resume and per_model is not None and per_model.is_file():
            print(f"[{name}] reusing {per_model}", file=sys.stderr)
            results.append(load_json(per_model))
            continue
        t0 = time.perf_counter()
        shape = input_shape(name, args.size)
        res = run_benchmark(name, lambda: zoo.get(name), shape, ratios=ratios, methods=methods, batches=batches,
                            runs=args.runs, warmup=args.warmup, threads=args.threads, prune_repeats=args.repeats,
                            progress=lambda msg: print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}",
                                                       file=sys.stderr, flush=True))
        res = merge([res])
        results.append(res)
        if per_model is not None:
            out.mkdir(parents=True, exist_ok=True)  # each model's JSON as soon as it is done
            per_model.write_text(json.dumps(res.to_json(), indent=1) + "\n")
        print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    result = merge(results)
    result.meta["command"] = "python benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result.meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(to_markdown(result))
    print(headline_markdown(result))
    if out is not None:
        paths = write_all(result, out)
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def latency_targets_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    import latency_targets
    models = [m.strip() for m in (args.models_given or ",".join(latency_targets.DEFAULT_MODELS)).split(",")]
    for m in models:
        zoo.entry(m)
    targets = [float(t) for t in args.latency_targets.split(",")]
    if any(not 0 < t <= 1 for t in targets):
        raise SystemExit(f"--latency-targets must be fractions in (0, 1], got {args.latency_targets}")
    command = "python benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = latency_targets.run(models, targets, args.threads, args.runs, Path(args.out) if args.out else None, command,
                             lambda msg: print(msg, file=sys.stderr, flush=True), args.latency_runtime)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
