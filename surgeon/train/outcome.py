"""What a prune -> recover workflow returns: the model and what happened to it, step by step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

__all__ = ["Step", "Outcome"]


@dataclass
class Step:
    """One prune (and its recovery) of a workflow.

    ratio: the fraction of the original channels removed after this step (per group, or overall).
    params / macs: the model's parameters and MACs after the step.
    accuracy_pruned: right after the surgery, before any recovery (None when not measured).
    accuracy: after this step's recovery (fine-tune, recalibration); None when not measured.
    epochs: training epochs this step spent.
    """

    step: int
    ratio: float
    params: int
    macs: int
    accuracy_pruned: Optional[float] = None
    accuracy: Optional[float] = None
    epochs: int = 0


@dataclass
class Outcome:
    """The result of a workflow.

    method: its name ("one-shot", "iterative", "soft-filter", "slimming", "random-init",
        "lottery", "reinit"...).
    model: the final (physically pruned) model; the same object the workflow was given unless the
        workflow says otherwise.
    accuracy: of the final model on the trainer's test data (None when not measured).
    epochs: every training epoch the workflow spent, on any model (its budget).
    steps: per prune step.
    notes: anything else worth reporting (e.g. why an iterative run stopped early).
    """

    method: str
    model: nn.Module
    accuracy: Optional[float]
    epochs: int
    steps: list[Step] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
