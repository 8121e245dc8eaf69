"""Real data that ships offline: scikit-learn's handwritten digits, sized for small CNNs.

``load_digits`` holds 1,797 8x8 grey images of the digits 0-9 (UCI ML hand-written digits), inside
the scikit-learn package: nothing is downloaded. ``digits()`` upsamples them to ``size`` x ``size``
(bilinear), repeats the grey channel ``channels`` times (ImageNet-style models expect 3), scales to
[-1, 1] and splits them with a fixed seed (1,437 train / 360 test at the default 0.2). Digits is
easy (dense CNNs reach 99%+), so one test image is 0.28 points: report spreads over seeds.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["digits", "loaders", "NUM_CLASSES"]

NUM_CLASSES = 10


def digits(size: int = 32, channels: int = 3, test_fraction: float = 0.2, seed: int = 0
           ) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) TensorDatasets of (image (channels, size, size) float32, label int64)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (the digits are 8x8 images), got {size!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is in the train / test extras
        raise ImportError("surgeon.train.digits needs scikit-learn (pip install 'surgeon[train]')") from None
    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x * 2.0 - 1.0).repeat(1, channels, 1, 1).contiguous()
    y = torch.tensor(raw.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = math.ceil(len(y) * float(test_fraction))
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def loaders(train: Dataset[Any], test: Dataset[Any], batch_size: int = 64, seed: int = 0,
            eval_batch_size: int = 256) -> tuple[DataLoader, DataLoader]:
    """A shuffling train loader (its order fixed by ``seed``) and an in-order test loader."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    gen = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
            DataLoader(test, batch_size=eval_batch_size, shuffle=False))
