"""What the user asked for, checked before anything is traced (so bad input changes nothing):
how much to remove (a ratio, or a MACs / params / latency target), the scope and its limits, and
modules named in ``ignore`` / ``freeze`` / ``ratios``. Every error names the argument and the fix."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from torch import nn

from .scope import SCOPES, Request

__all__ = ["DEFAULT_RATIO", "check_request", "check_ratios", "module_names"]


class _DefaultRatio(float):
    """The default ratio, 0.5, marked as not chosen by the user, so that a target can replace it."""

    def __repr__(self) -> str:
        return "0.5"


DEFAULT_RATIO = _DefaultRatio(0.5)


def _check_fraction(name: str, value: Any, low_open: bool, what: str) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and ((0.0 < float(value) <= 1.0) if low_open else (0.0 <= float(value) < 1.0))
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1)"
        raise ValueError(f"{name} must be a number in {interval} ({what}), got {value!r}")
    return float(value)


def _check_ratio(ratio: Any) -> float:
    return _check_fraction("ratio", ratio, False, "the fraction of channels removed per group")


def module_names(model: nn.Module, items: Iterable[Any], arg: str) -> list[str]:
    """Qualified names of modules given as modules or names; errors name the bad entry."""
    by_id = {id(m): n for n, m in model.named_modules()}
    all_names = set(by_id.values())
    names = []
    for item in items:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise ValueError(f"{arg} lists a {type(item).__name__} that is not a submodule of the "
                                 "model; pass modules of this model or their qualified names")
            names.append(by_id[id(item)])
        elif isinstance(item, str):
            if item not in all_names:
                close = sorted(n for n in all_names if item in n)[:5]
                raise ValueError(f"{arg} names {item!r}, which is not a module of the model"
                                 + (f"; did you mean one of {close}?" if close else ""))
            names.append(item)
        else:
            raise TypeError(f"{arg} entries must be modules or qualified names, got {type(item).__name__}")
    return names


def check_request(ratio: Any, scope: Any, round_to: Any, max_layer_ratio: Any, target_macs: Any,
             target_params: Any, target_latency: Any = None, target_latency_ms: Any = None) -> Request:
    """Validate the how-much arguments (before anything is traced, so bad input changes nothing)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {', '.join(map(repr, SCOPES))}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive integer or None, got {round_to!r}")
    mlr = None
    if max_layer_ratio is not None:
        mlr = _check_fraction("max_layer_ratio", max_layer_ratio, True,
                              "the most a group may lose, as a fraction of its channels")
    targets = {k: v for k, v in (("macs", target_macs), ("params", target_params), ("latency", target_latency),
                                 ("latency_ms", target_latency_ms)) if v is not None}
    if set(targets) == {"macs", "params"}:
        raise ValueError("give one of target_macs and target_params, not both")
    if len(targets) > 1:
        raise ValueError(f"give one target, got {', '.join('target_' + k for k in targets)}")
    if targets:
        if ratio is not DEFAULT_RATIO:
            raise ValueError(f"give either ratio or a target, not both (ratio={ratio!r}, "
                             f"target_{next(iter(targets))}={next(iter(targets.values()))!r})")
        (metric, value), = targets.items()
        if metric == "latency_ms":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"target_latency_ms must be a positive number of milliseconds, got {value!r}")
            return Request(scope, 0.0, (metric, float(value)), mlr, round_to)
        if metric == "latency":
            frac = _check_fraction("target_latency", value, True, "the fraction of the dense model's measured "
                                   "latency to reach; give target_latency_ms for milliseconds")
            return Request(scope, 0.0, (metric, frac), mlr, round_to)
        frac = _check_fraction(f"target_{metric}", value, True, f"the fraction of the original {metric} kept")
        return Request(scope, 0.0, (metric, frac), mlr, round_to)
    return Request(scope, _check_ratio(ratio), None, mlr, round_to)


def check_ratios(model: nn.Module, ratios: Mapping[Any, Any] | None) -> dict[str, float]:
    if ratios is None:
        return {}
    if not isinstance(ratios, Mapping):
        raise TypeError(f"ratios must be a mapping {{module or name: ratio}}, got {type(ratios).__name__}")
    names = module_names(model, list(ratios), "ratios")
    return {n: _check_fraction(f"ratios[{n!r}]", v, False, "the fraction of that module's output "
                               "channels removed") for n, v in zip(names, ratios.values())}
