"""Iterative pruning: schedules, steps that end exactly at the one-shot result or the target,
re-scoring between steps, the callback, and bad input."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import surgeon
import surgeon_models as zoo
from surgeon.count import count
from surgeon.schedule import fractions, prune_iteratively
from surgeon.verify import assert_equivalent, zeroed_reference


def widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.fixture(scope="module")
def se_resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return zoo.randomize_bn(zoo.get("se_resnet"), seed=1).eval(), torch.randn(1, 3, 32, 32)


def test_linear_and_cubic_fractions():
    assert fractions(4, "linear") == pytest.approx([0.25, 0.5, 0.75, 1.0])
    cubic = fractions(4, "cubic")  # Zhu & Gupta: 1 - (1 - t)^3
    assert cubic == pytest.approx([1 - 0.75 ** 3, 1 - 0.5 ** 3, 1 - 0.25 ** 3, 1.0])
    assert all(c >= l for c, l in zip(cubic, fractions(4, "linear")))  # big cuts first
    assert fractions(1) == [1.0]
    assert fractions(2, lambda t: t ** 2) == pytest.approx([0.25, 1.0])


@pytest.mark.parametrize("scope", ["local", "global"])
def test_steps_end_at_the_one_shot_result(se_resnet, scope):
    """Ratios are fractions of the original model, so 3 steps end with the one-shot widths."""
    model, x = se_resnet
    one_shot = copy.deepcopy(model)
    once = surgeon.plan(one_shot, x, 0.5, scope=scope)
    once.apply()
    stepped = copy.deepcopy(model)
    seen = []
    plans = prune_iteratively(stepped, x, 0.5, scope=scope, steps=3, schedule="cubic",
                              callback=lambda step, m, plan: seen.append((step, plan.before.params, plan.after.params)))
    if scope == "local":
        assert widths(stepped) == widths(one_shot)
    else:  # global: as many channels in all, maybe ranked differently after re-scoring
        channels = lambda m: sum(g.n for g in surgeon.trace(m, x).groups if not g.fixed)  # noqa: E731
        assert channels(stepped) == channels(one_shot) == sum(c.kept for c in once.cuts)
    assert [s for s, *_ in seen] == [1, 2, 3]
    assert seen[0][1] > seen[1][1] > seen[2][1] > seen[2][2]  # every step starts from the smaller model
    assert all(a == b for (_, _, a), (_, b, _) in zip(seen, seen[1:]))


def test_cubic_removes_more_early_than_linear(se_resnet):
    model, x = se_resnet
    first = {}
    for schedule in ("linear", "cubic"):
        m = copy.deepcopy(model)
        plans = prune_iteratively(m, x, 0.6, steps=3, schedule=schedule)
        first[schedule] = plans[0].after.params
        assert len(plans) == 3
    assert first["cubic"] < first["linear"]


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_steps_end_at_the_target(se_resnet, metric):
    model, x = se_resnet
    m = copy.deepcopy(model)
    original = count(m, x)
    plans = prune_iteratively(m, x, steps=3, scope="global", **{f"target_{metric}": 0.4})
    final = count(m, x)
    reached = getattr(final, metric) / getattr(original, metric)
    assert reached <= 0.4 and plans[-1].target.achieved == pytest.approx(reached)
    assert plans[-1].target.one_step_less > 0.4  # within one channel step
    targets = [p.target.requested for p in plans]
    assert targets == pytest.approx([0.8, 0.6, 0.4])  # linear, fractions of the original


def test_each_step_rescores_the_current_model():
    """The callback zeroes a filter of conv1 after step 1 (as fine-tuning might): step 2 must see it
    and remove that channel, though it scored high at step 1."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.arange(1.0, 9.0).view(8, 1, 1, 1).expand(8, 3, 1, 1))
        m[2].weight.fill_(1.0)
    x = torch.randn(1, 3, 4, 4)
    removed = []

    def fine_tune(step, model, plan):
        removed.append(plan.removed()["0"]["out"])
        if step == 1:
            with torch.no_grad():
                model[0].weight[-1] = 0.0  # the (original) strongest filter dies

    surgeon.prune(m, x, 0.5, criterion="l1", steps=2, callback=fine_tune)
    assert removed[0] == [0, 1]  # step 1: 25% of the original 8, the two weakest
    assert 5 in removed[1]  # step 2 indices are in the 6-channel model: the zeroed filter is index 5
    assert m[0].out_channels == 4


def test_taylor_steps_rescore_with_the_data(se_resnet):
    model, x = se_resnet
    m = copy.deepcopy(model)
    data = [(x, torch.tensor([3]))]
    plans = prune_iteratively(m, x, 0.3, criterion="taylor", steps=2, data=data, loss_fn=nn.CrossEntropyLoss())
    assert len(plans) == 2 and all(p.applied for p in plans)


def test_every_step_is_surgically_exact(se_resnet):
    model, x = se_resnet
    m = copy.deepcopy(model)

    def check(step, pruned, plan):
        assert plan.applied

    # verify=True runs the oracle on every step's apply
    surgeon.prune(m, x, 0.5, steps=2, verify=True, callback=check)
    ref = zeroed_reference(m, surgeon.plan(m, x, 0.2).removed())
    p = surgeon.plan(m, x, 0.2)
    p.apply()
    assert_equivalent(ref, m, x)


# ----------------------------------------------------------------------------------- bad input
def tiny() -> tuple[nn.Module, torch.Tensor]:
    return zoo.get("tinynet").eval(), torch.randn(1, 3, 16, 16)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, "3"])
def test_bad_steps(steps):
    m, x = tiny()
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        surgeon.prune(m, x, 0.5, steps=steps)


def test_unknown_schedule():
    m, x = tiny()
    with pytest.raises(ValueError, match="unknown schedule 'exp'; choose one of 'linear', 'cubic'"):
        surgeon.prune(m, x, 0.5, steps=2, schedule="exp")


def test_schedule_must_rise_to_one():
    with pytest.raises(ValueError, match="schedule must rise from 0 to 1"):
        fractions(3, lambda t: 0.5 * t)
    with pytest.raises(ValueError, match="schedule must rise from 0 to 1"):
        fractions(3, lambda t: 1.0 if t == 1 else 1.0 - t)  # falls, then jumps


@pytest.mark.parametrize("kw, match", [
    ({"ratio": 1.5}, r"ratio must be a number in \[0, 1\)"),
    ({"target_macs": 2.0}, r"target_macs must be a number in \(0, 1\]"),
    ({"ratios": {"conv1": 1.0}}, r"ratios\['conv1'\] must be a number in \[0, 1\)"),
])
def test_bad_amounts_fail_before_the_first_step(kw, match):
    m, x = tiny()
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        surgeon.prune(m, x, steps=3, **kw)
    assert all(torch.equal(saved[k], v) for k, v in m.state_dict().items())


def test_iterator_data_is_rejected_for_several_steps():
    m, x = tiny()
    with pytest.raises(ValueError, match="data is an iterator, used up by the first step"):
        surgeon.prune(m, x, 0.5, criterion="taylor", steps=2, data=iter([(x, torch.tensor([1]))]),
                      loss_fn=nn.CrossEntropyLoss())
    assert m.conv1.out_channels == 8


def test_callback_must_be_callable():
    m, x = tiny()
    with pytest.raises(TypeError, match="callback must be callable"):
        surgeon.prune(m, x, 0.5, steps=2, callback=3)
