"""The lottery ticket procedure (Frankle & Carbin 2019), structured or unstructured.

The hypothesis: a dense, randomly initialised network contains a subnetwork that, trained alone
*from the same initial values*, matches the dense network. It is found by: record the initial
weights -> train -> prune by magnitude -> rewind the survivors to their recorded values -> retrain.
Rewinding to the very first weights works for small networks; for deeper ones Frankle et al. 2020
("Linear mode connectivity and the lottery ticket hypothesis") rewind to the weights after k
optimizer steps ("late rewinding", ``rewind=k``).

Two flavours:

- ``structured=True``: whole channels go (``surgeon.plan`` on the trained model). The decision is
  taken as data (``Plan.to_dict()``) and re-applied with ``surgeon.load_plan`` to the model after
  its recorded state was loaded back, so the ticket is a dense, physically smaller model whose
  every surviving entry (weights, biases, BatchNorm running statistics, ``num_batches_tracked``)
  equals the recorded value exactly. That is checked after the surgery.
- ``structured=False``: single weights go (``surgeon.mask``, element granularity, global
  magnitude over every conv / linear weight by default), the original formulation. The masks stay
  on during retraining, so pruned weights stay zero; the survivors are rewound.

Compare the outcome with ``surgeon.train.init.reinit_control`` on the same ticket: if a random
re-initialisation of the same structure trains as well, the initial values were not the point
(Liu et al. 2019 found this for structured pruning).
"""
from __future__ import annotations

from typing import Any, Mapping, Union

import numpy as np
import torch
from torch import nn

from ..cost import Footprint
from ..indexmap import Pos
from ..mask import mask, remove_masks, sparsity
from ..plan import plan
from ..plan import load_plan
from ..planfile import trace_options
from .init import copy_model, is_masked, kept_parameters, masked_tensors, refresh_masked
from .loop import Trainer
from .outcome import Outcome, Step
from .workflows import check_count, check_loaders, evaluate, measure, on_device

__all__ = ["lottery_ticket", "REWIND_INIT"]

REWIND_INIT = "init"
_MASK_KWARGS = ("modules",)  # what the unstructured flavour passes on to surgeon.mask

State = dict[str, torch.Tensor]


def _snapshot(model: nn.Module) -> State:
    """Every parameter and persistent buffer of ``model``, copied (not views of the live tensors)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Recorder:
    """The trainer's ``after_step`` hook: counts optimizer steps and snapshots the model after step k."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.steps = 0
        self.state: State | None = None

    def __call__(self, model: nn.Module) -> None:
        self.steps += 1
        if self.steps == self.k:
            self.state = _snapshot(model)


def _check_rewind(rewind: Any) -> int:
    """The optimizer step to rewind to: 0 for the initial weights."""
    if rewind == REWIND_INIT and isinstance(rewind, str):
        return 0
    if isinstance(rewind, bool) or not isinstance(rewind, int) or rewind < 0:
        raise ValueError(f"rewind must be {REWIND_INIT!r} or a non-negative number of optimizer steps "
                         f"(late rewinding), got {rewind!r}")
    return rewind


def _check_supplied(model: nn.Module, state: Mapping[str, Any]) -> State:
    """A caller-recorded state to rewind to: same keys and shapes as ``model``'s own."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"rewind state does not fit {type(model).__name__}: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}; record it with model.state_dict() before training")
    bad = [k for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"rewind state has other shapes than {type(model).__name__}: {bad[0]} is "
                         f"{tuple(state[bad[0]].shape)} there, {tuple(own[bad[0]].shape)} here")
    return {k: v.detach().clone() for k, v in state.items()}


def _steps_per_epoch(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:  # an iterable without a length: checked after training instead
        return None


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be a number in [0, 1) (the fraction of weights masked), got {ratio!r}")
    return float(ratio)


def _kept(size: int, removed: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.setdiff1d(np.arange(size), removed), dtype=torch.long)


def _check_rewound(model: nn.Module, recorded: State, removed: Mapping[Pos, np.ndarray]) -> None:
    """Post-condition of the structured rewind: every tensor of the pruned model equals its
    recorded tensor indexed by the kept entries along each cut dim, exactly."""
    live = dict(model.named_parameters())
    live.update(model.named_buffers())
    for name, tensor in live.items():
        if name not in recorded:  # a non-persistent buffer: not part of the recorded state
            continue
        want = recorded[name]
        for dim in range(want.dim()):
            idx = removed.get(Pos("p", name, dim))
            if idx is not None and len(idx):
                want = want.index_select(dim, _kept(want.shape[dim], idx).to(want.device))
        if want.shape != tensor.shape or not torch.equal(want.to(tensor.device), tensor.detach()):
            raise AssertionError(f"rewinding failed: {name} of the pruned model ({tuple(tensor.shape)}) is not "
                                 f"its recorded value at the kept indices ({tuple(want.shape)})")


def _rewind_masked(model: nn.Module, recorded: State) -> None:
    """Load ``recorded`` (the unmasked model's state) into the masked model: ``name_orig`` gets
    ``name``'s recorded value, masks stay, everything else is loaded as it was."""
    masked = {f"{mn}.{tn}" if mn else tn for mn, m in model.named_modules() for tn, _ in masked_tensors(m)}
    state = model.state_dict()
    new = {}
    for key, value in state.items():
        if key.endswith("_mask") and key[:-5] in masked:
            new[key] = value
        elif key.endswith("_orig") and key[:-5] in masked:
            new[key] = recorded[key[:-5]]
        else:
            new[key] = recorded[key]
    model.load_state_dict(new)
    refresh_masked(model)
    for name in masked:  # post-condition: survivors hold their recorded values, the rest zero
        owner, _, tn = name.rpartition(".")
        m = model.get_submodule(owner)
        keep = getattr(m, tn + "_mask")
        want = recorded[name].to(keep.device) * keep
        if not torch.equal(getattr(m, tn).detach(), want):
            raise AssertionError(f"rewinding failed: the survivors of {name} are not their recorded values")


def _restore(model: nn.Module, initial: State) -> None:
    """Back to the state the caller passed in (after a failure before the ticket was built)."""
    if is_masked(model):
        remove_masks(model)
    model.load_state_dict(initial)


def _split_kwargs(structured: bool, plan_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    if structured:
        return plan_kwargs, trace_options(plan_kwargs)
    wrong = sorted(set(plan_kwargs) - set(_MASK_KWARGS))
    if wrong:
        raise TypeError(f"structured=False masks single weights with surgeon.mask, which takes "
                        f"{', '.join(_MASK_KWARGS)}; got {', '.join(wrong)} (options of surgeon.plan: "
                        "use structured=True for those)")
    return plan_kwargs, {}


def lottery_ticket(model: nn.Module, example_inputs: Any, trainer: Trainer, ratio: float, *,
                   epochs: int, retrain_epochs: int | None = None,
                   rewind: Union[str, int, Mapping[str, torch.Tensor]] = REWIND_INIT,
                   structured: bool = True, criterion: Any = "l1", scope: str = "global",
                   **plan_kwargs: Any) -> Outcome:
    """Find a winning ticket of ``model``: train it ``epochs`` epochs, prune ``ratio`` of it by
    magnitude, rewind the survivors, retrain ``retrain_epochs`` (default ``epochs``) epochs.

    The outcome's model is the caller's ``model`` object, in place, in both flavours: it ends as
    the retrained ticket (physically pruned when ``structured``, masked otherwise; call
    ``surgeon.remove_masks`` to make masks permanent). The dense trained weights are not kept:
    copy the model first if you need them; ``notes["accuracy_dense"]`` has their accuracy.

    rewind: ``"init"`` (Frankle & Carbin 2019) or k, the number of optimizer steps after which the
        weights are recorded (late rewinding, Frankle et al. 2020; 0 is the init). Only weights and
        buffers rewind: the retraining builds a fresh optimizer and restarts the LR schedule from
        its beginning (the trainer's factories), where the paper resumes the schedule at step k.
        Or a state_dict the caller recorded earlier (``{k: v.clone() for k, v in
        model.state_dict().items()}`` before training): then ``model`` may come already trained
        (``epochs=0``), e.g. to draw tickets at several ratios from one dense run.
    structured: channels (``surgeon.plan``) or single weights (``surgeon.mask``).
    criterion: magnitude: "l1" (default) or "l2"; structured also takes any ``surgeon.plan``
        criterion. scope: "global" by default (one ranking across layers, as Frankle & Carbin do
        for their deeper networks); "local" cuts the same fraction of every layer.
    plan_kwargs: more ``surgeon.plan`` options when structured (``ignore``, ``round_to``,
        ``max_layer_ratio``, ``target_macs``...); ``modules`` of ``surgeon.mask`` otherwise.

    Every argument is checked before training, with a dry run of the prune on the untrained model;
    if anything fails before the ticket is built (e.g. ``rewind`` past the steps an unsized loader
    gave), the model gets its initial state back. Outcome.epochs counts search and retraining;
    the step's ``epochs`` only the retraining, ``accuracy_pruned`` is the rewound ticket's before
    retraining. For the unstructured flavour the step's ``params`` counts unmasked weights and its
    ``macs`` are the dense model's: masks do not make dense kernels faster.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    epochs = check_count("epochs", epochs)
    retrain = epochs if retrain_epochs is None else check_count("retrain_epochs", retrain_epochs)
    supplied = _check_supplied(model, rewind) if isinstance(rewind, Mapping) else None
    k = 0 if supplied is not None else _check_rewind(rewind)
    if not isinstance(structured, bool):
        raise TypeError(f"structured must be True or False, got {structured!r}")
    check_loaders(trainer, needs_train=epochs + retrain > 0)
    per_epoch = _steps_per_epoch(trainer.train)
    if k and per_epoch is not None and k > epochs * per_epoch:
        raise ValueError(f"rewind={k} is past the end of the search training: {epochs} epoch(s) of "
                         f"{per_epoch} steps is {epochs * per_epoch} optimizer steps; rewind to at most that "
                         "(Frankle et al. 2020 use a small fraction of training)")
    if is_masked(model):
        raise ValueError(f"{type(model).__name__} already carries torch.nn.utils.prune masks; a lottery "
                         "ticket starts from a dense model: call surgeon.remove_masks(model) first")
    options, trace_kwargs = _split_kwargs(structured, plan_kwargs)
    x = on_device(trainer, model, example_inputs)
    initial = _snapshot(model)

    # Dry run: every option checked on the untrained model, nothing changed (plan only reads).
    if structured:
        before = plan(model, x, ratio=ratio, criterion=criterion, scope=scope, **options).before
    else:
        _check_ratio(ratio)
        mask(copy_model(model), ratio, "element", criterion, scope, **options)
        dense_params, dense_macs = measure(model, x)
        before = Footprint(dense_macs, dense_params)
    recorder = _Recorder(k)
    try:
        trainer.fit(model, epochs, after_step=recorder if k else None, desc="lottery: search")
        recorded = supplied if supplied is not None else initial if k == 0 else recorder.state
        if recorded is None:
            raise ValueError(f"rewind={k} is past the end of the search training, which took "
                             f"{recorder.steps} optimizer steps; rewind to at most {recorder.steps}. "
                             "The model is back at its initial state")
        dense = evaluate(trainer, model)
        if structured:
            found = plan(model, x, ratio=ratio, criterion=criterion, scope=scope, **options)
            model.load_state_dict(recorded)  # rewind the dense model, then cut the same channels
            ticket = load_plan(model, x, found.to_dict(), **trace_kwargs)
            ticket.apply(verify=True)  # atomic: on failure the model is back at `recorded`
        else:
            mask(model, ratio, "element", criterion, scope, **options)
            _rewind_masked(model, recorded)
    except BaseException:
        _restore(model, initial)
        raise

    notes: dict[str, Any] = {"rewind": "given state" if supplied is not None else rewind, "structured": structured, "search_epochs": epochs,
                             "retrain_epochs": retrain, "accuracy_dense": dense, "before": before}
    if structured:
        _check_rewound(model, recorded, ticket.removed_positions())
        notes["plan"] = ticket.to_dict()  # what was applied (after any group kept whole on apply)
        notes["removed"] = ticket.removed()
        params, macs = measure(model, x)
    else:
        notes["sparsity"] = sparsity(model)
        params, macs = kept_parameters(model), before.macs  # masks do not change the dense MACs
    pruned = evaluate(trainer, model)
    trainer.fit(model, retrain, desc="lottery: retrain")
    accuracy = evaluate(trainer, model) if retrain else pruned
    step = Step(1, float(ratio), params, macs, pruned, accuracy, retrain)
    return Outcome("lottery", model, accuracy, epochs + retrain, [step], notes)
