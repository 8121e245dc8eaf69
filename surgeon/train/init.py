"""Pruning before training, and the control every pruning result needs: a fresh random init.

Two questions from the literature (see ../shared/PRUNING_NOTES.md, *timing*):

- Does a pruned *architecture* train as well from scratch as the pruned *weights* fine-tuned?
  Liu et al. 2019 ("Rethinking the value of network pruning") found that for structured pruning it
  often does: the structure, not the surviving values, carries the result. ``reinit_control``
  runs that control: the same pruned model, re-initialised (``reinitialize``) and trained as long.
- How far does pruning with no information at all get? ``random_at_init`` removes random channels
  of an untrained model and trains what is left: the floor any criterion must beat.

The lottery ticket procedure, the opposite claim (the surviving *initial values* matter), lives in
``lottery``; comparing its outcome with ``reinit_control`` of the same ticket is the experiment.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..criteria import random as random_scores
from ..mask import sparsity
from ..plan import plan
from .loop import Trainer, split_batch
from .outcome import Outcome, Step
from .workflows import check_count, check_loaders, evaluate, measure, on_device

__all__ = ["reinitialize", "random_at_init", "reinit_control"]


# ----------------------------------------------------------------------------- shared helpers
def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    return seed


def masked_tensors(module: nn.Module) -> Iterator[tuple[str, Any]]:
    """(tensor name, pruning method) of every ``torch.nn.utils.prune`` mask on ``module`` itself."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod):
            yield hook._tensor_name, hook


def is_masked(model: nn.Module) -> bool:
    return any(True for m in model.modules() for _ in masked_tensors(m))


def kept_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` that are not masked out: a masked layer still stores the dense
    ``weight_orig``, but its zeroed entries are not part of the (sparse) model."""
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        for name, _ in masked_tensors(m):
            total -= int((getattr(m, name + "_mask") == 0).sum())
    return total


@torch.no_grad()
def refresh_masked(model: nn.Module, grad: bool = True) -> None:
    """Recompute every masked tensor ``weight = weight_orig * weight_mask`` now, as the forward
    pre-hook would. With ``grad=False`` the result is a plain leaf tensor, which ``copy.deepcopy``
    accepts (the hook's own result, part of the autograd graph, makes deepcopy fail)."""
    with torch.set_grad_enabled(grad):
        for m in model.modules():
            for name, hook in masked_tensors(m):
                setattr(m, name, hook.apply_mask(m))


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy, also of a model masked with ``torch.nn.utils.prune`` (see ``refresh_masked``)."""
    if not is_masked(model):
        return copy.deepcopy(model)
    refresh_masked(model, grad=False)
    try:
        twin = copy.deepcopy(model)
    finally:
        refresh_masked(model)
    refresh_masked(twin)
    return twin


def first_sample(data: Any) -> Any:
    """The inputs of the first sample of the first batch of ``data`` (batch dim kept, size 1)."""
    for batch in data:
        inputs, _ = split_batch(batch)
        if isinstance(inputs, torch.Tensor):
            return inputs[:1]
        if isinstance(inputs, (tuple, list)):
            return tuple(t[:1] if isinstance(t, torch.Tensor) else t for t in inputs)
        if isinstance(inputs, dict):
            return {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return inputs
    raise ValueError("the loader yielded no batches; check the dataset is not empty")


# ----------------------------------------------------------------------------- reinitialize
def _uninitialisable(model: nn.Module) -> list[str]:
    """Modules that own parameters but cannot re-initialise them."""
    return [f"{name or '<root>'} ({type(m).__name__})" for name, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False))
            and not callable(getattr(m, "reset_parameters", None))]


@torch.no_grad()
def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Give ``model`` a fresh random initialisation of its current (possibly pruned) architecture,
    in place, and return it.

    Every submodule's own ``reset_parameters()`` runs (the layer's default init, which reads the
    *current* sizes: a pruned conv re-initialises with its smaller fan-in), and every norm's
    ``reset_running_stats()``, in ``model.modules()`` order, under a generator seeded with
    ``seed``: the same seed and architecture give the same weights on the same device, and the
    caller's global random state is left as it was. Layers masked with ``torch.nn.utils.prune``
    keep their masks: the fresh values go to ``weight_orig`` and masked entries stay zero.

    Raises TypeError, before anything changes, naming every module that owns parameters but has no
    ``reset_parameters`` (e.g. ``nn.MultiheadAttention``, or a custom layer): give it one. If a
    ``reset_parameters`` raises, the model is restored exactly.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seed = check_seed(seed)
    bad = _uninitialisable(model)
    if bad:
        raise TypeError(f"cannot re-initialise {len(bad)} module(s) that hold parameters but have no "
                        f"reset_parameters(): {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}; "
                        "give them a reset_parameters() method (or rebuild the model from its constructor)")
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cuda = sorted({t.device.index or 0 for t in [*model.parameters(), *model.buffers()] if t.is_cuda})
    refresh_masked(model, grad=False)  # reset_parameters writes into the masked `weight` tensor
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for i in cuda:
                torch.cuda.default_generators[i].manual_seed(seed)
            for m in model.modules():
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    m.reset_running_stats()
                for name, _ in masked_tensors(m):
                    getattr(m, name + "_orig").copy_(getattr(m, name))
    except BaseException:
        model.load_state_dict(backup)
        raise
    finally:
        refresh_masked(model)
    return model


# ----------------------------------------------------------------------------- workflows
def random_at_init(model: nn.Module, example_inputs: Any, trainer: Trainer, ratio: float, *,
                   epochs: int, seed: int = 0, **plan_kwargs: Any) -> Outcome:
    """Prune random channels of an untrained ``model`` (structured, criterion "random"), then
    train what is left for ``epochs`` epochs: the no-information baseline of pruning before
    training. ``model`` is pruned and trained in place; the outcome's model is that same object.

    seed: which channels go (``surgeon.criteria.random``); training randomness is the trainer's
        and the global generator's, as for any fit. plan_kwargs: ``surgeon.plan``'s options
        (``scope``, ``ignore``, ``round_to``, ``target_macs``...), except ``criterion``.
    Everything is checked before the model changes (the model is moved to the trainer's device
    first, as every workflow does).
    """
    epochs = check_count("epochs", epochs)
    seed = check_seed(seed)
    if "criterion" in plan_kwargs:
        raise TypeError("random_at_init always prunes with the 'random' criterion; for another "
                        "criterion use one_shot (or lottery_ticket for magnitude after training)")
    check_loaders(trainer, needs_train=epochs > 0)
    x = on_device(trainer, model, example_inputs)
    found = plan(model, x, ratio=ratio, criterion=functools.partial(random_scores, seed=seed),
                 **plan_kwargs)  # validates every option before anything changes
    found.apply(verify=True)
    pruned = evaluate(trainer, model)
    trainer.fit(model, epochs, desc="random-init: train")
    accuracy = evaluate(trainer, model) if epochs else pruned
    params, macs = measure(model, x)
    step = Step(1, float(ratio), params, macs, pruned, accuracy, epochs)
    return Outcome("random-init", model, accuracy, epochs, [step],
                   {"seed": seed, "before": found.before, "removed": found.removed()})


def reinit_control(pruned_model: nn.Module, trainer: Trainer, *, epochs: int, seed: int,
                   example_inputs: Any = None, ratio: float | None = None) -> Outcome:
    """Liu et al. 2019's control: the same pruned architecture, re-initialised (``reinitialize``)
    and trained for ``epochs`` epochs (give it as many as the method it is compared with spent).

    The outcome's model is a NEW object (a copy): ``pruned_model`` is left untouched, so the
    ticket or fine-tuned model being judged stays available next to its control. Masked models
    (``surgeon.mask``, unstructured lottery tickets) keep their masks: survivors get fresh values,
    and the step's ``params`` counts the unmasked weights.

    example_inputs: for the MACs of the outcome's step; default one sample of the trainer's test
        data. ratio: only reported in the step (the pruned model does not know it was pruned);
        default the masked fraction for a masked model, else NaN.
    """
    if not isinstance(pruned_model, nn.Module):
        raise TypeError(f"pruned_model must be a torch.nn.Module, got {type(pruned_model).__name__}")
    epochs = check_count("epochs", epochs)
    seed = check_seed(seed)
    check_loaders(trainer, needs_train=epochs > 0)
    bad = _uninitialisable(pruned_model)
    if bad:  # checked here too, before the copy
        raise TypeError(f"cannot re-initialise {', '.join(bad[:5])}: no reset_parameters(); give "
                        "them one (or rebuild the model from its constructor)")
    if example_inputs is None:
        if trainer.test is None:
            raise ValueError("reinit_control needs example_inputs (for the MACs) when the trainer has "
                             "no test data to take one sample from")
        example_inputs = first_sample(trainer.test)
    if ratio is None:
        ratio = sparsity(pruned_model) if is_masked(pruned_model) else math.nan
    model = reinitialize(copy_model(pruned_model), seed)
    x = on_device(trainer, model, example_inputs)
    trainer.fit(model, epochs, desc="reinit: train")
    accuracy = evaluate(trainer, model)
    _, macs = measure(model, x)
    step = Step(1, float(ratio), kept_parameters(model), macs, None, accuracy, epochs)
    return Outcome("reinit", model, accuracy, epochs, [step], {"seed": seed})
