"""Benchmark results -> JSON, markdown tables and PNG plots (matplotlib, imported only here)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .bench import METHODS, BenchResult, Row, Timing

__all__ = ["merge", "load_json", "to_markdown", "headline_markdown", "plot", "write_all"]

_COLOURS = {"dense": "#444444", "mask": "#d62728", "surgeon": "#1f77b4", "torch-pruning": "#ff7f0e"}
_MARKERS = "osD^vP*Xh<>"


def merge(results: Sequence[BenchResult]) -> BenchResult:
    """One result holding every model's rows; per-model metadata kept under ``meta["models"]``."""
    if not results:
        raise ValueError("nothing to merge: no benchmark results")
    shared = {k: v for k, v in results[0].meta.items()
              if k in ("cpu", "threads", "python", "torch", "onnxruntime", "torch_pruning", "runs", "warmup",
                       "prune_repeats", "batches", "ratios")}
    shared["models"] = {}
    for r in results:
        if "models" in r.meta:  # an already merged result
            shared["models"].update(r.meta["models"])
        else:
            shared["models"][r.meta.get("model", r.models()[0] if r.rows else "?")] = {
                k: r.meta.get(k) for k in ("input_shape", "loadavg_start", "loadavg_end")}
    return BenchResult([row for r in results for row in r.rows], shared)


def load_json(path: str | Path) -> BenchResult:
    blob = json.loads(Path(path).read_text())
    rows = []
    for d in blob["rows"]:
        d = dict(d)
        d["latency"] = {k: Timing(**v) for k, v in d["latency"].items()}
        rows.append(Row(**d))
    return BenchResult(rows, blob["meta"])


def _mega(n: float) -> str:
    from .count import format_count

    return format_count(n)


def _keys(result: BenchResult) -> list[str]:
    keys: dict[str, None] = {}
    for r in result.rows:
        for k in r.latency:
            keys.setdefault(k, None)
    return sorted(keys, key=lambda k: (k.split("/")[0] != "torch", int(k.split("/b")[1])))


def _sorted_rows(result: BenchResult, model: str) -> list[Row]:
    rows = [r for r in result.rows if r.model == model]
    return sorted(rows, key=lambda r: (r.ratio, METHODS.index(r.method)))


def to_markdown(result: BenchResult) -> str:
    """Per model, one table: sizes, latency (median ms and speedup over dense), prune time."""
    keys = _keys(result)
    head = (["ratio", "method", "params", "MACs", "ONNX MB"] + [f"{k} ms (speedup)" for k in keys]
            + ["MACs speedup", "trace+prune s"])
    out = []
    for model in result.models():
        info = result.meta.get("models", {}).get(model, {}) or result.meta
        shape, l0, l1 = info.get("input_shape"), info.get("loadavg_start"), info.get("loadavg_end")
        notes = ([f"input {'x'.join(map(str, shape))}"] if shape else []) + (
            [f"load average {l0:.1f} at start, {l1:.1f} at end"] if l0 is not None and l1 is not None else [])
        out.append(f"**{model}**" + (f" ({'; '.join(notes)})" if notes else ""))
        out.append("")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in _sorted_rows(result, model):
            params = _mega(r.params) + (f" ({_mega(r.nonzero_params)} non-zero)" if r.method == "mask" else "")
            cells = [f"{r.ratio:g}", r.method, params, _mega(r.macs), f"{r.onnx_bytes / 1e6:.1f}"]
            for k in keys:
                t = r.latency.get(k)
                s = result.speedup(r, k)
                cells.append(f"{t.median_ms:.2f} ({s:.2f}x)" if t and s else "-")
            cells.append(f"{result.theoretical(r):.2f}x")
            cells.append(f"{r.prune_s:.2f}" if r.prune_s is not None else "-")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def headline(result: BenchResult) -> list[dict[str, Any]]:
    """Per model and ratio: surgeon's realised ORT speedup against the MAC count's promise, against
    Torch-Pruning's and against masking, and the trace + prune time ratio."""
    out = []
    ort_keys = [k for k in _keys(result) if k.startswith("ort/")]
    for model in result.models():
        for r in _sorted_rows(result, model):
            if r.method != "surgeon":
                continue
            tp = result.find(model, "torch-pruning", r.ratio)
            mk = result.find(model, "mask", r.ratio)
            item: dict[str, Any] = {"model": model, "ratio": r.ratio, "theoretical": result.theoretical(r)}
            for k in ort_keys:
                s = result.speedup(r, k)
                item[f"surgeon {k}"] = s
                item[f"efficiency {k}"] = s / item["theoretical"] if s else None
                item[f"torch-pruning {k}"] = result.speedup(tp, k) if tp else None
                item[f"mask {k}"] = result.speedup(mk, k) if mk else None
            item["surgeon prune s"] = r.prune_s
            item["torch-pruning prune s"] = tp.prune_s if tp else None
            out.append(item)
    return out


def headline_markdown(result: BenchResult) -> str:
    items = headline(result)
    if not items:
        return ""
    ort_keys = [k for k in _keys(result) if k.startswith("ort/")]
    head = ["model", "ratio", "MACs speedup"]
    for k in ort_keys:
        head += [f"surgeon {k}", f"realised/theory {k}", f"Torch-Pruning {k}", f"mask {k}"]
    head += ["trace+prune surgeon s", "Torch-Pruning s", "surgeon/TP time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: Any, fmt: str = "{:.2f}x") -> str:
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    for it in items:
        cells = [it["model"], f"{it['ratio']:g}", f(it["theoretical"])]
        for k in ort_keys:
            cells += [f(it[f"surgeon {k}"]), f(it[f"efficiency {k}"], "{:.2f}"),
                      f(it[f"torch-pruning {k}"]), f(it[f"mask {k}"])]
        sp, tp = it["surgeon prune s"], it["torch-pruning prune s"]
        cells += [f(sp, "{:.2f}"), f(tp, "{:.2f}"), f(sp / tp if sp is not None and tp else None, "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: BenchResult, out_dir: str | Path) -> list[Path]:
    """Two PNGs: latency against MACs kept (a line per method, a row per model) and realised
    speedup against the MAC count's promise (the diagonal is "as promised", dashed is 0.8 of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = _keys(result)
    models = result.models()
    if not keys:
        return []
    fig, axes = plt.subplots(len(models), len(keys), figsize=(3.4 * len(keys), 2.8 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        dense = result.dense(model)
        for j, key in enumerate(keys):
            ax = axes[i][j]
            for method in METHODS[1:]:
                rows = sorted([r for r in result.rows if r.model == model and r.method == method],
                              key=lambda r: -r.effective_macs)
                pts = [(1.0, dense.latency[key].median_ms)] if key in dense.latency else []
                pts += [(r.effective_macs / dense.macs, r.latency[key].median_ms) for r in rows if key in r.latency]
                if len(pts) > 1:  # Torch-Pruning dashed: it usually lies exactly on surgeon's line
                    ax.plot(*zip(*pts), marker="o", ms=4 if method == "torch-pruning" else 3, lw=1.2,
                            ls="--" if method == "torch-pruning" else "-", color=_COLOURS[method],
                            mfc="none" if method == "torch-pruning" else _COLOURS[method], label=method)
            if key in dense.latency:
                ax.plot([1.0], [dense.latency[key].median_ms], marker="*", ms=9, color=_COLOURS["dense"],
                        ls="none", label="dense")
            ax.set_xlim(0, 1.05)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.set_title(f"{model}  {key}", fontsize=9)
            if i == len(models) - 1:
                ax.set_xlabel("MACs kept (on non-zero weights)", fontsize=8)
            if j == 0:
                ax.set_ylabel("median latency, ms", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    p1 = out_dir / "latency_vs_macs.png"
    fig.savefig(p1, dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    top = max([result.theoretical(r) for r in result.rows] + [1.0]) * 1.1
    for j, key in enumerate(keys):
        ax = axes[0][j]
        ax.plot([1, top], [1, top], color="#999999", lw=1, label="as promised" if j == 0 else None)
        ax.plot([1, top], [0.8, 0.8 * top], color="#999999", lw=1, ls="--",
                label="0.8 x promised" if j == 0 else None)
        for mi, model in enumerate(models):
            for method in METHODS[1:]:
                rows = [r for r in result.rows if r.model == model and r.method == method]
                pts = [(result.theoretical(r), result.speedup(r, key)) for r in rows]
                pts = [p for p in pts if p[1] is not None]
                if pts:  # Torch-Pruning hollow: it often lands exactly on surgeon (same architecture)
                    hollow = method == "torch-pruning"
                    ax.scatter(*zip(*pts), s=34 if hollow else 16, marker=_MARKERS[mi % len(_MARKERS)],
                               facecolors="none" if hollow else _COLOURS[method], edgecolors=_COLOURS[method],
                               label=f"{method} {model}" if j == 0 else None)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_ylim(bottom=0.5)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("MACs speedup (theory)", fontsize=8)
        ax.set_ylabel("measured speedup", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.legend(loc="center right", fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    p2 = out_dir / "speedup_vs_theory.png"
    fig.savefig(p2, dpi=80)
    plt.close(fig)
    return [p1, p2]


def write_all(result: BenchResult, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """results.json, results.md and (with ``plots``) the two PNGs, under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(result.to_json(), indent=1) + "\n")
    md = [to_markdown(result)]
    hl = headline_markdown(result)
    if hl:
        md += ["Surgeon against the MAC count, Torch-Pruning and masking (speedups over dense, ONNX Runtime):",
               "", hl, ""]
    paths["markdown"].write_text("\n".join(md))
    if plots:
        for p in plot(result, out_dir):
            paths[p.stem] = p
    return paths
