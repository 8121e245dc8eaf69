"""Exceptions raised by surgeon.

User mistakes are ``ValueError`` / ``TypeError`` subclasses so ordinary ``except ValueError`` code
catches them; failures of our own invariants are ``SurgeryError``.
"""
from __future__ import annotations

__all__ = ["TraceFailure", "NothingToPrune", "SurgeryError", "ValueDependentWarning"]


class TraceFailure(ValueError):
    """torch.fx could not trace the model, or the example inputs do not fit it."""


class NothingToPrune(ValueError):
    """Every coupled group of the model is frozen (or ignored): there is nothing to remove."""


class SurgeryError(RuntimeError):
    """A structural change broke an invariant; the model has been restored to its previous state."""


class ValueDependentWarning(UserWarning):
    """The model's forward branched on a tensor's value while being traced concretely: the graph
    surgeon analysed is the path the example inputs took."""


class LatencyTargetWarning(UserWarning):
    """A latency-target plan was kept although its measured latency misses the target by more than
    the tolerance (every corrected allocation was out of reach, or the rounds ran out)."""
