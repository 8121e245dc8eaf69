"""The ``surgeon`` command: inspect, prune, bench, export.

    surgeon inspect resnet50 --graph groups.html
    surgeon prune resnet50 --ratio 0.5 --ignore fc --round-to 8 -o out/
    surgeon bench resnet50 --ratios 0,0.25,0.5,0.75 -o bench/
    surgeon export out/model.pt -o model.onnx

MODEL is built fresh (random init); ``--weights w.pt`` (inspect, prune, bench) loads trained weights
into it first, a state_dict saved with ``torch.save(model.state_dict(), "w.pt")`` (see
``surgeon.weights``):

    surgeon prune resnet20 --weights w.pt --ratio 0.5 -o out/

User mistakes (unknown model, bad ratio, unreadable checkpoint, weights that do not fit...) end with
one line on stderr, ``surgeon <command>: error: ...``, and exit code 2 for bad arguments, 1 for
everything else; ``--traceback`` shows the full stack instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["main", "build_parser"]

CHECKPOINT_META = "surgeon-cli-model-v1"


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with a pointer to --help), not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------------- helpers
def _ratio(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= r < 1.0:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1) (the fraction of channels removed), got {text}")
    return r


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        f = -1.0
    if not 0.0 < f <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return f


def _latency_target(text: str) -> tuple[str, float]:
    """--target-latency: "0.5" (fraction of the dense latency) -> ("target_latency", 0.5); "12ms" or
    "12 ms" -> ("target_latency_ms", 12.0)."""
    t = text.strip().lower()
    number, unit = (t[:-2].strip(), "ms") if t.endswith("ms") else (t, "")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1] or milliseconds like 12ms, got {text!r} "
                                         "(the only unit is ms)") from None
    if unit == "ms":
        if not 0.0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"a latency in ms must be positive, got {text!r}")
        return "target_latency_ms", value
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a latency fraction must be in (0, 1] (or give ms, like 12ms), got {text!r}")
    return "target_latency", value


def _split(items: Sequence[str] | None) -> list[str]:
    """["fc", "a,b"] -> ["fc", "a", "b"]: repeated and comma-separated values alike."""
    return [n.strip() for item in items or () for n in item.split(",") if n.strip()]


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _int_list(text: str) -> list[int]:
    return [_positive_int(t) for t in text.split(",") if t.strip()]


def _index_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated output indices like 0 or 0,2, got {text!r}")
    if not out or any(i < 0 for i in out):
        raise argparse.ArgumentTypeError(f"expected comma-separated output indices >= 0, got {text!r}")
    return out


def _ratios(text: str) -> list[float]:
    from .resolve import ModelSpecError, parse_ratios

    try:
        return parse_ratios(text)
    except ModelSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _progress(enabled: bool, total: int | None = None, desc: str = "") -> Any:
    from tqdm import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal (pipes, CI, tests)
    return tqdm(total=total, desc=desc, disable=None if enabled else True, file=sys.stderr, leave=False,
                bar_format="{desc} [{elapsed}]" if total is None else None)


@contextlib.contextmanager
def _reported_warnings(verbose: bool) -> Iterator[None]:
    """Collect warnings; frozen-group ones are worth a line each, the rest only with --verbose."""
    from .trace import FrozenGroupWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: set[str] = set()
    for w in caught:
        msg = " ".join(str(w.message).split())
        if msg in seen or not (verbose or issubclass(w.category, FrozenGroupWarning)):
            continue
        seen.add(msg)
        print(f"warning: {msg}", file=sys.stderr)


def _build(args: argparse.Namespace) -> Any:
    """MODEL built fresh, with --weights loaded into it; a note on stderr when the keys were adjusted."""
    from .resolve import resolve_model

    resolved = resolve_model(args.model, args.input_shape)
    if args.weights:
        from .weights import StrippedPrefixWarning, load_weights

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_weights(resolved.model, args.weights, model_name=resolved.spec)
        for w in caught:
            if issubclass(w.category, StrippedPrefixWarning):
                print(f"note: {w.message}", file=sys.stderr)
            else:  # not ours: on to the command's own warning handling
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return resolved


def _weights_note(args: argparse.Namespace) -> str:
    return f"weights {args.weights}" if args.weights else "random-init weights"


def _example(shape: Sequence[int], seed: int = 0) -> Any:
    import torch

    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


# ------------------------------------------------------------------------------------ inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    from .trace import trace

    if args.graph:
        from .viz import FORMATS

        if Path(args.graph).suffix.lower() not in FORMATS:
            raise CliError(f"cannot draw to {args.graph!r}: the file must end in {', '.join(FORMATS)}")
    with _progress(not args.quiet, desc="tracing") as bar:
        resolved = _build(args)
        graph = trace(resolved.model, _example(resolved.input_shape), warn=False, tracer=args.tracer)
        bar.update()
    limit = None if args.all else 4
    items = []
    for g in graph.groups:
        layers = g.layers
        shown = ", ".join(layers[:limit]) + (f" +{len(layers) - limit} more" if limit and len(layers) > limit else "")
        items.append({"group": g.id, "channels": g.n, "prunable": g.prunable, "why_frozen": g.frozen_reason(),
                      "members": layers, "shown": shown})
    n_ok = sum(i["prunable"] for i in items)
    if args.json:
        print(json.dumps({"model": resolved.spec, "input_shape": list(resolved.input_shape), "weights": args.weights,
                          "groups": [{k: v for k, v in i.items() if k != "shown"} for i in items]}, indent=1))
    else:
        rows = [[str(i["group"]), str(i["channels"]), "prunable" if i["prunable"] else f"frozen: {i['why_frozen']}",
                 i["shown"]] for i in items]
        print(f"{resolved.spec}: input {'x'.join(map(str, resolved.input_shape))}, {_weights_note(args)}")
        print(_table(rows, ["group", "channels", "state", "members (layers whose channels are coupled)"]))
        print(f"{len(items)} groups: {n_ok} prunable, {len(items) - n_ok} frozen")
    if args.graph:
        from .viz import draw

        path = draw(graph, args.graph, view=args.view)
        print(f"graph written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


# -------------------------------------------------------------------------------------- prune
def cmd_prune(args: argparse.Namespace) -> int:
    import copy

    import torch

    from .timing import Timing, side_by_side
    from .checkpoint import save
    from .count import count, format_count
    from .plan import plan

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CliError(f"-o {out} exists and is not a directory; give a directory for the outputs")
    steps = 4 + (not args.no_onnx) + (not args.no_latency)
    with _progress(not args.quiet, total=steps) as bar, _reported_warnings(args.verbose):
        bar.set_description("building the model")
        resolved = _build(args)
        model, x = resolved.model, _example(resolved.input_shape)
        dense = copy.deepcopy(model) if not (args.no_latency and args.no_onnx) else None
        before = count(model, x)
        bar.update()
        bar.set_description("tracing and planning")
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {"criterion": args.criterion, "scope": args.scope,
                                  "ignore": _split(args.ignore) or None, "freeze": _split(args.freeze) or None,
                                  "round_to": args.round_to,
                                  "tracer": args.tracer, "keep_outputs": args.keep_outputs}
        # only what the user set: plan() refuses a ratio together with a MACs / params target
        for key in ("ratio", "target_macs", "target_params"):
            if getattr(args, key) is not None:
                kwargs[key] = getattr(args, key)
        if args.target_latency is not None:
            kwargs[args.target_latency[0]] = args.target_latency[1]
        if not any(k in kwargs for k in ("ratio", "target_macs", "target_params", *_LATENCY_KEYS)):
            kwargs["ratio"] = 0.5
        p = plan(model, x, **kwargs, **_latency_settings(args, kwargs))
        bar.update()
        bar.set_description("removing channels")
        p.apply(verify=args.verify)
        prune_s = time.perf_counter() - t0
        after = count(model, x)
        bar.update()
        bar.set_description("saving")
        out.mkdir(parents=True, exist_ok=True)
        save(model, out / "model.pt")
        (out / "model.json").write_text(json.dumps(
            {"format": CHECKPOINT_META, "model": resolved.spec, "input_shape": list(resolved.input_shape),
             "weights": args.weights, **kwargs}, indent=1) + "\n")
        (out / "plan.txt").write_text(p.summary() + "\n")
        bar.update()
        onnx_bytes: dict[str, int] = {}
        files = {"checkpoint": out / "model.pt", "metadata": out / "model.json", "plan": out / "plan.txt"}
        latency: dict[str, dict[str, Timing]] = {}
        if dense is not None:  # ONNX files and / or latency, before and after side by side
            with tempfile.TemporaryDirectory(prefix="surgeon-") as tmp:  # the dense ONNX: compared, not kept
                onnx = None if args.no_onnx else {"after": out / "model.onnx", "before": Path(tmp) / "dense.onnx"}
                backends = [] if args.no_latency else ["torch"] if args.no_onnx else ["torch", "ort"]
                measured = side_by_side({"before": dense, "after": model}, x, onnx,
                                        inputs=[_example((args.batch, *resolved.input_shape[1:]), seed=1)],
                                        backends=backends, runs=args.runs, threads=args.threads,
                                        progress=bar.set_description)
                onnx_bytes = {k: f.stat().st_size for k, f in measured.onnx.items()}
            latency = measured.latency
            if onnx:
                files["onnx"] = measured.onnx["after"]
            bar.update(steps - 4)
    summary = {"model": resolved.spec, "input_shape": list(resolved.input_shape), "weights": args.weights, **kwargs,
               "params": {"before": before.params, "after": after.params},
               "macs": {"before": before.macs, "after": after.macs}, "onnx_bytes": onnx_bytes,
               "latency_ms": {k: {m: t.median_ms for m, t in v.items()} for k, v in latency.items()},
               "latency_runs": args.runs, "threads": args.threads, "trace_prune_s": prune_s,
               "files": {k: str(v) for k, v in files.items()}}
    if args.target_latency is not None:  # the latency target: where it was measured, what was reached
        r = p.target
        summary["latency_target"] = {"runtime": args.latency_runtime, "requested_fraction": r.requested_fraction,
                                     "predicted_fraction": r.predicted_fraction,
                                     "measured_fraction": r.measured_fraction, "rounds": len(r.rounds)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    def row(name: str, a: float, b: float, fmt: Any) -> list[str]:
        return [name, fmt(a), fmt(b), f"{b / a:.2f}x" if a else "-"]

    rows = [row("params", before.params, after.params, format_count),
            row("MACs", before.macs, after.macs, format_count)]
    if onnx_bytes.get("before"):
        rows.append(row("ONNX file", onnx_bytes["before"], onnx_bytes["after"], lambda v: f"{v / 1e6:.2f} MB"))
    for key, t in latency.items():
        rows.append(row(f"latency {key}", t["before"].median_ms, t["after"].median_ms, lambda v: f"{v:.2f} ms"))
    how = ", ".join(f"{k.replace('_', ' ')} {kwargs[k]:g}" for k in ("ratio", "target_macs", "target_params",
                                                                      *_LATENCY_KEYS) if k in kwargs)
    print(f"{resolved.spec} pruned ({how}; {args.criterion}, {args.scope} scope; {_weights_note(args)}) "
          f"in {prune_s:.2f} s")
    print(_table(rows, ["", "before", "after", "after/before"]))
    if any(k in kwargs for k in _LATENCY_KEYS):
        print(p.target)
    if latency:
        print(f"latency: median of {args.runs} runs, {args.threads} threads, before and after interleaved")
    print(f"wrote {', '.join(str(v) for v in files.values())}, {out / 'summary.json'}")
    return 0


_LATENCY_KEYS = ("target_latency", "target_latency_ms")


def _latency_settings(args: argparse.Namespace, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The latency measurement options for plan(), when a latency target is given (kept out of
    ``kwargs``, which model.json stores)."""
    if not any(k in kwargs for k in _LATENCY_KEYS):
        return {}
    from .latency import LatencySettings
    return {"latency": LatencySettings(runtime=args.latency_runtime, threads=args.threads, progress=not args.quiet)}


# -------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import METHODS, run_benchmark
    from .bench_report import headline_markdown, merge, to_markdown, write_all

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise CliError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    if "dense" not in methods:
        methods.insert(0, "dense")
    if "torch-pruning" in methods:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            raise CliError("the torch-pruning method needs Torch-Pruning (pip install torch-pruning); "
                           "or leave it out with --methods dense,mask,surgeon") from None
    resolved = _build(args)
    runs, warmup, repeats = (3, 1, 1) if args.quick else (args.runs, args.warmup, args.repeats)
    with _progress(not args.quiet) as bar, _reported_warnings(args.verbose):
        result = run_benchmark(resolved.spec, lambda: resolved.model, resolved.input_shape, ratios=args.ratios,
                               methods=methods, batches=args.batches, runs=runs, warmup=warmup,
                               threads=args.threads, prune_repeats=repeats,
                               progress=lambda msg: (bar.set_description(msg), bar.update()))
    result = merge([result])
    result.meta["models"][resolved.spec]["weights"] = args.weights
    print(to_markdown(result))
    hl = headline_markdown(result)
    if hl:
        print(hl)
    print(f"\nmedian of {runs} runs after {warmup} warm-up, {args.threads} threads, "
          f"all variants interleaved; {_weights_note(args)}; {result.meta['cpu']}")
    if args.output:
        paths = write_all(result, args.output, plots=not args.no_plots)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


# ------------------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load
    from .export import export_onnx
    from .resolve import resolve_model

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise CliError(f"checkpoint not found: {ckpt}")
    meta_path = ckpt.with_suffix(".json")
    spec, shape = args.model, args.input_shape
    if spec is None:
        if not meta_path.is_file():
            raise CliError(f"{meta_path.name} (written by `surgeon prune`) is missing next to {ckpt}; "
                           "pass --model MODEL (and --input-shape) to say which architecture it was pruned from")
        try:
            meta = json.loads(meta_path.read_text())
            assert meta.get("format") == CHECKPOINT_META
            spec = meta["model"]
        except Exception:
            raise CliError(f"{meta_path} is not a surgeon model description; pass --model MODEL") from None
        shape = shape or meta.get("input_shape")
    out = Path(args.output) if args.output else ckpt.with_suffix(".onnx")
    with _progress(not args.quiet, total=2) as bar, _reported_warnings(args.verbose):
        bar.set_description("loading")
        resolved = resolve_model(spec, shape)
        model = load(resolved.model, ckpt)
        bar.update()
        bar.set_description("exporting to ONNX")
        path = export_onnx(model, _example(resolved.input_shape), out)
        bar.update()
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; ONNX Runtime matches PyTorch on the example inputs)")
    return 0


# ------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    from .lut import RUNTIMES

    try:
        ver = version("surgeon")
    except PackageNotFoundError:
        ver = "unknown"
    model_help = ("a zoo name (tinynet, resnet50, ...), package.module:factory, file.py:factory, "
                  "torchvision:NAME or timm:NAME")
    common = _Parser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    common.add_argument("--verbose", "-v", action="store_true", help="show every warning")
    common.add_argument("--traceback", action="store_true", help="on error, show the full stack trace")
    model_args = _Parser(add_help=False)
    model_args.add_argument("model", metavar="MODEL", help=model_help)
    model_args.add_argument("--input-shape", metavar="N,C,H,W", help="example input shape, batch first "
                            "(default: the model's own, e.g. 1,3,224,224 for the zoo's ImageNet models)")
    model_args.add_argument("--weights", metavar="PATH", help="load trained weights into MODEL before anything "
                            "else: a file written by torch.save(model.state_dict(), PATH), or a training "
                            "checkpoint holding that under one of 'state_dict', 'model', 'model_state_dict'; "
                            "a 'module.' (DDP), '_orig_mod.' (torch.compile) or 'model.' prefix on every key is "
                            "stripped, with a note. Default: random init")
    model_args.add_argument("--tracer", choices=("auto", "fx", "concrete"), default="auto",
                            help="auto (default): symbolic torch.fx, or the model's real forward recorded "
                            "when fx cannot trace it; fx; concrete")

    parser = _Parser(prog="surgeon", description="Structured pruning that removes channels for real: "
                     "see which layers are coupled, prune, export to ONNX and measure.")
    parser.add_argument("--version", action="version", version=f"surgeon {ver}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("inspect", parents=[model_args, common], help="show the coupled channel groups",
                       description="Trace MODEL and print its coupled channel groups: channels that must be "
                       "removed together, and which groups cannot shrink and why.")
    p.add_argument("--graph", metavar="FILE", help="also draw the dependency graph: FILE.html, .png or .dot")
    p.add_argument("--view", choices=("layers", "positions"), default="layers",
                   help="graph nodes: layers (default) or raw channel positions")
    p.add_argument("--all", action="store_true", help="list every member of every group")
    p.add_argument("--json", action="store_true", help="print the groups as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("prune", parents=[model_args, common], help="prune a model, export it, measure it",
                       description="Prune MODEL, write OUT/model.pt (+ model.json: how to rebuild it), "
                       "OUT/model.onnx and OUT/summary.json, and print params, MACs and latency before / after.")
    p.add_argument("--ratio", type=_ratio, help="fraction of channels removed (per group with local scope, "
                   "of all channels with global scope); default 0.5 unless a target is given")
    p.add_argument("--target-macs", type=_fraction, metavar="F", help="instead of --ratio: keep this fraction "
                   "of the MACs, in (0, 1]")
    p.add_argument("--target-params", type=_fraction, metavar="F", help="instead of --ratio: keep this "
                   "fraction of the parameters, in (0, 1]")
    p.add_argument("--target-latency", type=_latency_target, metavar="F|Nms",
                   help="instead of --ratio: reach this latency in --latency-runtime, a fraction of the dense model's "
                   "(0.5) or milliseconds (12ms), measured with --threads at the input shape's batch. Channels go "
                   "where they cost the least importance per ms saved; layer timings are cached per machine "
                   "(~/.cache/surgeon/latency or $SURGEON_CACHE_DIR); the pruned model is measured and re-planned "
                   "while it misses by over 5%%")
    p.add_argument("--latency-runtime", choices=tuple(RUNTIMES), default="onnxruntime",
                   help="where --target-latency is measured: onnxruntime (ONNX Runtime CPU, default) or torch "
                   "(eager on the CPU); each has its own layer-timing cache")
    p.add_argument("--criterion", default="l1", help="channel importance: l1 (default), l2, ... (see surgeon.CRITERIA)")
    p.add_argument("--scope", default="local", help="local (same ratio in every group, default) or global")
    p.add_argument("--ignore", action="append", metavar="NAME",
                   help="module whose output channels stay (qualified name, e.g. fc); its inputs may still "
                   "shrink, as Torch-Pruning's ignored_layers; repeat or comma-separate for several")
    p.add_argument("--freeze", action="append", metavar="NAME",
                   help="module to leave exactly as it is, inputs included (every channel group touching "
                   "its parameters stays whole); repeat or comma-separate for several")
    p.add_argument("--round-to", type=_positive_int, metavar="N", help="keep channel counts multiples of N")
    p.add_argument("--keep-outputs", type=_index_list, metavar="I,J", help="only these model outputs (indices "
                   "of the flattened output tensors) keep their shapes; default all (e.g. 0 for a detector "
                   "whose extra outputs are features for a training loss)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output directory")
    p.add_argument("--verify", action="store_true", help="also check the pruned model against a zeroed copy")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export (and its latency)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--runs", type=_positive_int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size for latency (default 1)")
    p.add_argument("--threads", type=_positive_int, default=2, help="torch / ONNX Runtime threads (default 2)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("bench", parents=[model_args, common], help="latency: dense vs masking vs surgeon "
                       "vs Torch-Pruning", description="Benchmark MODEL at several ratios: params, MACs, ONNX "
                       "size, torch and ONNX Runtime latency of the dense model, torch.nn.utils.prune masking, "
                       "surgeon and Torch-Pruning, all timed side by side; and trace + prune time.")
    p.add_argument("--ratios", type=_ratios, default=[0.0, 0.25, 0.5, 0.75], help="default 0,0.25,0.5,0.75")
    p.add_argument("--methods", default="dense,mask,surgeon,torch-pruning", help="default: all four")
    p.add_argument("--batches", type=_int_list, default=[1, 8], help="batch sizes (default 1,8)")
    p.add_argument("--runs", type=_positive_int, default=20, help="timed runs per variant (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up runs per variant (default 3)")
    p.add_argument("--repeats", type=_positive_int, default=3, help="trace + prune repeats (default 3)")
    p.add_argument("--threads", type=_positive_int, default=2, help="torch / ONNX Runtime threads (default 2)")
    p.add_argument("--quick", action="store_true", help="3 runs, 1 warm-up, 1 prune repeat")
    p.add_argument("--output", "-o", metavar="DIR", help="write results.json, results.md and PNG plots here")
    p.add_argument("--no-plots", action="store_true", help="with -o: skip the PNG plots")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export", parents=[common], help="export a pruned checkpoint to ONNX",
                       description="Rebuild the architecture named in CHECKPOINT's model.json, load the pruned "
                       "weights and export to ONNX (checked against PyTorch with ONNX Runtime).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a model.pt written by `surgeon prune`")
    p.add_argument("--output", "-o", metavar="FILE", help="the .onnx file (default: CHECKPOINT with .onnx)")
    p.add_argument("--model", metavar="MODEL", help="architecture, when model.json is missing: " + model_help)
    p.add_argument("--input-shape", metavar="N,C,H,W", help="example input shape (default: from model.json)")
    p.set_defaults(func=cmd_export)
    return parser


@contextlib.contextmanager
def _quiet_torch_logs(verbose: bool) -> Iterator[None]:
    """torch logs whole tracebacks when a fake-tensor shape check fails (a wrong --input-shape);
    the error we raise says it in one line, so those logs are muted unless --verbose."""
    loggers = [logging.getLogger(n) for n in ("torch._subclasses.fake_tensor", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    if not verbose:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_MAX_MESSAGE = 400


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"surgeon {args.command}"
    try:
        with _quiet_torch_logs(args.verbose):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; --traceback for the whole story
        if args.traceback:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        if len(msg) > _MAX_MESSAGE and not args.verbose:
            # keep the head (what failed) and the tail (what to do), drop the middle
            msg = f"{msg[:_MAX_MESSAGE - 150].rstrip()} [... --verbose for all ...] {msg[-150:].lstrip()}"
        user = isinstance(e, (CliError, ValueError, FileNotFoundError, PermissionError, ImportError))
        hint = "" if user else f" ({type(e).__name__}; rerun with --traceback for details)"
        print(f"{prog}: error: {msg}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
