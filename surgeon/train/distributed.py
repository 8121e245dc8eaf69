"""Distributed (DDP) pruning: decisions are made once, on rank 0, and every rank applies them.

Under ``torchrun`` every rank holds a replica of the model. Scoring on each rank separately could
pick different channels (scores computed from different data, or ties broken differently), and
replicas of different shapes cannot be synchronised again. So rank 0 decides and broadcasts the
decision as data (``Plan.to_dict()``), and every rank rebuilds the same plan with ``load_plan``.

Surgery replaces the pruned layers' parameters with smaller tensors, and a
``DistributedDataParallel`` wrapper holds the old ones (its gradient buckets, the all-reduce hooks
registered on each parameter): after a prune, throw the wrapper away and wrap the bare module
again (``wrap_ddp``), and build a new optimizer (``Trainer.fit`` does, from its factory).

    model = ddp.module                            # the bare model, on every rank
    prune_distributed(model, x, ratio=0.3)        # same channels removed everywhere
    ddp = wrap_ddp(model)                         # a new wrapper: it syncs rank 0's weights
    trainer.fit(ddp, epochs)                      # each rank on its own shard (DistributedSampler)
    broadcast_buffers(model)                      # BatchNorm statistics: rank 0's, everywhere
"""
from __future__ import annotations

import pickle
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..plan import Plan, plan
from ..plan import load_plan
from ..planfile import trace_options

__all__ = ["is_distributed", "broadcast_object", "prune_distributed", "wrap_ddp", "broadcast_buffers",
           "structure"]


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


def structure(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter and buffer: equal on two replicas iff they were pruned alike."""
    out = {n: tuple(t.shape) for n, t in model.named_parameters()}
    out.update({n: tuple(t.shape) for n, t in model.named_buffers()})
    return out


def _picklable(error: Exception | None) -> Exception | None:
    """``error`` if it survives pickling (to be broadcast), else a RuntimeError with its message."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _check_bare(model: Any) -> nn.Module:
    if isinstance(model, DistributedDataParallel):
        raise TypeError("pass the bare model (ddp.module), not its DistributedDataParallel wrapper: surgery "
                        "replaces parameters the wrapper holds; re-wrap afterwards with wrap_ddp(model)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def prune_distributed(model: nn.Module, example_inputs: Any, *, src: int = 0, verify: bool = False,
                      **plan_kwargs: Any) -> Plan:
    """Prune every rank's replica of ``model`` in place with one decision, rank ``src``'s, and
    return the applied plan.

    Rank ``src`` plans (``surgeon.plan(model, example_inputs, **plan_kwargs)``) on its own weights
    and data (a "taylor" criterion's ``data`` is only read there) and broadcasts ``plan.to_dict()``;
    every other rank rebuilds it with ``surgeon.load_plan`` and applies it. Afterwards the shapes of
    every rank are compared (one all_gather), so replicas that ended up different fail loudly here
    rather than hang in DDP's first all-reduce. If rank ``src`` cannot plan (a bad option, nothing
    prunable), its exception is raised on every rank, so no rank waits forever.

    Not running distributed (no process group, or one rank): a plain ``plan(...).apply()``.
    Every rank must call this, like any collective. Wrap the pruned model in a NEW DDP afterwards
    (``wrap_ddp``): the old wrapper still refers to the replaced parameters.
    """
    model = _check_bare(model)
    if not is_distributed():
        found = plan(model, example_inputs, **plan_kwargs)
        found.apply(verify=verify)
        return found
    rank = dist.get_rank()
    found, doc, error = None, None, None
    if rank == src:
        try:
            found = plan(model, example_inputs, **plan_kwargs)
            doc = found.to_dict()
        except Exception as e:  # sent to every rank below, then re-raised here
            error = e
    doc, sent = broadcast_object((doc, _picklable(error)), src=src)
    if sent is not None:
        if rank == src:
            raise error  # type: ignore[misc]
        if hasattr(sent, "add_note"):
            sent.add_note(f"raised on rank {src}, which plans for every rank")
        raise sent
    try:
        if found is None:
            found = load_plan(model, example_inputs, doc, **trace_options(plan_kwargs))
        found.apply(verify=verify)  # atomic: a rank that fails is left unchanged
        mine: Any = structure(model)
    except Exception as e:
        mine, error = f"{type(e).__name__}: {e}", e
    shapes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shapes, mine)  # every rank gets here, failed or not: nobody hangs
    failed = {r: s for r, s in enumerate(shapes) if isinstance(s, str)}
    if failed:
        message = "; ".join(f"rank {r}: {s}" for r, s in sorted(failed.items()))
        raise RuntimeError(f"the distributed prune failed on {len(failed)} rank(s) ({message}); the "
                           "ranks that applied it hold a pruned model, the others do not") from error
    differ = [r for r, s in enumerate(shapes) if s != shapes[src]]
    if differ:
        names = sorted(k for k in shapes[src] if any(shapes[r].get(k) != shapes[src][k] for r in differ))
        raise RuntimeError(f"after the distributed prune, rank(s) {differ} hold other shapes than rank {src} "
                           f"(first: {names[:3]}); were the replicas different models before the prune?")
    return found


def wrap_ddp(model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
    """``model`` in a NEW ``DistributedDataParallel`` (given a DDP, its bare module is re-wrapped).

    Needed after every prune: DDP registers its gradient all-reduce on the parameters it saw when
    built, and surgery replaces those. Building it also broadcasts rank 0's parameters and buffers
    to every rank. On a CUDA model ``device_ids`` defaults to the model's device. Without a process
    group the bare model is returned, so the same script runs on one process."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (dist.is_available() and dist.is_initialized()):
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cuda" and "device_ids" not in ddp_kwargs:
        ddp_kwargs["device_ids"] = [device.index]
    return DistributedDataParallel(model, **ddp_kwargs)


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, in place.

    DDP keeps the *parameters* equal (gradients are averaged), but each rank's BatchNorm updates
    its running statistics from its own data shard in every training forward; DDP broadcasts rank
    0's buffers only at the start of the next forward. Call this after training, before evaluating
    or saving, so every rank holds the same model. A no-op when not running distributed."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=src)
    return model
