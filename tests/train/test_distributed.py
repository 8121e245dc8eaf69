"""Distributed pruning (surgeon.train.distributed): one decision for every rank, then DDP keeps the
pruned replicas identical. The real test launches 2 CPU processes on the gloo backend."""
from __future__ import annotations

import copy
import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

import surgeon
import surgeon_models as zoo
from surgeon.train.distributed import (broadcast_buffers, prune_distributed, structure,
                                       wrap_ddp)
from surgeon.train.loop import Trainer, sgd

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
WORLD = 2

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")


def test_single_process_is_plan_and_apply() -> None:
    """No process group: prune_distributed is surgeon.plan(...).apply(); the helpers are no-ops."""
    model = zoo.get("tinynet")
    twin = copy.deepcopy(model)
    found = prune_distributed(model, X, ratio=0.5, criterion="l2")
    assert found.applied
    assert found.removed() == surgeon.plan(twin, X, ratio=0.5, criterion="l2").removed()
    assert wrap_ddp(model) is model and broadcast_buffers(model) is model


def _gather(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _worker(rank: int, world: int, store: str) -> None:
    """One rank: rank-dependent weights, a distributed prune, DDP fine-tuning on its own shard."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(100 + rank)  # every rank starts from other weights
        model = zoo.randomize_bn(zoo.get("tinynet"), seed=rank)
        local = surgeon.plan(model, X, ratio=0.5).removed()
        decided = _gather(local)
        assert decided[0] != decided[1], "the ranks would agree anyway: the test would prove nothing"

        found = prune_distributed(model, X, ratio=0.5)
        assert found.removed() == decided[0], f"rank {rank} did not apply rank 0's decision"
        shapes = _gather(structure(model))
        assert shapes[0] == shapes[1] and shapes[0]["conv1.weight"] == (4, 3, 3, 3)

        with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
            prune_distributed(model, X, ratio=1.5)  # rank 0's error, raised on every rank
        assert _gather(structure(model))[rank] == shapes[0]

        differ = _gather({k: v.clone() for k, v in model.state_dict().items()})
        assert not torch.equal(differ[0]["conv1.weight"], differ[1]["conv1.weight"])
        ddp = wrap_ddp(model)
        with pytest.raises(TypeError, match="ddp.module"):
            prune_distributed(ddp, X, ratio=0.2)

        g = torch.Generator().manual_seed(1000 + rank)  # this rank's shard
        shard = TensorDataset(torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g))
        trainer = Trainer(DataLoader(shard, batch_size=8), optimizer=sgd(lr=0.05), device="cpu", progress=False)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        trainer.fit(ddp, 1)
        broadcast_buffers(ddp)
        states = _gather({k: v.clone() for k, v in model.state_dict().items()})
        for name, value in states[0].items():
            assert torch.equal(value, states[1][name]), f"{name} differs between the ranks"
        assert not torch.equal(model.conv1.weight, start["conv1.weight"]), "fine-tuning changed nothing"

        other = zoo.get("tinynet", width=8 if rank == 0 else 6)  # replicas that are not replicas
        with pytest.raises(RuntimeError, match=r"failed on 1 rank\(s\) \(rank 1: PlanMismatch"):
            prune_distributed(other, X, ratio=0.5)  # rank 1 cannot load the plan: every rank hears it
        # both ranks done with every collective before either tears its group down: once (1 run in
        # about 20 suites) rank 1 aborted in gloo ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@needs_gloo
def test_two_ranks_prune_alike_and_stay_in_sync(tmp_path) -> None:
    """2 gloo processes with different weights end with rank 0's structure and identical weights."""
    # spawn, not fork: forking a pytest process that already runs torch / onnxruntime thread pools
    # can deadlock the children (seen in the full suite); the deadline turns any hang into a failure
    ctx = mp.start_processes(_worker, args=(WORLD, str(tmp_path / "store")), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the 2-rank gloo run did not finish in 240 s")
