"""A small, honest training and evaluation loop that the user's own pieces plug into.

Everything a user already has works unchanged: their model, their loss, any iterable of
``(inputs, target)`` batches (a DataLoader over any torch Dataset; ``inputs`` is a tensor, a tuple of
positional inputs or a dict of keyword inputs), their optimizer and LR schedule. The optimizer and
schedule are given as *factories*, ``lambda params: torch.optim.SGD(params, lr=0.1)``, because
surgery replaces a pruned layer's parameters with smaller ones: an optimizer built before a prune
would update tensors the model no longer holds.

Runs on the GPU when there is one (``default_device``), on the CPU otherwise; the model is moved
there in place. Progress bars (tqdm) show on a terminal unless ``progress=False``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..capture import module_mode

__all__ = ["Trainer", "History", "seed_everything", "default_device", "to_device", "split_batch",
           "accuracy", "sgd", "cosine"]

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], Any]
Hook = Callable[[nn.Module], None]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """The first GPU when torch sees one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside ``obj`` (tensors, tuples, lists, dicts) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def split_batch(batch: Any) -> tuple[Any, Any]:
    """(inputs, target) of one batch; a batch that is not a pair has no target (None)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def call(model: nn.Module, inputs: Any) -> Any:
    """The model on one batch's inputs: a tensor, a tuple of positional inputs or a dict of keywords."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def accuracy(output: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(correct, total) top-1 for class logits of shape (batch, classes)."""
    return int((output.argmax(dim=1) == target).sum()), int(target.numel())


def sgd(lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = True
        ) -> OptimizerFactory:
    """Factory of SGD with momentum, the usual CNN recipe."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                          nesterov=nesterov and momentum > 0)


def cosine(optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """Cosine decay of the learning rate to 0 over the run's epochs (stepped once per epoch)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))


@dataclass
class History:
    """What one ``fit`` did: the mean training loss and learning rate of every epoch, and the
    evaluation after each epoch when asked for."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.loss)


def check_count(name: str, value: Any, minimum: int = 0) -> int:
    """An integer argument >= ``minimum`` (epochs, batches), with the argument's name in the error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


@dataclass
class Trainer:
    """How to train and evaluate: the pieces that stay the same across the prunes of a workflow.

    train / test: iterables of ``(inputs, target)`` batches (DataLoaders); ``test`` may be None
        when only training is needed.
    loss_fn: ``loss_fn(output, target)``; default cross-entropy.
    optimizer: factory ``params -> Optimizer`` (default ``sgd()``: lr 0.05, momentum 0.9, nesterov,
        weight decay 5e-4), called anew for every ``fit`` since pruning replaces parameters.
    scheduler: factory ``(optimizer, epochs) -> scheduler`` stepped once per epoch (default
        ``cosine``), or None for a constant learning rate.
    metric: ``metric(output, target) -> (correct, total)``; default top-1 accuracy. ``evaluate``
        returns correct / total.
    device: default ``default_device()``; the model is moved there in place.
    progress: tqdm bars; None (default) shows them only on a terminal.
    """

    train: Optional[Iterable[Any]]
    test: Optional[Iterable[Any]] = None
    loss_fn: Callable[[Any, Any], torch.Tensor] = F.cross_entropy
    optimizer: OptimizerFactory = field(default_factory=sgd)
    scheduler: Optional[SchedulerFactory] = cosine
    metric: Callable[[Any, Any], tuple[int, int]] = accuracy
    device: Union[str, torch.device, None] = None
    progress: Optional[bool] = None

    def __post_init__(self) -> None:
        if isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError("optimizer must be a factory params -> Optimizer (e.g. lambda params: "
                            "torch.optim.SGD(params, lr=0.05)), not an optimizer: pruning replaces the "
                            "model's parameters, so every fit builds its own optimizer")
        if not callable(self.optimizer) or not callable(self.loss_fn):
            raise TypeError("optimizer and loss_fn must be callables")
        self.device = torch.device(self.device) if self.device is not None else default_device()

    def _bar(self, items: Iterable[Any], desc: str, total: int | None = None) -> Any:
        return tqdm(items, desc=desc, total=total, leave=False,
                    disable=None if self.progress is None else not self.progress)

    def fit(self, model: nn.Module, epochs: int, *, after_backward: Hook | None = None,
            after_step: Hook | None = None, on_epoch_end: Callable[[int, nn.Module], None] | None = None,
            evaluate_each_epoch: bool = False, desc: str = "train") -> History:
        """Train ``model`` in place for ``epochs`` epochs and return its History.

        after_backward(model): runs after ``loss.backward()``, before the optimizer step (e.g. the
            slimming penalty's subgradient). after_step(model): after each optimizer step.
        on_epoch_end(epoch, model): after each epoch (epoch = 1 .. epochs), e.g. soft pruning.
        Every module's train / eval flag is restored afterwards."""
        epochs = check_count("epochs", epochs)
        if self.train is None:
            raise ValueError("this Trainer has no training data (train=None); pass a DataLoader of "
                             "(inputs, target) batches")
        history = History()
        if epochs == 0:
            return history
        model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        opt = self.optimizer(params)
        sched = self.scheduler(opt, epochs) if self.scheduler is not None else None
        with module_mode(model, True):
            for epoch in range(1, epochs + 1):
                total, count = 0.0, 0
                bar = self._bar(self.train, f"{desc} {epoch}/{epochs}")
                for batch in bar:
                    inputs, target = to_device(split_batch(batch), self.device)
                    loss = self.loss_fn(call(model, inputs), target)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"the training loss became {float(loss)} in epoch {epoch}; "
                                                 "lower the learning rate")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if after_backward is not None:
                        after_backward(model)
                    opt.step()
                    if after_step is not None:
                        after_step(model)
                    total += float(loss.detach())
                    count += 1
                    if count % 10 == 0:
                        bar.set_postfix(loss=f"{total / count:.3f}")
                if count == 0:
                    raise ValueError("the training loader yielded no batches; check the dataset is not empty")
                history.loss.append(total / count)
                history.lr.append(float(opt.param_groups[0]["lr"]))
                if sched is not None:
                    sched.step()
                if on_epoch_end is not None:
                    on_epoch_end(epoch, model)
                if evaluate_each_epoch:
                    history.metric.append(self.evaluate(model))
        return history

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Iterable[Any] | None = None) -> float:
        """The metric (default top-1 accuracy, in [0, 1]) of ``model`` in eval mode on ``data``
        (default the test loader)."""
        data = self.test if data is None else data
        if data is None:
            raise ValueError("nothing to evaluate on: this Trainer has no test loader and no data was given")
        model.to(self.device)
        correct = seen = 0
        with module_mode(model, False):
            for batch in self._bar(data, "evaluate"):
                inputs, target = to_device(split_batch(batch), self.device)
                if target is None:
                    raise ValueError("evaluation batches must be (inputs, target) pairs")
                c, n = self.metric(call(model, inputs), target)
                correct, seen = correct + c, seen + n
        if seen == 0:
            raise ValueError("the evaluation loader yielded no samples; check the dataset is not empty")
        return correct / seen


def check_floor(floor: Any) -> Optional[float]:
    """An accuracy floor in [0, 1] (or None)."""
    if floor is None:
        return None
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0 or math.isnan(floor):
        raise ValueError(f"floor must be an accuracy in [0, 1] (e.g. 0.97), got {floor!r}")
    return float(floor)
