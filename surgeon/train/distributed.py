"""Distributed (DDP) pruning: decisions are made once, on rank 0, and every rank applies them.

Under ``torchrun`` every rank holds a replica of the model. Scoring on each rank separately could
pick different channels (scores computed from different data, or ties broken differently), and
replicas of different shapes cannot be synchronised again. So rank 0 decides and broadcasts the
decision as data (``Plan.to_dict()``), and every rank rebuilds the same plan with ``load_plan``.
"""
from __future__ import annotations

from typing import Any

import torch.distributed as dist

__all__ = ["is_distributed", "broadcast_object"]


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` holds it, on every rank (picklable objects); unchanged when not
    running distributed."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
