"""After-training workflows: prune a trained model, then win its accuracy back.

Three ways to spend a recovery budget (see ../shared/PRUNING_NOTES.md, *frequency* and *timing*):

- ``one_shot``: prune once to the final ratio, optionally re-estimate the BatchNorm statistics (no
  labels, seconds) and fine-tune;
- ``iterative``: prune a little, fine-tune, evaluate, repeat on a schedule (``surgeon.schedule``),
  stopping at an accuracy floor with the last model that was above it;
- ``slimming`` (Liu et al. 2017): train with an L1 penalty on the BatchNorm scales so unneeded
  channels' gammas go to zero, prune them globally by |gamma|, fine-tune.

Every workflow checks its arguments *before* anything touches the model (the plan arguments by
planning once, which only reads the model), evaluates the dense model when the trainer has test
data, verifies every surgery against the surgical-equivalence oracle, and returns an ``Outcome``
with one ``Step`` per prune.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Union

from torch import nn

from ..count import count
from ..plan import Plan, plan
from ..regularize import bn_l1_penalty, bn_l1_subgradient_, bn_scales
from ..schedule import fractions, prune_iteratively
from .loop import Trainer, check_count, check_floor, to_device
from .outcome import Outcome, Step
from .recalibrate import recalibrate_bn
from .reconstruct import reconstruct as refit_layers

__all__ = ["one_shot", "iterative", "slimming"]


# ------------------------------------------------------------------------------ shared helpers
def check_loaders(trainer: Trainer, needs_train: bool) -> None:
    """Refuse a missing or empty loader now, not after a surgery already changed the model.

    Loaders without a length (iterable datasets) cannot be checked without consuming them and
    are let through; the Trainer still refuses them when they yield nothing."""
    if not isinstance(trainer, Trainer):
        raise TypeError(f"trainer must be a surgeon.train.Trainer, got {type(trainer).__name__}")
    named = [("test", trainer.test)] + ([("train", trainer.train)] if needs_train else [])
    if needs_train and trainer.train is None:
        raise ValueError("this workflow trains (epochs > 0 or BatchNorm recalibration) but the Trainer "
                         "has no training data (train=None); pass a DataLoader of (inputs, target) batches")
    for which, loader in named:
        try:
            empty = loader is not None and len(loader) == 0  # type: ignore[arg-type]
        except TypeError:  # no __len__
            continue
        if empty:
            raise ValueError(f"the Trainer's {which} loader is empty (0 batches); check its dataset "
                             "is not empty and that drop_last does not drop the only batch")


def evaluate(trainer: Trainer, model: nn.Module) -> Optional[float]:
    """The trainer's metric on its test data, or None when it has none."""
    return trainer.evaluate(model) if trainer.test is not None else None


def measure(model: nn.Module, example_inputs: Any) -> tuple[int, int]:
    """(params, MACs) of ``model`` now (MACs for the batch in ``example_inputs``)."""
    c = count(model, example_inputs)
    return c.params, c.macs


def on_device(trainer: Trainer, model: nn.Module, example_inputs: Any) -> Any:
    """Move ``model`` to the trainer's device (as ``fit`` would) and return the example inputs
    there, so tracing and counting run where the model lives."""
    model.to(trainer.device)
    return to_device(example_inputs, trainer.device)


def _dense_notes(accuracy: Optional[float]) -> dict[str, Any]:
    return {} if accuracy is None else {"accuracy_dense": accuracy}


# -------------------------------------------------------------------------------------- one-shot
def one_shot(model: nn.Module, example_inputs: Any, trainer: Trainer, ratio: float, *, epochs: int = 0,
             recalibrate: Optional[int] = None, reconstruct: Optional[int] = None, criterion: Any = "l1",
             **plan_kwargs: Any) -> Outcome:
    """Prune ``model`` once to ``ratio`` (in place, verified), then recover.

    recalibrate: re-estimate the BatchNorm statistics on this many batches of ``trainer.train``
        before fine-tuning (the cheapest recovery: no labels, no gradient); None skips it.
    reconstruct: re-fit the consumers of removed channels by least squares on this many batches
        of ``trainer.train`` (``surgeon.train.reconstruct``: no labels, no gradient; keeps a copy
        of the dense model meanwhile); None skips it.
    epochs: fine-tuning epochs after the prune (0: none).
    plan_kwargs: any keyword of ``surgeon.plan`` (scope, ignore, round_to, target_macs...).
    """
    epochs = check_count("epochs", epochs)
    if recalibrate is not None:
        recalibrate = check_count("recalibrate (BatchNorm recalibration batches)", recalibrate, 1)
    if reconstruct is not None:
        reconstruct = check_count("reconstruct (reconstruction batches)", reconstruct, 1)
    check_loaders(trainer, needs_train=epochs > 0 or recalibrate is not None or reconstruct is not None)
    x = on_device(trainer, model, example_inputs)
    p = plan(model, x, ratio=ratio, criterion=criterion, **plan_kwargs)  # validates, reads only
    dense = evaluate(trainer, model)
    reference = copy.deepcopy(model) if reconstruct is not None else None
    p.apply(verify=True)
    pruned = evaluate(trainer, model)
    if reference is not None:
        assert trainer.train is not None  # check_loaders refused None
        refit_layers(model, reference, p.removed(), trainer.train, batches=reconstruct)
    if recalibrate is not None:
        assert trainer.train is not None  # check_loaders refused None
        recalibrate_bn(model, trainer.train, batches=recalibrate, device=trainer.device)
    trainer.fit(model, epochs, desc="fine-tune")
    accuracy = evaluate(trainer, model) if epochs or recalibrate is not None or reconstruct is not None else pruned
    params, macs = measure(model, x)
    step = Step(1, float(ratio), params, macs, pruned, accuracy, epochs)
    notes = _dense_notes(dense)
    if recalibrate is not None:
        notes["recalibrate_batches"] = recalibrate
    if reconstruct is not None:
        notes["reconstruct_batches"] = reconstruct
    return Outcome("one-shot", model, accuracy, epochs, [step], notes)


# ------------------------------------------------------------------------------------- iterative
class _BelowFloor(Exception):
    """Raised from the iterative callback to stop ``prune_iteratively`` after a step fell below
    the floor (it has no stop of its own; the workflow restores the kept model)."""


def split_epochs(epochs: int, steps: int) -> list[int]:
    """``epochs`` over ``steps`` as evenly as possible, the remainder to the last steps, where the
    final model is recovered: 7 over 3 -> [2, 2, 3]."""
    base, extra = divmod(epochs, steps)
    return [base + (1 if i >= steps - extra else 0) for i in range(steps)]


def restore_into(model: nn.Module, kept: nn.Module) -> None:
    """Make ``model`` compute exactly like ``kept``, a deep copy of it taken earlier, even though
    surgery has changed shapes since (``load_state_dict`` refuses other shapes).

    Every module object of ``model`` stays the same object (references the user holds, such as
    ``model.fc``, stay valid); each one takes over its counterpart's parameters, buffers and plain
    attributes (the size attributes surgery syncs: ``in_channels``, ``num_features``...). Its own
    hooks are kept, and the module tree is not touched: surgery never changes it."""
    mine, theirs = dict(model.named_modules()), dict(kept.named_modules())
    assert mine.keys() == theirs.keys(), "surgery changed the module tree; cannot restore by name"
    for name, m in mine.items():
        for key, value in vars(theirs[name]).items():
            if key != "_modules" and "hook" not in key:
                vars(m)[key] = value


def iterative(model: nn.Module, example_inputs: Any, trainer: Trainer, ratio: float, *, steps: int,
              epochs: int, schedule: Union[str, Callable[[float], float]] = "cubic",
              floor: Optional[float] = None, criterion: Any = "l1", **plan_kwargs: Any) -> Outcome:
    """Prune to ``ratio`` in ``steps`` steps, fine-tuning and evaluating after each.

    The amount after each step follows ``schedule`` ("cubic": Zhu & Gupta's big cuts first,
    "linear", or f(t) -> fraction) and is measured against the *original* model
    (``surgeon.schedule.prune_iteratively`` does the pruning). ``epochs`` is the whole fine-tuning
    budget, split over the steps (``split_epochs``).

    floor: an accuracy in [0, 1]. When a step's recovered accuracy falls below it, the run stops
        and ``model`` (the same object) is restored to the last model that was above it: the
        previous step's, or the dense model. ``outcome.notes["stopped"]`` says why. Needs test
        data; a floor above the dense model's accuracy is refused before anything is pruned.
        The last model above the floor is kept as a deep copy (one extra model in memory, on the
        model's device) and restored with ``restore_into``.
    """
    fracs = fractions(steps, schedule)  # validates steps and schedule
    epochs = check_count("epochs", epochs)
    floor = check_floor(floor)
    if floor is not None and trainer.test is None:
        raise ValueError("floor needs test data to evaluate each step; give the Trainer a test loader")
    check_loaders(trainer, needs_train=epochs > 0)
    x = on_device(trainer, model, example_inputs)
    if "baseline" in plan_kwargs:
        raise TypeError("baseline is set by the iterative schedule itself; do not pass it")
    plan(model, x, ratio=ratio, criterion=criterion, **plan_kwargs)  # validates the final amount
    dense = evaluate(trainer, model)
    if floor is not None and dense is not None and floor > dense:
        raise ValueError(f"floor {floor:.4f} is above the dense model's accuracy {dense:.4f}: no pruned "
                         "model can be kept; lower the floor below the dense accuracy")
    budget = split_epochs(epochs, steps)
    record: list[Step] = []
    kept = copy.deepcopy(model) if floor is not None else None

    def after_step(step: int, m: nn.Module, _: Plan) -> None:
        nonlocal kept
        pruned = evaluate(trainer, m)
        trainer.fit(m, budget[step - 1], desc=f"fine-tune {step}/{steps}")
        accuracy = evaluate(trainer, m) if budget[step - 1] else pruned
        params, macs = measure(m, x)
        record.append(Step(step, float(ratio) * fracs[step - 1], params, macs, pruned, accuracy,
                           budget[step - 1]))
        if floor is not None and accuracy is not None:
            if accuracy < floor:
                raise _BelowFloor()
            kept = copy.deepcopy(m)

    notes = _dense_notes(dense)
    try:
        prune_iteratively(model, x, ratio=ratio, criterion=criterion, steps=steps, schedule=schedule,
                          callback=after_step, verify=True, **plan_kwargs)
    except _BelowFloor:
        assert kept is not None
        last = record[-1]
        restore_into(model, kept)
        back = f"step {last.step - 1}'s model" if last.step > 1 else "the dense model"
        notes["stopped"] = (f"step {last.step} of {steps} recovered to accuracy {last.accuracy:.4f}, below "
                            f"the floor {floor:.4f}; restored {back}")
        notes["restored_step"] = last.step - 1
    accuracy = evaluate(trainer, model) if "stopped" in notes else (record[-1].accuracy if record else dense)
    return Outcome("iterative", model, accuracy, sum(s.epochs for s in record), record, notes)


# -------------------------------------------------------------------------------------- slimming
def slimming(model: nn.Module, example_inputs: Any, trainer: Trainer, ratio: float, *,
             sparsity_epochs: int, epochs: int, lam: float = 1e-4, scope: str = "global",
             **plan_kwargs: Any) -> Outcome:
    """Network slimming (Liu et al. 2017): sparsity training, then a prune by |gamma|, then fine-tune.

    sparsity_epochs: training epochs with lam * sign(gamma) added to every BatchNorm scale's
        gradient (the L1 penalty's subgradient, ``surgeon.regularize``): unneeded channels' gammas
        are driven to zero, so removing them costs little.
    ratio / scope: the fraction of channels removed, ranked by |gamma| across all layers
        ("global", the paper's choice: layers that need fewer channels lose more) or per layer.
    epochs: fine-tuning epochs after the prune.
    ``outcome.notes["mean_abs_gamma"]``: mean |gamma| after the sparsity training (how far the
    penalty pushed the scales down).
    """
    sparsity_epochs = check_count("sparsity_epochs", sparsity_epochs)
    epochs = check_count("epochs", epochs)
    if "criterion" in plan_kwargs:
        raise TypeError("slimming always prunes by the BatchNorm scales (criterion 'bn_scale'); use "
                        "one_shot or iterative for another criterion")
    bn_l1_penalty(model, lam)  # validates lam and that there are BatchNorm scales; reads only
    check_loaders(trainer, needs_train=sparsity_epochs + epochs > 0)
    x = on_device(trainer, model, example_inputs)
    plan(model, x, ratio=ratio, criterion="bn_scale", scope=scope, **plan_kwargs)  # validates
    dense = evaluate(trainer, model)
    trainer.fit(model, sparsity_epochs, after_backward=lambda m: bn_l1_subgradient_(m, lam),
                desc="sparsity")
    scales = bn_scales(model)
    mean_gamma = float(sum(float(g.detach().abs().sum()) for g in scales) / sum(g.numel() for g in scales))
    sparse = evaluate(trainer, model) if sparsity_epochs else dense
    plan(model, x, ratio=ratio, criterion="bn_scale", scope=scope, **plan_kwargs).apply(verify=True)
    pruned = evaluate(trainer, model)
    trainer.fit(model, epochs, desc="fine-tune")
    accuracy = evaluate(trainer, model) if epochs else pruned
    params, macs = measure(model, x)
    notes = _dense_notes(dense)
    notes["mean_abs_gamma"] = mean_gamma
    if sparse is not None:
        notes["accuracy_sparse"] = sparse
    return Outcome("slimming", model, accuracy, sparsity_epochs + epochs,
                   [Step(1, float(ratio), params, macs, pruned, accuracy, epochs)], notes)
