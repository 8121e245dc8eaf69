"""Soft Filter Pruning (He et al. 2018): prune *during* training, and let pruned filters recover.

At every epoch end the filters with the lowest norm are chosen on the current weights and zeroed,
but they stay in the model and stay trainable: the next epoch's gradients may bring them back, and
the next step may choose others. Hard pruning commits to its first choice; soft pruning keeps the
model's full capacity while it trains and lets the choice settle. At the end the last step's
channels are removed physically (``finalize``).

Why the removal at the end is exact: a step zeroes what each pruned channel's layers contribute
(``LayerSpec.zero_outputs``: the filter and its bias, BatchNorm's gamma and beta), so the
channel carries exactly 0 into its consumers, which is what removing it means. Where a layer cannot
be silenced that way (a GroupNorm, a sigmoid gate: sigmoid(0) = 0.5), ``finalize`` also zeroes the
consumers' input slices exactly as the surgical-equivalence oracle does (``verify.zeroed_reference``),
so the soft model *is* the oracle's reference and the surgery reproduces it; the output change that
this last zeroing caused is recorded (0 for conv-BN networks).

Distributed (DDP): rank 0 makes the decision and broadcasts it as data (``Plan.to_dict()``); every
rank rebuilds the same plan with ``surgeon.load_plan`` and zeroes the same entries, so the replicas
stay identical. Give the pruner the wrapped module (``ddp.module``), not the DDP wrapper.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..plan import Plan, plan
from ..plan import load_plan
from ..planfile import trace_options
from ..record import flatten_tensors
from ..registry import layer_spec
from ..capture import as_example_inputs, eval_mode
from ..verify import max_abs_diff, zeroed_reference
from .distributed import broadcast_object, is_distributed
from .loop import Trainer, to_device
from .outcome import Outcome, Step
from .workflows import check_count, check_loaders, evaluate, measure, on_device

__all__ = ["SoftFilterPruner", "soft_filter_pruning"]



class SoftFilterPruner:
    """Soft-prunes ``model`` in place: ``step()`` at each epoch end, ``finalize()`` once at the end.

    ratio, criterion, plan_kwargs: as ``surgeon.plan`` (default criterion "l2", the paper's).
    Every step plans on the full-size model, so ``ratio`` is always of the original channels.
    The arguments are checked here, by planning once (which only reads the model).

    Call ``step()`` inside one ``Trainer.fit`` (``on_epoch_end``), as ``soft_filter_pruning``
    does, not between fits: the optimizer's state must survive the step. A zeroed channel feeding
    a ReLU sits at exactly 0, where relu'(0) = 0 passes no gradient back, so what moves its filter
    off zero again is the momentum (or Adam moment) accumulated before the step; a fresh optimizer
    would leave conv-BN-ReLU channels zeroed for good. Then a channel grows back only as fast as its
    BatchNorm gamma is learned (see ``layers._zero_norm_outputs`` for why gamma is zeroed too).

    After ``step()``: ``plan`` is the step's Plan (not applied), ``changed`` lists for every step
    how many chosen channels were not chosen by the step before (the choice moving while zeroed
    filters recover). After ``finalize()``: ``final_change`` is the max output change (on the
    example inputs) that finalize's zeroing caused.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, ratio: float, criterion: Any = "l2",
                 **plan_kwargs: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError("pass the wrapped module (ddp.module) to SoftFilterPruner, not the "
                            "DistributedDataParallel wrapper: plans name the module's own layers")
        self.model = model
        self.example_inputs = example_inputs
        self.ratio = ratio
        self.criterion = criterion
        self.plan_kwargs = plan_kwargs
        self.plan: Optional[Plan] = None
        self.changed: list[int] = []
        self.final_change: Optional[float] = None
        self._decision: Optional[dict[str, Any]] = None
        self._chosen: set[tuple[str, int]] = set()
        self._final = False
        plan(model, self._inputs(), ratio=ratio, criterion=criterion, **plan_kwargs)  # validates

    def _inputs(self) -> Any:
        """The example inputs on the model's device (the Trainer may have moved the model)."""
        device = next((p.device for p in self.model.parameters()), None)
        return self.example_inputs if device is None else to_device(self.example_inputs, device)

    def _load(self, decision: dict[str, Any]) -> Plan:
        return load_plan(self.model, self._inputs(), decision, **trace_options(self.plan_kwargs))

    def _zero_outputs(self, removed: dict[str, dict[str, list[int]]]) -> None:
        for name, cut in removed.items():
            m = self.model.get_submodule(name) if name else self.model
            spec = layer_spec(m)
            if spec is not None and spec.zero_outputs is not None and cut["out"]:
                spec.zero_outputs(m, cut["out"])

    def step(self) -> Plan:
        """Choose the lowest-scoring channels on the current weights and zero them softly (they
        stay trainable). Decided on rank 0 and broadcast, so every DDP rank zeroes the same ones.
        Returns the step's plan (not applied)."""
        if self._final:
            raise ValueError("finalize() already removed the channels physically; make a new "
                             "SoftFilterPruner to soft-prune the smaller model")
        mine, error = None, None
        if not is_distributed() or dist.get_rank() == 0:
            try:
                mine = plan(self.model, self._inputs(), ratio=self.ratio, criterion=self.criterion,
                            **self.plan_kwargs).to_dict()
            except Exception as e:  # sent along, so that no other rank waits for a decision forever
                error = e
        why = None if error is None else f"{type(error).__name__}: {error}"
        decision, failed = broadcast_object((mine, why))
        if error is not None:
            raise error
        if failed is not None:
            raise RuntimeError("rank 0, which decides for every rank, could not plan the soft-pruning "
                               f"step: {failed}")
        p = self._load(decision)  # every rank, rank 0 included: one code path for all
        self._zero_outputs(p.removed())
        chosen = {(min(q.ref for q in cut.group.params), int(c)) for cut in p.cuts for c in cut.remove}
        self.changed.append(len(chosen - self._chosen))
        self._chosen, self._decision, self.plan = chosen, decision, p
        return p

    @torch.no_grad()
    def _outputs(self) -> list[torch.Tensor]:
        with eval_mode(self.model):
            return [t.clone() for t in flatten_tensors(as_example_inputs(self._inputs()).call(self.model))]

    def finalize(self, verify: bool = True) -> Plan:
        """Physically remove the last step's channels (in place) and return the applied plan.

        First the chosen channels are zeroed again (a no-op right after ``step()``; it re-silences
        them if the model trained since) and their consumers' input slices are zeroed as the oracle
        does, so the surgery is exact: the pruned model computes what the soft model computes.
        ``final_change`` records how much that zeroing moved the outputs. ``verify``: check the
        surgery against the oracle (``Plan.apply(verify=True)``)."""
        if self._final:
            raise ValueError("finalize() was already called; the model is physically pruned")
        if self._decision is None:
            raise ValueError("no soft-pruning step yet: call step() (e.g. at each epoch end) before "
                             "finalize()")
        before = self._outputs()
        p = self._load(self._decision)  # traced afresh: the model may have moved since the step
        removed = p.removed()
        self._zero_outputs(removed)
        reference = zeroed_reference(self.model, removed)  # the consumers' slices, as the oracle zeroes them
        self.model.load_state_dict(reference.state_dict())
        del reference
        self.final_change = max_abs_diff(before, self._outputs())
        p.apply(verify=verify)
        self._final, self.plan = True, p
        return p


def soft_filter_pruning(model: nn.Module, example_inputs: Any, trainer: Trainer, ratio: float, *,
                        epochs: int, criterion: Any = "l2", **plan_kwargs: Any) -> Outcome:
    """Train ``model`` for ``epochs`` epochs, soft-pruning ``ratio`` of its channels at every epoch
    end, then remove them physically (exactly: see ``SoftFilterPruner.finalize``) and evaluate.

    Works from scratch or from a trained model. ``outcome.notes``: ``final_zeroing_change`` (the
    max output change finalize's zeroing caused; 0 for conv-BN nets), ``changed`` (per epoch, how
    many chosen channels differ from the epoch before) and ``accuracy_dense`` (before training).
    """
    epochs = check_count("epochs", epochs, 1)
    check_loaders(trainer, needs_train=True)
    x = on_device(trainer, model, example_inputs)
    pruner = SoftFilterPruner(model, x, ratio, criterion, **plan_kwargs)
    dense = evaluate(trainer, model)
    trainer.fit(model, epochs, on_epoch_end=lambda epoch, m: pruner.step(), desc="soft-prune")
    pruner.finalize(verify=True)
    accuracy = evaluate(trainer, model)
    params, macs = measure(model, x)
    notes: dict[str, Any] = {"final_zeroing_change": pruner.final_change, "changed": list(pruner.changed)}
    if dense is not None:
        notes["accuracy_dense"] = dense
    return Outcome("soft-filter", model, accuracy, epochs,
                   [Step(1, float(ratio), params, macs, accuracy, accuracy, epochs)], notes)
