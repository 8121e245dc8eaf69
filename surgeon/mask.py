"""Unstructured / semi-structured masking baseline built on ``torch.nn.utils.prune``.

Masking zeroes weights but never changes a tensor's shape.  It is the
reference point that physical channel removal is compared against: the
accuracy of a masked model is an upper bound for what removal at the same
granularity can reach, while only removal (or N:M hardware) makes it faster.

Everything goes through ``torch.nn.utils.prune``, so a masked layer has the
usual ``weight_orig`` parameter, ``weight_mask`` buffer and forward pre-hook,
``torch.nn.utils.prune.remove(layer, "weight")`` works, and masks compose with
other ``prune`` calls (a second :func:`mask` call is combined through a
``PruningContainer``; like torch's own methods, its ratio then applies to the
units that are still unmasked).  As with any ``prune``-masked model,
``copy.deepcopy`` fails on it (``weight`` is a non-leaf tensor); copy before
masking, or call :func:`remove_masks` first.

Granularities (``ratio`` is the fraction of *units* zeroed in each layer):

``element``
    single weights, scored by ``|w|`` (``prune.l1_unstructured``).  ``l1`` and
    ``l2`` give the same ranking for single weights.  The only granularity
    with ``scope="global"`` (``prune.global_unstructured``: one magnitude
    threshold shared by all selected layers).
``vector``
    for convolutions, one row of a kernel along its last (width) axis,
    ``weight[o, i, ..., :]`` (for ``Conv1d`` that is the whole kernel); for
    ``Linear``, ``vector_size`` consecutive input weights of one output row,
    ``weight[o, j*vector_size:(j+1)*vector_size]``.  When ``in_features`` is
    not a multiple of ``vector_size`` the trailing shorter block is a unit of
    its own.  Rows of a ``Linear`` are not used because a whole row is an
    output neuron, i.e. the ``channel`` granularity.
``kernel``
    a whole spatial kernel ``weight[o, i]`` of a convolution (``weight[i, o]``
    for a transposed one).  A ``Linear`` has 1x1 "kernels", so this equals
    ``element`` there.
``channel``
    a whole output filter (``weight[o]``; ``weight[:, o]`` for a transposed
    convolution, whose weight is laid out ``[in, out/groups, ...]``), zeroed
    but not removed (``prune.ln_structured``).
``"N:M"`` (e.g. ``"2:4"``)
    at most N non-zeros in every M consecutive weights along the reduction
    dimension: the input dimension of a ``Linear``, and for convolutions the
    input-channel dimension at a fixed output channel and kernel position
    (``weight[o, i:i+M, r, s]``), which is the layout of NVIDIA's 2:4 sparse
    convolutions.  A transposed convolution reduces over ``weight`` dim 0,
    grouped per convolution group.  If that dimension is not a multiple of M
    the remainder stays dense (and layers narrower than M are untouched).  The
    pattern per group maximises the kept magnitude (see :mod:`surgeon.nm`).
    ``ratio`` is ignored: the sparsity is fixed at ``1 - N/M``.

Units are scored by their L1 norm (``criterion="l1"``) or L2 norm (``"l2"``);
the lowest-scoring ones are masked.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from surgeon.nm import _check_nm, nm_mask
from surgeon.registry import layer_spec, registered_layers

__all__ = [
    "is_maskable",
    "GRANULARITIES",
    "CRITERIA",
    "SCOPES",
    "KernelPruningMethod",
    "VectorPruningMethod",
    "NMPruningMethod",
    "mask",
    "sparsity",
    "remove_masks",
]


def _weight_dims(module: nn.Module) -> tuple[int, int] | None:
    """(input dim, output dim) of the module's ``weight``, from its layer spec; None if it has none."""
    spec = layer_spec(module)
    return spec.weight_dims if spec is not None else None


def is_maskable(module: nn.Module) -> bool:
    """True for a layer whose spec says where its weight's input and output channels lie
    (``LayerSpec.weight_dims``): built in, every conv, transposed conv and linear, subclasses too."""
    return _weight_dims(module) is not None

GRANULARITIES = ("element", "vector", "kernel", "channel", "N:M")
CRITERIA = ("l1", "l2")
SCOPES = ("local", "global")

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


# --------------------------------------------------------------------------
# Custom pruning methods (torch ships element- and channel-wise ones only).
# --------------------------------------------------------------------------


class _UnitPruningMethod(prune.BasePruningMethod):
    """Mask the lowest-norm ``amount`` fraction of units of a tensor.

    A *unit* is a group of entries defined by the subclass through
    :meth:`_units` (tensor -> ``[U, K]`` rows, zero padded) and
    :meth:`_expand` (per-unit keep flags -> mask of the tensor's shape).

    ``PRUNING_TYPE`` is ``"global"``: units are not slices along a single
    dimension, so a ``PruningContainer`` must hand us the full tensor and the
    previous mask.  Already-masked entries then count as zero when scoring,
    fully masked units are skipped, and ``amount`` applies to the units that
    are still alive, matching the iterative semantics of torch's methods.
    """

    PRUNING_TYPE = "global"

    def __init__(self, amount: float, p: int = 1) -> None:
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
            raise TypeError(f"amount must be a float in [0, 1], got {amount!r}")
        if not 0.0 <= float(amount) <= 1.0:
            raise ValueError(f"amount must be in [0, 1], got {amount!r}")
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p!r}")
        self.amount = float(amount)
        self.p = p

    def _units(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _expand(self, keep: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        mask = default_mask.clone(memory_format=torch.contiguous_format)
        alive = self._units(default_mask.to(t.dtype)).ne(0).any(dim=1)
        k = round(self.amount * int(alive.sum()))
        if k == 0:
            return mask
        units = self._units((t * default_mask).detach()).float()
        scores = torch.linalg.vector_norm(units, ord=self.p, dim=1)
        scores = scores.masked_fill(~alive, float("inf"))
        keep = torch.ones_like(alive)
        keep[torch.topk(scores, k, largest=False).indices] = False
        return mask * self._expand(keep, t).to(mask.dtype)


class KernelPruningMethod(_UnitPruningMethod):
    """Mask whole spatial kernels ``t[a, b]`` of a conv weight (single entries of a 2-D one)."""

    def _units(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 3:
            return t.reshape(t.shape[0] * t.shape[1], -1)
        return t.reshape(-1, 1)

    def _expand(self, keep: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 3:
            return keep.view(t.shape[0], t.shape[1], *([1] * (t.dim() - 2))).expand(t.shape)
        return keep.view(t.shape)

    @classmethod
    def apply(cls, module: nn.Module, name: str, amount: float, p: int = 1) -> KernelPruningMethod:  # type: ignore[override]
        return super().apply(module, name, amount=amount, p=p)


class VectorPruningMethod(_UnitPruningMethod):
    """Mask kernel rows ``t[..., :]`` (conv) or blocks of ``vector_size`` inputs (2-D weight)."""

    def __init__(self, amount: float, p: int = 1, vector_size: int = 4) -> None:
        super().__init__(amount, p)
        if isinstance(vector_size, bool) or not isinstance(vector_size, int) or vector_size < 1:
            raise ValueError(f"vector_size must be a positive int, got {vector_size!r}")
        self.vector_size = vector_size

    def _blocks(self, t: torch.Tensor) -> int:
        return math.ceil(t.shape[1] / self.vector_size)

    def _units(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 3:
            return t.reshape(-1, t.shape[-1])
        if t.dim() != 2:
            raise ValueError(f"vector masking needs a weight with >= 2 dims, got shape {tuple(t.shape)}")
        blocks = self._blocks(t)
        padded = F.pad(t, (0, blocks * self.vector_size - t.shape[1]))
        return padded.reshape(t.shape[0] * blocks, self.vector_size)

    def _expand(self, keep: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 3:
            return keep.view(*t.shape[:-1], 1).expand(t.shape)
        rows, blocks = t.shape[0], self._blocks(t)
        full = keep.view(rows, blocks, 1).expand(rows, blocks, self.vector_size)
        return full.reshape(rows, blocks * self.vector_size)[:, : t.shape[1]]

    @classmethod
    def apply(  # type: ignore[override]
        cls, module: nn.Module, name: str, amount: float, p: int = 1, vector_size: int = 4
    ) -> VectorPruningMethod:
        return super().apply(module, name, amount=amount, p=p, vector_size=vector_size)


class NMPruningMethod(prune.BasePruningMethod):
    """Keep the best ``n`` of every ``m`` consecutive entries along ``dim``.

    ``groups > 1`` (only meaningful with ``dim=0``, for transposed
    convolutions whose dim 0 concatenates the input channels of all
    convolution groups) forms the groups of ``m`` within each convolution
    group, so no group straddles two independent reductions.

    ``PRUNING_TYPE`` is ``"global"`` because the pattern spans the whole
    tensor; entries masked by an earlier method score zero, and the result
    is intersected with the previous mask, so it still satisfies N:M.
    """

    PRUNING_TYPE = "global"

    def __init__(self, n: int, m: int, dim: int = 1, groups: int = 1) -> None:
        self.n, self.m = _check_nm(n, m)
        self.dim = dim
        self.groups = groups

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        scored = (t * default_mask).detach()
        if self.groups > 1 and self.dim == 0:
            grouped = scored.reshape(self.groups, -1, *scored.shape[1:])
            keep = nm_mask(grouped, self.n, self.m, dim=1).reshape(scored.shape)
        else:
            keep = nm_mask(scored, self.n, self.m, dim=self.dim)
        return default_mask * keep.to(default_mask.dtype)

    @classmethod
    def apply(  # type: ignore[override]
        cls, module: nn.Module, name: str, n: int, m: int, dim: int = 1, groups: int = 1
    ) -> NMPruningMethod:
        return super().apply(module, name, n=n, m=m, dim=dim, groups=groups)


# --------------------------------------------------------------------------
# Argument validation: everything is checked before the model is touched.
# --------------------------------------------------------------------------


def _check_ratio(ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise TypeError(f"ratio must be a real number in [0, 1], got {ratio!r}")
    value = float(ratio)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
    # Always a float: torch.nn.utils.prune reads an int amount as a count.
    return value


def _parse_granularity(granularity: object) -> tuple[str, tuple[int, int] | None]:
    choices = f"one of {GRANULARITIES[:-1]} or an 'N:M' string such as '2:4'"
    if not isinstance(granularity, str):
        raise TypeError(f"granularity must be a str ({choices}), got {granularity!r}")
    key = granularity.strip().lower()
    if key in GRANULARITIES[:-1]:
        return key, None
    match = _NM_RE.match(key)
    if match is None:
        raise ValueError(f"unknown granularity {granularity!r}; expected {choices}")
    try:
        n, m = _check_nm(int(match.group(1)), int(match.group(2)))
    except ValueError as err:
        raise ValueError(f"invalid N:M granularity {granularity!r}: {err}") from err
    return "nm", (n, m)


def _check_criterion(criterion: object) -> int:
    if not isinstance(criterion, str):
        raise TypeError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    key = criterion.strip().lower()
    if key not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    return CRITERIA.index(key) + 1  # the p of the Lp norm


def _check_scope(scope: object, kind: str, granularity: object) -> str:
    if not isinstance(scope, str) or scope.strip().lower() not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")
    key = scope.strip().lower()
    if key == "global" and kind != "element":
        raise ValueError(
            f"scope='global' is only supported with granularity='element', "
            f"got granularity={granularity!r}; use scope='local'"
        )
    return key


def _type_names() -> str:
    return ", ".join(t.__name__ for t, spec in registered_layers().items() if spec.weight_dims is not None)


def _select_modules(model: nn.Module, modules: object) -> list[tuple[str, nn.Module]]:
    named = list(model.named_modules())
    maskable = [(name, mod) for name, mod in named if is_maskable(mod)]
    if modules is None:
        if not maskable:
            raise ValueError(f"model has no maskable layers; mask() handles {_type_names()}")
        selected = maskable
    else:
        if isinstance(modules, (str, nn.Module)):
            modules = [modules]
        if not isinstance(modules, Iterable):
            raise TypeError(
                f"modules must be an iterable of module objects or qualified names, got {modules!r}"
            )
        items = list(modules)
        if not items:
            raise ValueError("modules is empty; pass None to mask every maskable layer")
        by_name = dict(named)
        name_of = {id(mod): name for name, mod in named}
        available = [name for name, _ in maskable]
        shown = ", ".join(repr(n) for n in available[:10]) + (", ..." if len(available) > 10 else "")
        selected, seen = [], set()
        for item in items:
            if isinstance(item, str):
                if item not in by_name:
                    raise ValueError(
                        f"modules names {item!r}, which is not a submodule of the model; "
                        f"maskable layers are: {shown or 'none'}"
                    )
                name, mod = item, by_name[item]
            elif isinstance(item, nn.Module):
                if id(item) not in name_of:
                    raise ValueError(
                        f"modules contains a {type(item).__name__} object that is not part of "
                        f"the model; maskable layers are: {shown or 'none'}"
                    )
                name, mod = name_of[id(item)], item
            else:
                raise TypeError(
                    f"modules entries must be nn.Module objects or qualified names, got {item!r}"
                )
            if not is_maskable(mod):
                raise TypeError(
                    f"module {name!r} is a {type(mod).__name__}, which cannot be masked; "
                    f"expected one of {_type_names()}"
                )
            if id(mod) not in seen:
                seen.add(id(mod))
                selected.append((name, mod))
    for name, mod in selected:
        weight = mod._parameters.get("weight", None)
        already = _has_weight_hook(mod)
        if not already and (
            not isinstance(weight, nn.Parameter) or isinstance(weight, nn.parameter.UninitializedParameter)
        ):
            raise ValueError(
                f"layer {name!r} has no initialised 'weight' parameter to mask "
                f"(lazy or parametrized layers are not supported)"
            )
    return selected


def _has_weight_hook(module: nn.Module) -> bool:
    return any(
        isinstance(hook, prune.BasePruningMethod) and getattr(hook, "_tensor_name", None) == "weight"
        for hook in module._forward_pre_hooks.values()
    )


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def mask(
    model: nn.Module,
    ratio: float = 0.5,
    granularity: str = "element",
    criterion: str = "l1",
    scope: str = "local",
    modules: Iterable[nn.Module | str] | nn.Module | str | None = None,
    *,
    vector_size: int = 4,
) -> nn.Module:
    """Mask the ``weight`` of conv / transposed-conv / linear layers in place (every layer whose
    spec gives its weight's input and output dims, see ``is_maskable``).

    Args:
        model: the model; it is modified in place and returned.
        ratio: fraction in ``[0, 1]`` of units to zero in each layer (across
            all selected layers for ``scope="global"``); rounded to the
            nearest unit count like ``torch.nn.utils.prune``.  Ignored for
            N:M granularities, whose sparsity is ``1 - N/M``.
        granularity: ``"element"``, ``"vector"``, ``"kernel"``, ``"channel"``
            or an ``"N:M"`` string; see the module docstring for the exact
            unit of each.
        criterion: ``"l1"`` or ``"l2"`` norm of a unit as its importance.
        scope: ``"local"`` (per layer) or ``"global"`` (one threshold over all
            selected layers; ``element`` granularity only).
        modules: restrict masking to these layers, given as module objects
            and/or qualified names from ``model.named_modules()``.
        vector_size: block length of a ``Linear`` vector (``vector`` only).

    Raises:
        TypeError / ValueError: on any invalid argument, before the model is
            modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    value = _check_ratio(ratio)
    kind, nm = _parse_granularity(granularity)
    p = _check_criterion(criterion)
    scope_key = _check_scope(scope, kind, granularity)
    if isinstance(vector_size, bool) or not isinstance(vector_size, int) or vector_size < 1:
        raise ValueError(f"vector_size must be a positive int, got {vector_size!r}")
    targets = _select_modules(model, modules)

    if kind == "element" and scope_key == "global":
        prune.global_unstructured(
            [(mod, "weight") for _, mod in targets],
            pruning_method=prune.L1Unstructured,
            amount=value,
        )
        return model
    for _, mod in targets:
        w_in, w_out = _weight_dims(mod)  # type: ignore[misc]  # (1, 0) conv / linear, (0, 1) transposed
        if kind == "element":
            prune.l1_unstructured(mod, "weight", amount=value)
        elif kind == "channel":
            prune.ln_structured(mod, "weight", amount=value, n=p, dim=w_out)
        elif kind == "kernel":
            KernelPruningMethod.apply(mod, "weight", amount=value, p=p)
        elif kind == "vector":
            VectorPruningMethod.apply(mod, "weight", amount=value, p=p, vector_size=vector_size)
        else:
            assert nm is not None
            # a transposed conv's dim 0 concatenates the inputs of all its groups: N:M per group
            groups = getattr(mod, "groups", 1) if w_in == 0 else 1
            NMPruningMethod.apply(mod, "weight", nm[0], nm[1], dim=w_in, groups=groups)
    return model


def _effective_zero(module: nn.Module) -> torch.Tensor:
    if _has_weight_hook(module) and hasattr(module, "weight_mask"):
        # Read orig and mask instead of the cached ``weight`` attribute, which is
        # only refreshed on forward and may be stale after an optimiser step.
        return (module.weight_mask == 0) | (module.weight_orig.detach() == 0)
    return module.weight.detach() == 0


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over the layers whose ``weight`` is masked.

    If no layer currently carries a mask (e.g. after :func:`remove_masks`),
    all maskable layers are counted instead, so the value stays meaningful
    once masks were made permanent.

    Raises:
        ValueError: if the model has neither masked nor maskable layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = [mod for mod in model.modules() if _has_weight_hook(mod)]
    if not layers:
        layers = [
            mod
            for mod in model.modules()
            if is_maskable(mod) and isinstance(getattr(mod, "weight", None), torch.Tensor)
        ]
    if not layers:
        raise ValueError(f"model has no masked or maskable layers ({_type_names()})")
    zeros = total = 0
    for mod in layers:
        is_zero = _effective_zero(mod)
        zeros += int(is_zero.sum())
        total += is_zero.numel()
    return zeros / total if total else 0.0


def remove_masks(model: nn.Module) -> nn.Module:
    """Make every weight mask permanent (``prune.remove``) and return the model.

    Afterwards ``weight`` is a plain parameter holding the zeros; the
    ``weight_orig`` / ``weight_mask`` pair and the hook are gone.  Layers
    without a weight mask are left alone.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for mod in model.modules():
        if _has_weight_hook(mod):
            prune.remove(mod, "weight")
    return model
