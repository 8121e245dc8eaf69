"""Positions (a tensor or parameter, and a dim) and the index maps that couple them.

An edge of the dependency graph says "element i of position A and element j of position B are the
same channel": removing one forces removing the other. We store every map as two aligned integer
arrays (``src[k]`` ~ ``dst[k]``), which covers identity, concat offsets, split slices, flatten
blocks and grouped-conv strides with one representation, so the grouping code never needs to know
which op produced an edge.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["Pos", "IndexMap"]


class Pos(NamedTuple):
    """A channel position: one dim of one tensor.

    kind: "t" for an activation (``ref`` is the fx node name, ``name#k`` for the k-th element of a
          tuple output), "p" for a parameter / buffer / tensor attribute (``ref`` is its qualified
          path in the model, e.g. ``layer1.0.conv1.weight``).
    dim:  the dimension (non-negative).
    """

    kind: str
    ref: str
    dim: int

    def __str__(self) -> str:
        return f"{self.ref}[dim {self.dim}]"


@dataclass(frozen=True)
class IndexMap:
    """Pairs of coupled indices between two positions; ``kind`` names the op's mapping for display."""

    kind: str
    src: np.ndarray
    dst: np.ndarray

    def __post_init__(self) -> None:
        assert self.src.shape == self.dst.shape and self.src.ndim == 1, "index map arrays must align"

    # Worked example for every constructor: n = 4 channels.
    @staticmethod
    def identity(n: int) -> "IndexMap":
        """i ~ i (elementwise ops, BN, activations, pooling): 0~0, 1~1, 2~2, 3~3. One shared,
        read-only map per size: most edges of a graph are identities of a few sizes."""
        return _identity(n)

    @staticmethod
    def offset(n: int, off: int, kind: str = "concat") -> "IndexMap":
        """i ~ off + i: input i of a concat lands at off + i of the output (off=8: 0~8 ... 3~11)."""
        a = np.arange(n)
        return IndexMap(f"{kind}+{off}", a, a + off)

    @staticmethod
    def block(n: int, k: int, kind: str = "flatten") -> "IndexMap":
        """c ~ [c*k, (c+1)*k) (k=2: 0~0, 0~1, 1~2, 1~3 ...).

        Flatten of a C x H x W map (k = H*W), or a depthwise conv with channel multiplier k (input g
        feeds outputs g*k .. g*k+k-1).
        """
        src = np.repeat(np.arange(n), k)
        return IndexMap(f"{kind} x{k}", src, np.arange(n * k))

    @staticmethod
    def modulo(n: int, m: int, kind: str = "per-group") -> "IndexMap":
        """c ~ c % m: grouped conv, channel j of every group is one unit (m=2: 0~0, 1~1, 2~0, 3~1)."""
        a = np.arange(n)
        return IndexMap(f"{kind} %{m}", a, a % m)


@functools.lru_cache(maxsize=1024)
def _identity(n: int) -> IndexMap:
    a = np.arange(n)
    a.flags.writeable = False
    return IndexMap("identity", a, a)
