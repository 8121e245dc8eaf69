"""The demo: ``python -m surgeon.demo`` (no arguments needed).

Prunes a zoo model (ResNet-50 at 224x224 by default) at 50% local L1, checks surgical equivalence,
exports dense / structurally pruned / element-masked models to ONNX and times them side by side in
onnxruntime, then prints params, MACs and latency as a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path

import torch

__all__ = ["main"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m surgeon.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="zoo model name (default: resnet50)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group")
    p.add_argument("--runs", type=int, default=20, help="timed onnxruntime runs per model (median)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and onnxruntime")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import surgeon
    import surgeon_models as zoo
    from surgeon.bench import effective_macs, mask_to_match
    from surgeon.count import format_count
    from surgeon.timing import side_by_side
    from tqdm import tqdm

    try:
        shape = zoo.input_shape(args.model)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    x = torch.randn(*shape)
    steps = tqdm(total=6, desc="demo", unit="step")

    steps.set_postfix_str("build + trace")
    dense = zoo.randomize_bn(zoo.get(args.model)).eval()
    pruned = copy.deepcopy(dense)
    masked = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", surgeon.FrozenGroupWarning)
        graph = surgeon.trace(dense, x)
    steps.update()

    steps.set_postfix_str("plan + apply")
    t0 = time.perf_counter()
    plan = surgeon.plan(pruned, x, ratio=args.ratio)
    plan.apply()
    prune_s = time.perf_counter() - t0
    steps.update()

    steps.set_postfix_str("surgical equivalence")
    reference = surgeon.zeroed_reference(dense, plan.removed())
    diff = surgeon.assert_equivalent(reference, pruned, x)
    del reference
    steps.update()

    steps.set_postfix_str("masking baseline")
    removed_params = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in pruned.parameters())
    sparsity = mask_to_match(masked, removed_params)
    steps.update()

    out = Path(tempfile.mkdtemp(prefix="surgeon-demo-"))
    models = {"dense": dense, "masked (element)": masked, "surgeon (structured)": pruned}
    measured = side_by_side(models, x, {n: out / f"{n.split()[0]}.onnx" for n in models}, backends=("ort",),
                            runs=args.runs, threads=args.threads, progress=steps.set_postfix_str)
    timings = measured.latency[f"ort/b{shape[0]}"]
    steps.update(2)  # ONNX export + parity, onnxruntime latency
    steps.close()

    base = timings["dense"].median_ms
    d_macs, _ = effective_macs(dense, x)
    rows = []
    for name, m in models.items():
        macs, eff = effective_macs(m, x)
        params = sum(int((p != 0).sum()) for p in m.parameters())
        t = timings[name].median_ms
        rows.append(f"| {name} | {format_count(params)} | {format_count(macs)} | {format_count(eff)} | "
                     f"{t:.1f} | {base / t:.2f}x | {d_macs / eff:.2f}x |")
    print(f"\n{args.model} {tuple(shape)}: {len(graph.groups)} coupled groups, "
          f"{len(graph.prunable_groups())} prunable; plan + apply took {prune_s:.2f} s")
    print(f"surgical equivalence: max |pruned - zeroed reference| = {diff:.2e}; ONNX files in {out}")
    print(f"masking baseline: element masks at {sparsity:.1%} sparsity (the same parameters removed)\n")
    print("| model | non-zero params | MACs executed | MACs on non-zero weights | ORT latency (ms, "
          f"batch {shape[0]}, {args.threads} threads, median of {args.runs}) | measured speedup | "
          "theoretical speedup |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
