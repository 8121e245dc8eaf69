"""Step 4: scoring. A criterion maps a group to one importance score per channel (low = removed).

Criteria are registered by name in ``CRITERIA``; any callable ``(group, tensors) -> array of
group.n scores`` works too. ``tensors`` maps each parameter path of the group to the live tensor.
A criterion may also declare any of these keyword arguments, and the planner fills them in:

- ``reduction``: how member scores combine into one score per channel (``REDUCTIONS``);
- ``model``: the model being pruned (to look up which layer owns a member);
- ``grads``: parameter path -> accumulated gradient of the loss (see ``accumulate_gradients``);
  the planner computes it only for criteria that need data: ``taylor``, or any callable with an
  attribute ``needs_data = True``.

Scores are computed per *member* (every learned weight of the group, on its coupled dim: the
producing convs' filters, the BatchNorm scales, the consumers' input kernels) and then combined per
channel with a reduction:

- ``mean`` (default): average over the members that cover the channel;
- ``sum``: their sum (a channel read by more consumers weighs more);
- ``max``: the largest member score (a channel survives if any layer finds it important);
- ``first``: per channel, only the first member in graph order that covers it (the producing
  layer's own score, the classic "filter norm of the layer" setting; in a concatenation each
  branch's channels take their own producer's score).

A criterion returns NaN for every channel of a group it cannot score (``bn_scale`` on a group
without BatchNorm): the planner then keeps that group whole and says why.

Which members a criterion sees is chosen by the planner's ``side`` option (``member_filter``):
``"out"`` keeps the producers (filters, biases' layers, norm scales), ``"in"`` keeps the consumers'
input kernels (``weight[:, c]`` of a conv: scoring whole input channels, i.e. kernel-level pruning
that removes every k x k kernel of input channel c, propagated to its producers by the group).
"""
from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

import numpy as np
import torch
from torch import nn

from .groups import Group
from .indexmap import Pos
from .registry import layer_spec
from .capture import eval_mode, submodule

__all__ = ["Criterion", "CRITERIA", "REDUCTIONS", "SIDES", "get_criterion", "bind_criterion",
           "member_scores", "reduce_members", "shared_reductions", "member_filter", "check_side", "check_reduction", "accumulate_gradients",
           "l1", "l2", "fpgm", "bn_scale", "taylor", "random"]

Criterion = Callable[..., np.ndarray]
REDUCTIONS = ("mean", "sum", "max", "first")
SIDES = ("all", "out", "in")


# ------------------------------------------------------------------------------------- members
def _owner(model: nn.Module | None, ref: str) -> nn.Module | None:
    if model is None:
        return None
    owner = ref.rsplit(".", 1)[0] if "." in ref else ""
    try:
        return submodule(model, owner)
    except AttributeError:
        return None


def is_input_side(model: nn.Module | None, pos: Pos) -> bool:
    """True when ``pos`` is the dim of a layer's weight that reads input channels (the layer spec's
    ``weight_dims[0]``): ``weight[:, c]`` of a Conv or Linear, ``weight[c]`` of a ConvTranspose
    (whose weight is (in, out/groups, k...))."""
    if not pos.ref.endswith("weight"):
        return False
    m = _owner(model, pos.ref)
    if m is None:
        return False
    spec = layer_spec(m)
    return spec is not None and spec.weight_dims is not None and pos.dim == spec.weight_dims[0]


def check_side(side: Any) -> str:
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; choose one of {', '.join(map(repr, SIDES))} "
                         "('in' scores whole input channels from the consumers' kernels)")
    return side


def member_filter(model: nn.Module, group: Group, side: str) -> Group:
    """The group as a criterion should see it for ``side`` ("all", "out" or "in"): a copy holding
    only that side's parameter members. A group with no member on that side is returned whole, so
    every group stays scorable (e.g. ``side="in"`` on a group consumed only by a norm)."""
    if check_side(side) == "all":
        return group
    want_in = side == "in"
    keep = {p: ch for p, ch in group.channel_of.items()
            if p.kind != "p" or is_input_side(model, p) == want_in}
    if not any(p.kind == "p" for p in keep):
        return group
    return Group(group.id, group.n, keep, group.fixed, group.mixing, group.aligned)


_SHARED: ContextVar[dict | None] = ContextVar("surgeon_shared_reductions", default=None)


@contextmanager
def shared_reductions(cache: dict | None = None) -> Iterator[None]:
    """Within this scope, ``reduce_except`` of a model parameter is computed once per (tensor,
    elementwise fn): a conv weight is scored along its output dim in one group and along its input
    dim in another, so both reductions are taken from one ``fn(t)`` pass and the second is a cache
    hit. ``cache``: a dict to reuse across scopes (``bind_criterion`` keeps one per bound
    criterion, so one plan shares it across groups); by default a fresh one."""
    token = _SHARED.set({} if cache is None else cache)
    try:
        yield
    finally:
        _SHARED.reset(token)


def _sum_except(a: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of ``a`` over every dim but ``dim``, without a strided reduction: the trailing dims are
    summed as contiguous rows, the leading ones by a ones-vector product; accumulated in ``a``'s
    dtype (float32: pairwise sums, ~1e-7 relative error, equal weights still tie exactly) and
    returned as float64. Measured on ResNet-50's weights, one thread: 40 ms for both dims of every
    weight, against 97 ms with float64 accumulation and more with ``sum(dim=[0, 2, 3])``."""
    n = a.shape[dim]
    if a.dim() == 1:
        return a.double()
    pre = 1
    for s in a.shape[:dim]:
        pre *= s
    if pre > 1:  # (pre, n * post): sum the rows with one matrix-vector product
        a = (torch.ones(1, pre, dtype=a.dtype, device=a.device) @ a.reshape(pre, -1))
    return a.reshape(n, -1).sum(1).double()


def reduce_except(t: torch.Tensor, dim: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """sum of fn(t) over every dim but ``dim``: one value per index of the position (float64).
    Inside ``shared_reductions`` a parameter's dims 0 and 1 are reduced from one ``fn(t)``."""
    shared = _SHARED.get()
    key = (id(t), t._version, fn)
    if shared is not None and isinstance(t, nn.Parameter):
        hit = shared.get(key)
        if hit is not None and dim in hit[1]:
            return hit[1][dim]
    v = fn(t.detach())  # in the weight's dtype, except half types (the matrix product needs float32)
    if v.is_floating_point() and v.element_size() < 4:
        v = v.float()
    if shared is None or not isinstance(t, nn.Parameter) or t.dim() < 2:
        return _sum_except(v.contiguous(), dim)
    v = v.contiguous()
    dims = {d: _sum_except(v, d) for d in {0, 1, dim}}
    shared[key] = (t, dims)  # holds t, so that its id cannot be reused while the scope lasts
    return dims[dim]


def scored_members(group: Group, tensors: Mapping[str, torch.Tensor]) -> list[Pos]:
    """Positions that carry learned weights: parameters (not buffers such as BatchNorm running
    statistics, which describe the data, not what the layer learned), and not biases."""
    return [p for p in group.params if p.ref in tensors and not p.ref.endswith("bias")
            and isinstance(tensors[p.ref], nn.Parameter) and tensors[p.ref].is_floating_point()]


def _per_channel(group: Group, pos: Pos, per_index: np.ndarray) -> np.ndarray:
    """Sum a member's per-index values into its channels; channels the member does not cover get
    NaN (a concat input covers only its own slice of the group)."""
    ch = group.channel_of[pos]
    if group.aligned:  # index i of every member is channel i
        return np.array(per_index, dtype=np.float64)
    acc = np.zeros(group.n)
    np.add.at(acc, ch, per_index)
    covered = np.zeros(group.n, dtype=bool)
    covered[ch] = True
    acc[~covered] = np.nan
    return acc


def member_scores(group: Group, tensors: Mapping[str, torch.Tensor],
                  per_index: Callable[[torch.Tensor], torch.Tensor]) -> list[tuple[Pos, np.ndarray]]:
    """For each scored member, the per-channel sum of the elementwise ``per_index`` (e.g. abs) over
    the channel's weights and over its indices (a flatten member contributes all H*W features of a
    channel). Members not covering a channel give NaN there."""
    return [(pos, _per_channel(group, pos, reduce_except(tensors[pos.ref], pos.dim, per_index).cpu().numpy()))
            for pos in scored_members(group, tensors)]


def check_reduction(reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of "
                         f"{', '.join(map(repr, REDUCTIONS))}")
    return reduction


def reduce_members(group: Group, scores: list[tuple[Pos, np.ndarray]], reduction: str = "mean") -> np.ndarray:
    """Combine member scores per channel: ``mean`` / ``sum`` / ``max`` over the members covering the
    channel, or ``first``: per channel, the first member in graph order covering it (the producing
    layer; in a concatenation, each branch's own producer)."""
    check_reduction(reduction)
    if not scores:
        return np.zeros(group.n)
    m = np.stack([s for _, s in scores])
    if reduction == "first":
        if group.aligned:
            return m[0]
        first = np.argmax(~np.isnan(m), axis=0)  # per channel, the first covering member (0 if none)
        return np.nan_to_num(m[first, np.arange(m.shape[1])], nan=0.0)
    if group.aligned:  # every member covers every channel: no NaN to skip
        return {"mean": np.mean, "sum": np.sum, "max": np.max}[reduction](m, axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: uncovered, set to 0 below
        r = {"mean": np.nanmean, "sum": np.nansum, "max": np.nanmax}[reduction](m, axis=0)
    return np.nan_to_num(r, nan=0.0)


# ------------------------------------------------------------------------------------ criteria
def l1(group: Group, tensors: Mapping[str, torch.Tensor], reduction: str = "mean") -> np.ndarray:
    """L1 filter norm: sum |w| over each channel's weights, per member, then reduced."""
    return reduce_members(group, member_scores(group, tensors, torch.abs), reduction)


def l2(group: Group, tensors: Mapping[str, torch.Tensor], reduction: str = "mean") -> np.ndarray:
    """L2 filter norm: sqrt(sum w^2) over each channel's weights, per member, then reduced."""
    s = member_scores(group, tensors, torch.square)
    return reduce_members(group, [(p, np.sqrt(v)) for p, v in s], reduction)


def _pairwise_distance_sums(f: torch.Tensor) -> torch.Tensor:
    """sum_j ||f_i - f_j||_2 for each row i, through the Gram matrix
    (||a - b||^2 = |a|^2 + |b|^2 - 2 a.b): one matmul, much faster than torch.cdist on CPU."""
    sq = (f * f).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (f @ f.T)
    d2.fill_diagonal_(0.0)  # exactly 0, not the rounding residue of |a|^2 + |a|^2 - 2 a.a
    return d2.clamp_min_(0.0).sqrt_().sum(dim=1)


def _median_distance(rows: torch.Tensor, ch: np.ndarray, n: int) -> np.ndarray:
    """Per channel, sum_j ||F_c - F_j||_2 over the member's other channels j, where F_c gathers the
    rows (one per index along the coupled dim) of channel c. When channels own different numbers of
    rows (rare: a grouped conv feeding a concat), distances are taken row by row and summed per
    channel instead."""
    covered, counts = np.unique(ch, return_counts=True)
    if (counts == counts[0]).all():
        order = torch.as_tensor(np.argsort(ch, kind="stable"))
        f = rows[order].reshape(len(covered), -1)  # rows of channel covered[0] first, and so on
        dist = _pairwise_distance_sums(f).cpu().numpy()
        out = np.full(n, np.nan)
        out[covered] = dist
        return out
    per_row = _pairwise_distance_sums(rows).cpu().numpy()
    out = np.zeros(n)
    np.add.at(out, ch, per_row)
    mask = np.zeros(n, dtype=bool)
    mask[covered] = True
    out[~mask] = np.nan
    return out


def fpgm(group: Group, tensors: Mapping[str, torch.Tensor], reduction: str = "mean") -> np.ndarray:
    """Filter pruning via geometric median (He et al. 2019): per member, importance of filter i is
    sum_j ||F_i - F_j||_2 over that layer's filters j. Filters near the geometric median have the
    smallest sum: the others can stand in for them, so they are the redundant ones."""
    scores = []
    for pos in scored_members(group, tensors):
        t = tensors[pos.ref].detach()
        big = t.numel() > 50_000_000  # a huge Linear head: float32 halves the gathered copy
        rows = t.movedim(pos.dim, 0).reshape(t.shape[pos.dim], -1).to(torch.float32 if big else torch.float64)
        scores.append((pos, _median_distance(rows, group.channel_of[pos], group.n)))
    return reduce_members(group, scores, reduction)


def _is_batch_norm_scale(model: nn.Module | None, pos: Pos, tensors: Mapping[str, torch.Tensor]) -> bool:
    if not pos.ref.endswith("weight"):
        return False
    m = _owner(model, pos.ref)
    if m is not None:
        return isinstance(m, nn.modules.batchnorm._BatchNorm)
    return tensors[pos.ref].dim() == 1  # no model given: a 1-D "weight" is a norm's scale


def bn_scale(group: Group, tensors: Mapping[str, torch.Tensor], reduction: str = "mean",
             model: nn.Module | None = None) -> np.ndarray:
    """Network slimming (Liu et al. 2017): |gamma| of the group's BatchNorm scales. Train with
    ``surgeon.regularize.bn_l1_penalty`` so that unneeded channels' gammas go to zero first.

    A group without BatchNorm gets NaN (kept whole by the planner); channels that no BatchNorm of
    the group covers get the group's largest score, since nothing says they are unimportant."""
    members = [p for p in scored_members(group, tensors) if _is_batch_norm_scale(model, p, tensors)]
    if not members:
        return np.full(group.n, np.nan)
    per = [(p, _per_channel(group, p, tensors[p.ref].detach().double().abs().cpu().numpy())) for p in members]
    stacked = np.stack([s for _, s in per])
    r = reduce_members(group, per, reduction)
    uncovered = np.isnan(stacked).all(axis=0)
    r[uncovered] = r[~uncovered].max() if (~uncovered).any() else 0.0
    return r


def taylor(group: Group, tensors: Mapping[str, torch.Tensor], reduction: str = "mean",
           grads: Mapping[str, torch.Tensor] | None = None) -> np.ndarray:
    """First-order Taylor (Molchanov et al.): |sum over the channel of w * dL/dw|, per member, then
    reduced: the estimated change of the loss when the channel is zeroed. Small weights with large
    gradients score high. ``grads`` comes from ``accumulate_gradients`` (the planner passes it when
    given ``data`` and ``loss_fn``); without it the tensors' own ``.grad`` are used."""
    scores = []
    for pos in scored_members(group, tensors):
        w = tensors[pos.ref]
        g = grads.get(pos.ref) if grads is not None else w.grad
        if g is None:
            continue
        per_index = reduce_except(w.detach() * g.to(w.device), pos.dim, lambda v: v).cpu().numpy()
        scores.append((pos, np.abs(_per_channel(group, pos, per_index))))
    if not scores and any(p.ref in tensors for p in group.params):
        raise ValueError("the taylor criterion needs gradients: pass data=[(inputs, target), ...] and "
                         "loss_fn=... to surgeon.plan / surgeon.prune")
    return reduce_members(group, scores, reduction)


def random(group: Group, tensors: Mapping[str, torch.Tensor], seed: int = 0) -> np.ndarray:
    """Uniform random scores: the baseline every criterion must beat. Reproducible: the scores
    depend on ``seed`` and the group; use ``functools.partial(random, seed=s)`` for another draw."""
    return np.random.default_rng([seed, group.id, group.n]).random(group.n)


CRITERIA: dict[str, Criterion] = {"l1": l1, "l2": l2, "fpgm": fpgm, "bn_scale": bn_scale,
                                  "taylor": taylor, "random": random}
NEEDS_DATA = {taylor}


def get_criterion(criterion: Union[str, Criterion]) -> Criterion:
    if callable(criterion):
        return criterion
    if isinstance(criterion, str) and criterion in CRITERIA:
        return CRITERIA[criterion]
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)} or pass a "
                     "callable (group, tensors) -> per-channel scores")


def needs_data(criterion: Criterion) -> bool:
    """True for criteria that need gradients from user data (``taylor``)."""
    base = criterion.func if isinstance(criterion, partial) else criterion
    return base in NEEDS_DATA or bool(getattr(base, "needs_data", False))


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def bind_criterion(criterion: Union[str, Criterion], reduction: str = "mean", *,
                   model: nn.Module | None = None,
                   grads: Mapping[str, torch.Tensor] | None = None) -> Callable[[Group, Mapping[str, torch.Tensor]], np.ndarray]:
    """The criterion as a ``(group, tensors) -> scores`` function, with ``reduction``, ``model`` and
    ``grads`` filled in where it declares them. A non-default reduction for a criterion that takes
    none is an error rather than silently ignored."""
    fn = get_criterion(criterion)
    check_reduction(reduction)
    kwargs: dict[str, Any] = {}
    if _accepts(fn, "reduction"):
        kwargs["reduction"] = reduction
    elif reduction != "mean":
        name = getattr(fn, "__name__", type(fn).__name__)
        raise ValueError(f"reduction={reduction!r} was given but criterion {name} takes no reduction "
                         "argument; drop it or add a 'reduction' parameter to the criterion")
    if model is not None and _accepts(fn, "model"):
        kwargs["model"] = model
    if grads is not None and _accepts(fn, "grads"):
        kwargs["grads"] = grads
    bound = partial(fn, **kwargs) if kwargs else fn
    cache: dict = {}  # one per bound criterion: the groups of one plan share reductions

    def score(group: Group, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        with shared_reductions(cache):
            return bound(group, tensors)
    return score


# ----------------------------------------------------------------------------------- gradients
def _as_inputs(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def accumulate_gradients(model: nn.Module, data: Iterable[Any],
                         loss_fn: Callable[[Any, Any], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean gradient of ``loss_fn(model(*inputs), target)`` over the ``(inputs, target)`` batches of
    ``data``, keyed by parameter path. The model is left as it was: it runs in eval mode (so
    BatchNorm statistics do not move; every module gets its own train / eval flag back),
    gradients come from ``torch.autograd.grad`` (so no ``.grad`` is written), and parameters that
    were frozen are unfrozen only for the duration."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (output, target) -> scalar loss, got {type(loss_fn).__name__}")
    named: dict[str, nn.Parameter] = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.is_floating_point()]
    params = [named[n] for n in names]
    frozen = [p for p in params if not p.requires_grad]
    total: list[torch.Tensor | None] = [None] * len(params)
    batches = 0
    for p in frozen:
        p.requires_grad_(True)
    try:
        with eval_mode(model):
            for batch in data:
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise TypeError("data must yield (inputs, target) pairs (inputs: a tensor or a tuple of "
                                    f"tensors), got a {type(batch).__name__}")
                inputs, target = batch
                loss = loss_fn(model(*_as_inputs(inputs)), target)
                if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
                    raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                                    + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
                gs = torch.autograd.grad(loss, params, allow_unused=True)
                for i, g in enumerate(gs):
                    if g is not None:
                        total[i] = g.detach() if total[i] is None else total[i] + g.detach()
                batches += 1
    finally:
        for p in frozen:
            p.requires_grad_(False)
    if batches == 0:
        raise ValueError("data yielded no batches; pass a list or a DataLoader of (inputs, target) "
                         "pairs (a generator is used up after one pass)")
    return {n: g / batches for n, g in zip(names, total) if g is not None}
