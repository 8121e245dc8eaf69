"""``surgeon.prune``: plan and apply in one shot, or reach the ratio / target in ``steps`` prunes
(iterative pruning).

Pruning a little, fine-tuning, and pruning again is less sensitive to noisy scores than one big
cut: each step re-traces and re-scores the current, already smaller (and fine-tuned) model. A
schedule says what fraction of the final amount is reached after each step, as a function of the
progress t = step / steps:

- ``linear``: f(t) = t, equal steps;
- ``cubic`` (Zhu & Gupta 2017, "To prune, or not to prune"): s_t = s_f + (s_i - s_f)(1 - t)^3
  with s_i = 0, i.e. f(t) = 1 - (1 - t)^3: big cuts first, while there are many redundant
  channels, and small ones near the end, when each channel matters more.

The amount is always measured against the *original* model (``plan.Baseline``): with ratio 0.5 and
3 linear steps, the steps remove 1/6, 1/3 and 1/2 of every group's original channels, so the last
step ends exactly where the one-shot prune would. Targets work the same way: target_macs 0.4 in two
linear steps keeps 70% then 40% of the original MACs.
"""
from __future__ import annotations

from typing import Any, Callable, Union

from torch import nn

from .criteria import Criterion
from .plan import Baseline, Plan, plan
from .request import DEFAULT_RATIO, check_ratios, check_request

__all__ = ["SCHEDULES", "fractions", "prune", "prune_iteratively"]

SCHEDULES: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "cubic": lambda t: 1.0 - (1.0 - t) ** 3,
}


def fractions(steps: int, schedule: Union[str, Callable[[float], float]] = "linear") -> list[float]:
    """Fraction of the final amount reached after each of ``steps`` steps (the last is 1).

    linear, 4 steps: [0.25, 0.5, 0.75, 1.0]; cubic, 4 steps: [0.578, 0.875, 0.984, 1.0]."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer (the number of prunes), got {steps!r}")
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of "
                             f"{', '.join(map(repr, SCHEDULES))} or pass a function f(t) -> fraction")
        fn = SCHEDULES[schedule]
    elif callable(schedule):
        fn = schedule
    else:
        raise TypeError(f"schedule must be a name or a function f(t) -> fraction, got {type(schedule).__name__}")
    fracs = [float(fn(i / steps)) for i in range(1, steps + 1)]
    if abs(fracs[-1] - 1.0) > 1e-9 or any(not 0.0 <= f <= 1.0 for f in fracs) or any(
            b < a - 1e-12 for a, b in zip(fracs, fracs[1:])):
        raise ValueError(f"schedule must rise from 0 to 1 (f(1) = 1, never decreasing), got {fracs}")
    fracs[-1] = 1.0
    return fracs


def prune_iteratively(model: nn.Module, example_inputs: Any, ratio: float = DEFAULT_RATIO,
                      criterion: Any = "l1", *, steps: int = 1,
                      schedule: Union[str, Callable[[float], float]] = "linear",
                      callback: Callable[[int, nn.Module, Plan], None] | None = None,
                      verify: bool = False, **kwargs: Any) -> list[Plan]:
    """Prune ``model`` in place in ``steps`` steps and return the applied plans, one per step.

    Every keyword of ``surgeon.plan`` is accepted. ``callback(step, model, plan)`` runs after each
    step (step = 1 .. steps), e.g. to fine-tune; the next step scores the model it leaves."""
    fracs = fractions(steps, schedule)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (step, model, plan) -> None, got {type(callback).__name__}")
    target = {k: kwargs.pop(k) for k in ("target_macs", "target_params", "target_latency", "target_latency_ms")
              if kwargs.get(k) is not None}
    ratios = kwargs.pop("ratios", None)
    if "baseline" in kwargs:
        raise TypeError("baseline is set by prune_iteratively itself; do not pass it")
    # validate the final amounts now: a bad value must fail before the first step changes the model
    check_request(ratio, kwargs.get("scope", "local"), kwargs.get("round_to"), kwargs.get("max_layer_ratio"),
             target.get("target_macs"), target.get("target_params"), target.get("target_latency"),
             target.get("target_latency_ms"))
    if steps > 1 and "target_latency_ms" in target:
        raise ValueError("target_latency_ms needs steps=1: the steps' goals are fractions of the original "
                         "latency, known only once measured; give target_latency (a fraction) for steps > 1")
    check_ratios(model, ratios)
    data = kwargs.get("data")
    if steps > 1 and data is not None and iter(data) is data:
        raise ValueError("data is an iterator, used up by the first step; pass a list or a DataLoader "
                         "so that every step can score with it")
    plans: list[Plan] = []
    baseline: Baseline | None = None
    dense_ms: float | None = None  # the original model's latency, for latency targets after step 1
    for step, f in enumerate(fracs, 1):
        step_kwargs = dict(kwargs)
        if target:  # the kept fraction falls from 1 to the target: 1 - (1 - target) * f
            step_kwargs.update({k: 1.0 - (1.0 - v) * f for k, v in target.items()})
            if dense_ms is not None and "target_latency" in step_kwargs:  # of the original, not this model
                step_kwargs["target_latency_ms"] = step_kwargs.pop("target_latency") * dense_ms
        else:
            step_kwargs["ratio"] = ratio * f
        if ratios is not None:
            step_kwargs["ratios"] = {m: r * f for m, r in ratios.items()}
        p = plan(model, example_inputs, criterion=criterion, baseline=baseline, **step_kwargs)
        if baseline is None:
            assert p.before is not None
            baseline = Baseline({pos: p.graph.size(pos) for pos in p.graph.nx.nodes if pos.kind == "p"}, p.before)
        if dense_ms is None and "target_latency" in target:
            dense_ms = p.target.dense_ms  # type: ignore[union-attr]
        p.apply(verify=verify)
        plans.append(p)
        if callback is not None:
            callback(step, model, p)
    return plans


def prune(model: nn.Module, example_inputs: Any, ratio: float = DEFAULT_RATIO,
          criterion: Union[str, Criterion] = "l1", *, steps: int = 1,
          schedule: Union[str, Callable[[float], float]] = "linear",
          callback: Callable[[int, nn.Module, Plan], None] | None = None,
          verify: bool = False, **kwargs: Any) -> nn.Module:
    """Prune ``model`` in place and return it: ``plan(...)`` then ``apply()``, in one shot, or in
    ``steps`` prunes that reach the ratio / target on a ``schedule`` ("linear", "cubic" or a
    function), re-scoring the smaller model each time and calling ``callback(step, model, plan)``
    after each step (to fine-tune). See ``surgeon.schedule``."""
    if type(steps) is int and steps == 1 and callback is None:
        return plan(model, example_inputs, ratio=ratio, criterion=criterion, **kwargs).apply(verify=verify)
    prune_iteratively(model, example_inputs, ratio=ratio, criterion=criterion, steps=steps,
                      schedule=schedule, callback=callback, verify=verify, **kwargs)
    return model
