"""BatchNorm recalibration: new running statistics, every module's own mode and momentum kept."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from surgeon.train import recalibrate_bn


def model() -> nn.Sequential:
    """conv -> bn -> dropout -> conv -> bn, training, with the first BatchNorm frozen in eval mode."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 4, 1),
                      nn.BatchNorm2d(4, momentum=0.3)).train()
    m[1].eval()
    return m


def test_statistics_are_re_estimated_and_every_mode_comes_back():
    m = model()
    data = [torch.randn(8, 3, 5, 5) + 2 for _ in range(3)]
    recalibrate_bn(m, data)
    assert [mod.training for mod in m] == [True, False, True, True, True] and m.training
    assert m[4].momentum == 0.3 and int(m[4].num_batches_tracked) == 3
    with torch.no_grad():  # momentum None: the exact mean over the batches of each batch's mean,
        # with every BatchNorm normalising by its batch's statistics while recalibrating
        bn1 = lambda h: F.batch_norm(h, None, None, m[1].weight, m[1].bias, training=True)  # noqa: E731
        want = torch.stack([m[3](bn1(m[0](x))).mean((0, 2, 3)) for x in data]).mean(0)
    torch.testing.assert_close(m[4].running_mean, want)


def test_a_failure_restores_statistics_and_modes():
    m = model()
    before = m[4].running_mean.clone()
    with pytest.raises(ValueError, match="yielded no batches"):
        recalibrate_bn(m, [])
    assert [mod.training for mod in m] == [True, False, True, True, True]
    assert torch.equal(m[4].running_mean, before) and m[4].momentum == 0.3
