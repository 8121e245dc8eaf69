"""The latency lookup table: how long one layer takes on this machine, as a function of its
channel counts, measured once and cached on disk.

Why per layer and two-dimensional: a convolution's time depends on both its input-channel group and
its output-channel group. Halving both leaves a quarter of the work, so one curve per group, summed,
would predict 0 where a quarter remains (HALP, Shen et al. 2022, measure each layer on a grid of
(c_in, c_out) and interpolate; so do we).

What a sample is: one layer alone, at the layer's real input size and batch and a sampled
(c_in, c_out), in the target runtime (``RUNTIMES``). Its ``Signature`` (op, kernel, stride, padding,
dilation, depthwise or not, input spatial size, batch, bias) is the cache key, so the repeated blocks
of a ResNet stage are measured once. All samples of one signature are timed side by side
(``timing.time_side_by_side``: interleaved rounds, medians).

- ``"onnxruntime"`` (``measure_onnx``): a one-node ONNX model (built with ``onnx.helper``, no torch
  export) in a CPU session; the time of an empty session run (an Identity on one float) is
  subtracted, since inside a whole model a layer does not pay ``session.run``'s fixed cost.
- ``"torch"`` (``measure_torch``): the torch module alone (``nn.Conv2d`` / ``ConvTranspose2d`` /
  ``Linear``, 1-d and 3-d alike) in eager mode on the CPU, all calls under one
  ``torch.inference_mode``; nothing is subtracted, since inside an eager model every layer pays its
  own module call.

The cache is one JSON file per ``CacheKey`` (CPU model, core count, runtime and version, threads,
batch and input shape) under ``$SURGEON_CACHE_DIR`` or ``~/.cache/surgeon/latency/``; a file
written with another format version or key is ignored (re-measured), ``refresh=True`` re-measures.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

__all__ = ["Signature", "Sample", "CacheKey", "LatencyTable", "Runtime", "RUNTIMES", "check_runtime", "measure_onnx",
           "measure_torch", "cache_dir", "FORMAT"]

FORMAT = 1  # bump when a sample's meaning changes: older files are then re-measured
OPSET = 17


@dataclass(frozen=True)
class Signature:
    """What a layer's time depends on, besides its channel counts."""

    op: str                       # "Conv", "ConvTranspose" or "Gemm" (Linear)
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()    # ONNX order: all begins, then all ends
    dilation: tuple[int, ...] = ()
    depthwise: bool = False       # groups == c_in == c_out: one count, c
    spatial: tuple[int, ...] = () # input H, W (Conv); () for Gemm
    batch: int = 1                # Gemm: rows, the product of the input's leading dims
    bias: bool = True

    def key(self) -> str:
        def t(v: tuple[int, ...]) -> str:
            return "x".join(map(str, v)) or "-"
        return (f"{self.op}|k{t(self.kernel)}|s{t(self.stride)}|p{t(self.pads)}|d{t(self.dilation)}|"
                f"{'dw' if self.depthwise else 'dense'}|in{t(self.spatial)}|b{self.batch}|bias{int(self.bias)}")


@dataclass(frozen=True)
class Sample:
    """One measurement: ``sig`` at ``cin`` input and ``cout`` output channels (equal when depthwise)."""

    sig: Signature
    cin: int
    cout: int

    def key(self) -> str:
        return f"{self.sig.key()}|{self.cin}|{self.cout}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class CacheKey:
    """Everything a measured time depends on besides the layer: a change of any field re-measures."""

    cpu: str
    cores: int
    runtime: str
    version: str
    threads: int
    batch: int
    input_shape: tuple[int, ...]

    @classmethod
    def current(cls, threads: int, input_shape: Sequence[int], runtime: str = "onnxruntime") -> "CacheKey":
        """This machine's key for ``runtime`` (one of ``RUNTIMES``), with that runtime's version."""
        rt = check_runtime(runtime)
        shape = tuple(int(s) for s in input_shape)
        return cls(_cpu_name(), os.cpu_count() or 1, rt.name, rt.version(), int(threads), shape[0], shape)

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    env = os.environ.get("SURGEON_CACHE_DIR")
    return Path(env) / "latency" if env else Path.home() / ".cache" / "surgeon" / "latency"


Measure = Callable[[Sequence[Sample], int], Sequence[float]]


@dataclass(frozen=True)
class Runtime:
    """One runtime latency can be measured in: the one place that says how."""

    name: str                       # LatencySettings(runtime=...) and CacheKey.runtime
    backend: str                    # how timing.time_models runs whole models: "ort" or "torch"
    version: Callable[[], str]      # part of the cache key: an upgrade re-measures
    measure: Callable[[], Measure]  # the layer timing (a callable returning it: resolved when used)


def _ort_version() -> str:
    import onnxruntime as ort
    return ort.__version__


def _torch_version() -> str:
    import torch
    return torch.__version__


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("onnxruntime", "ort", _ort_version, lambda: measure_onnx),
    Runtime("torch", "torch", _torch_version, lambda: measure_torch),
)}


def check_runtime(runtime: str) -> Runtime:
    """The ``RUNTIMES`` entry named ``runtime``; ``ValueError`` naming the choices otherwise."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown latency runtime {runtime!r}; choose from {', '.join(map(repr, RUNTIMES))}")
    return RUNTIMES[runtime]


class LatencyTable:
    """Measured milliseconds per ``Sample`` for one ``CacheKey``, backed by a JSON file.

    ``measure(samples, threads) -> ms`` does the timing (by default the key's runtime's, ``measure_onnx``
    or ``measure_torch``; tests inject a fake one and count its calls). ``ensure`` measures only what
    the file does not hold yet."""

    def __init__(self, key: CacheKey, measure: Optional[Measure] = None, directory: Optional[Path] = None,
                 refresh: bool = False, progress: bool = True) -> None:
        self.key = key
        self.progress = progress
        self.measure = measure or check_runtime(key.runtime).measure()
        self.path = Path(directory or cache_dir()) / f"{key.runtime}-{key.digest()}.json"
        self.ms: dict[str, float] = {}
        self.measured = 0  # samples measured by this instance (not read from the cache)
        if not refresh:
            self.ms = self._read()

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if data.get("format") != FORMAT or data.get("key") != json.loads(json.dumps(asdict(self.key))):
            return {}  # another format or key (a hash collision, a hand-edited file): measure again
        return {str(k): float(v) for k, v in data.get("samples", {}).items()}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "key": asdict(self.key), "samples": self.ms},
                                  indent=0, sort_keys=True) + "\n")
        os.replace(tmp, self.path)  # atomic: a concurrent reader sees the old or the new file

    def ensure(self, samples: Iterable[Sample]) -> None:
        """Measure the samples not in the table, signature by signature, and save the file."""
        missing: dict[str, list[Sample]] = {}
        for s in samples:
            if s.key() not in self.ms:
                bucket = missing.setdefault(s.sig.key(), [])
                if all(o.key() != s.key() for o in bucket):
                    bucket.append(s)
        if not missing:
            return
        from tqdm import tqdm
        total = sum(map(len, missing.values()))
        # disable=None: silent when stderr is not a terminal (pipes, CI, tests)
        with tqdm(total=total, desc="measuring layer latency", disable=None if self.progress else True,
                  leave=False) as bar:
            for bucket in missing.values():
                ms = list(self.measure(bucket, self.key.threads))
                if len(ms) != len(bucket):
                    raise ValueError(f"the measure function returned {len(ms)} times for {len(bucket)} samples")
                for s, t in zip(bucket, ms):
                    self.ms[s.key()] = float(t)
                self.measured += len(bucket)
                bar.update(len(bucket))
        self._write()

    def __getitem__(self, s: Sample) -> float:
        return self.ms[s.key()]


# ------------------------------------------------------------------------------ ONNX Runtime timing
def _layer_model(s: Sample) -> bytes:
    """A one-node ONNX model computing the layer (random weights: time does not depend on them)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sig, cin, cout = s.sig, s.cin, s.cout
    inits, inputs = [], ["x"]
    if sig.op == "Gemm":
        shape = [sig.batch, cin]
        w = rng.standard_normal((cout, cin), dtype=np.float32)
        attrs = {"transB": 1}
    else:
        shape = [sig.batch, cin, *sig.spatial]
        groups = cin if sig.depthwise else 1
        wshape = (cout, cin // groups) if sig.op == "Conv" else (cin, cout)
        w = rng.standard_normal((*wshape, *sig.kernel), dtype=np.float32)
        attrs = {"kernel_shape": list(sig.kernel), "strides": list(sig.stride), "pads": list(sig.pads),
                 "dilations": list(sig.dilation), "group": groups}
    inits.append(numpy_helper.from_array(w, "w"))
    inputs.append("w")
    if sig.bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout, dtype=np.float32), "b"))
        inputs.append("b")
    node = helper.make_node(sig.op, inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def _identity_model() -> bytes:
    from onnx import TensorProto, helper
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "empty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def _session(model: bytes, threads: int):
    """Like ``runtime.onnx_session`` (non-spinning workers, quiet), from bytes instead of a file."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def measure_onnx(samples: Sequence[Sample], threads: int, runs: int = 15, warmup: int = 3) -> list[float]:
    """Median ms of each sample as a one-layer ONNX Runtime session, all timed side by side with an
    empty session whose time (``session.run``'s fixed cost) is subtracted."""
    from .timing import time_side_by_side

    fns = {}
    for i, s in enumerate(samples):
        sess = _session(_layer_model(s), threads)
        name = sess.get_inputs()[0].name
        shape = sess.get_inputs()[0].shape
        x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
        fns[i] = (lambda sess=sess, feed={name: x}: sess.run(None, feed))
    empty = _session(_identity_model(), threads)
    one = {"x": np.zeros(1, np.float32)}
    fns["empty"] = lambda: empty.run(None, one)
    t = time_side_by_side(fns, runs=runs, warmup=warmup)
    base = t["empty"].median_ms
    return [max(t[i].median_ms - base, 1e-4) for i in range(len(samples))]


# ------------------------------------------------------------------------------------ torch timing
def _layer_call(s: Sample) -> Callable[[], Any]:
    """A no-argument call of the layer as a torch module on the CPU (random weights, eval mode) on
    its input. ONNX pads that differ between the two ends (``padding="same"`` with an even kernel)
    are applied with ``F.pad`` first, as torch does inside such a conv."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    sig, cin, cout = s.sig, s.cin, s.cout
    g = torch.Generator().manual_seed(1)
    if sig.op == "Gemm":
        module: nn.Module = nn.Linear(cin, cout, bias=sig.bias)
        x = torch.randn(sig.batch, cin, generator=g)
    elif sig.op in ("Conv", "ConvTranspose"):
        n = len(sig.kernel)
        if n not in (1, 2, 3):
            raise ValueError(f"cannot build a {n}-d {sig.op} in torch (1-d, 2-d or 3-d): {sig.key()}")
        begin, end = sig.pads[:n], sig.pads[n:]
        even = tuple(min(a, b) for a, b in zip(begin, end))
        if sig.op == "Conv":
            cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1]
            module = cls(cin, cout, sig.kernel, sig.stride, even, sig.dilation, groups=cin if sig.depthwise else 1,
                         bias=sig.bias)
        else:
            if begin != end:
                raise ValueError(f"a ConvTranspose with uneven pads has no torch module: {sig.key()}")
            cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[n - 1]
            module = cls(cin, cout, sig.kernel, sig.stride, even, dilation=sig.dilation, bias=sig.bias)
        x = torch.randn(sig.batch, cin, *sig.spatial, generator=g)
        # what the even padding leaves, for F.pad (last dim first, begin then end): ONNX pads
        # (0, 0, 1, 1) (begins H, W; ends H, W) -> even (0, 0), extra [0, 1, 0, 1] (W: 0 | 1, H: 0 | 1)
        extra = [v for d in reversed(range(n)) for v in (begin[d] - even[d], end[d] - even[d])]
        if any(extra):
            module.eval()
            return lambda m=module, x=x: m(F.pad(x, extra))
    else:
        raise ValueError(f"no torch module for op {sig.op!r} (Conv, ConvTranspose or Gemm)")
    module.eval()
    return lambda m=module, x=x: m(x)


def measure_torch(samples: Sequence[Sample], threads: int, runs: int = 15, warmup: int = 3) -> list[float]:
    """Median ms of each sample as a torch module alone in eager mode on the CPU, all timed side by
    side under ``torch.inference_mode`` with ``threads`` torch threads (the previous count restored)."""
    import torch

    from .timing import time_side_by_side, torch_threads

    fns = {i: _layer_call(s) for i, s in enumerate(samples)}
    with torch_threads(threads), torch.inference_mode():
        t = time_side_by_side(fns, runs=runs, warmup=warmup)
    return [max(t[i].median_ms, 1e-4) for i in range(len(samples))]
