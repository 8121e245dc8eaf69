"""Prune -> recover: training-time workflows on real data.

A pruned model is only worth shipping if it still works. This package holds what wins accuracy
back and what prunes during or before training (see ../shared/PRUNING_NOTES.md, *frequency* and
*timing*):

- ``data``: scikit-learn's digits (real, offline) as 32x32 images; any torch Dataset works too;
- ``loop``: ``Trainer`` (fit / evaluate with the user's loss, optimizer and schedule factories);
- ``recalibrate``: BatchNorm statistics re-estimated after a prune (no labels, no gradient).
"""
from __future__ import annotations

from .data import digits, loaders
from .loop import History, Trainer, cosine, default_device, seed_everything, sgd
from .recalibrate import recalibrate_bn

__all__ = ["digits", "loaders", "Trainer", "History", "sgd", "cosine", "seed_everything",
           "default_device", "recalibrate_bn"]
