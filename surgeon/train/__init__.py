"""Prune -> recover: training-time workflows on real data.

A pruned model is only worth shipping if it still works. This package holds what wins accuracy
back and what prunes during or before training (see ../shared/PRUNING_NOTES.md, *frequency* and
*timing*):

- ``data``: scikit-learn's digits (real, offline) as 32x32 images; any torch Dataset works too;
- ``loop``: ``Trainer`` (fit / evaluate with the user's loss, optimizer and schedule factories);
- ``recalibrate`` / ``reconstruct``: recovery without labels or gradients (BatchNorm statistics;
  least-squares re-fit of the layers that lost inputs);
- ``workflows``: after training: ``one_shot``, ``iterative`` (schedule, accuracy floor), ``slimming``;
- ``soft``: during training: soft filter pruning, removed exactly at the end;
- ``init`` / ``lottery``: before training: random pruning at init, the lottery ticket, and the
  re-initialised control;
- ``distributed``: DDP: decisions made on rank 0 and applied on every rank.
"""
from __future__ import annotations

from .data import digits, loaders
from .distributed import broadcast_buffers, broadcast_object, is_distributed, prune_distributed, wrap_ddp
from .init import random_at_init, reinit_control, reinitialize
from .loop import History, Trainer, cosine, default_device, seed_everything, sgd
from .lottery import lottery_ticket
from .outcome import Outcome, Step
from .recalibrate import recalibrate_bn
from .reconstruct import reconstruct
from .soft import SoftFilterPruner, soft_filter_pruning
from .workflows import iterative, one_shot, slimming

__all__ = ["digits", "loaders", "Trainer", "History", "sgd", "cosine", "seed_everything", "default_device",
           "recalibrate_bn", "reconstruct", "one_shot", "iterative", "slimming", "SoftFilterPruner",
           "soft_filter_pruning", "random_at_init", "reinit_control", "reinitialize", "lottery_ticket",
           "prune_distributed", "wrap_ddp", "broadcast_buffers", "broadcast_object", "is_distributed",
           "Outcome", "Step"]
