"""N:M semi-structured sparsity: pattern selection, compressed storage, modules.

N:M sparsity keeps at most ``n`` non-zeros in every group of ``m`` consecutive
weights along the *reduction* dimension of a layer (the input dimension of a
``Linear``, the input-channel dimension ``C_in`` of a convolution at a fixed
output channel and kernel position).  This is the layout sparse tensor cores
(e.g. NVIDIA 2:4) accelerate, because every group of ``m`` multiply-adds then
needs only ``n`` of them plus a few bits of index metadata.

Conventions shared by every function here:

* ``dim`` is the reduction dimension along which groups of ``m`` are formed.
  Groups are taken from the start of that dimension; when its size is not a
  multiple of ``m`` the trailing ``size % m`` entries (the *tail*) do not form
  a complete group and are left dense.  Keeping them dense (instead of padding
  or raising) means every layer can be handled and the result is still a
  valid N:M layout for all complete groups.
* Pattern selection maximises the kept magnitude: for each group the pattern
  ``p`` (one of the ``C(m, n)`` binary vectors with exactly ``n`` ones) that
  maximises ``p . |w_group|`` is chosen.  Ties go to the first pattern in the
  lexicographic order of :func:`nm_patterns`, which makes results
  deterministic.

The reference modules :class:`NMLinear` and :class:`NMConv2d` hold only the
packed form and rebuild the dense weight inside ``forward``: this makes them
exact drop-in replacements for the masked dense layer (and keeps the N:M
pattern fixed during fine-tuning, since only the kept values are parameters),
while the memory saving is real at rest.  They are not meant to be fast.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = [
    "MAX_PATTERNS",
    "nm_patterns",
    "nm_mask",
    "NMPacked",
    "pack",
    "NMLinear",
    "NMConv2d",
]

#: Largest number of candidate patterns ``C(m, n)`` we are willing to enumerate.
#: Selection cost and memory grow with ``C(m, n)``; beyond this the brute-force
#: enumeration stops being a sensible reference implementation.
MAX_PATTERNS = 1 << 16

# Score matrices are computed in chunks of groups so that a large layer with
# many patterns (e.g. 8:16 has 12870) never materialises a huge
# ``groups x patterns`` tensor at once.
_SCORE_BUDGET = 1 << 22


def _check_nm(n: object, m: object) -> tuple[int, int]:
    """Validate an (n, m) pair, raising with the offending values."""
    for label, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{label} must be an int, got {value!r} ({type(value).__name__})")
    assert isinstance(n, int) and isinstance(m, int)
    if m < 2:
        raise ValueError(f"m must be >= 2, got m={m}")
    if not 1 <= n < m:
        raise ValueError(f"N:M sparsity needs 1 <= n < m, got n={n}, m={m}")
    count = math.comb(m, n)
    if count > MAX_PATTERNS:
        raise ValueError(
            f"{n}:{m} has C({m}, {n}) = {count} patterns, more than MAX_PATTERNS="
            f"{MAX_PATTERNS} can be enumerated; use a smaller m"
        )
    return n, m


def _normalize_dim(dim: object, ndim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if ndim == 0:
        raise ValueError("N:M sparsity needs a tensor with at least one dimension")
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim={dim} is out of range for a tensor with {ndim} dimensions")
    return dim % ndim


@functools.lru_cache(maxsize=64)
def _pattern_tuples(n: int, m: int) -> tuple[tuple[int, ...], ...]:
    return tuple(itertools.combinations(range(m), n))


def nm_patterns(n: int, m: int) -> torch.Tensor:
    """Return all ``C(m, n)`` binary N:M patterns as a ``bool`` tensor ``[C(m, n), m]``.

    Rows follow the lexicographic order of the kept positions
    (``itertools.combinations``), which defines the tie-breaking order used by
    :func:`nm_mask`.
    """
    n, m = _check_nm(n, m)
    combos = _pattern_tuples(n, m)
    patterns = torch.zeros(len(combos), m, dtype=torch.bool)
    rows = torch.arange(len(combos)).repeat_interleave(n)
    cols = torch.tensor([c for combo in combos for c in combo], dtype=torch.long)
    patterns[rows, cols] = True
    return patterns


def _score_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half precision sums of |w| can round equal-looking patterns differently;
    # scoring in at least float32 keeps the argmax meaningful.
    if dtype.is_floating_point:
        return torch.promote_types(dtype, torch.float32)
    return torch.float64


def nm_mask(weight: torch.Tensor, n: int, m: int, dim: int = 1) -> torch.Tensor:
    """Boolean mask keeping the best ``n`` of every ``m`` consecutive entries along ``dim``.

    For each complete group the pattern from :func:`nm_patterns` with the
    largest kept magnitude ``pattern . |w|`` is selected (first one on ties).
    Tail entries that do not fill a whole group are kept (``True``).
    The mask has the shape and device of ``weight``.
    """
    n, m = _check_nm(n, m)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    dim = _normalize_dim(dim, weight.dim())

    mag = weight.detach().abs().to(_score_dtype(weight.dtype)).movedim(dim, -1)
    length = mag.shape[-1]
    n_groups = length // m
    mask = torch.ones(mag.shape, dtype=torch.bool, device=weight.device)
    if n_groups == 0 or mag.numel() == 0:
        return mask.movedim(-1, dim)

    full = n_groups * m
    groups = mag[..., :full].reshape(-1, m)  # one row per group
    patterns = nm_patterns(n, m).to(weight.device)
    pattern_weights = patterns.to(groups.dtype).T  # [m, P]
    chunk = max(1, _SCORE_BUDGET // patterns.shape[0])
    best = torch.empty(groups.shape[0], dtype=torch.long, device=weight.device)
    for start in range(0, groups.shape[0], chunk):
        scores = groups[start : start + chunk] @ pattern_weights
        best[start : start + chunk] = scores.argmax(dim=-1)
    chosen = patterns[best].reshape(*mag.shape[:-1], full)
    mask[..., :full] = chosen
    return mask.movedim(-1, dim)


def _index_dtype(m: int) -> torch.dtype:
    """Smallest unsigned dtype that can hold positions ``0 .. m-1``."""
    if m - 1 <= torch.iinfo(torch.uint8).max:
        return torch.uint8
    if m - 1 <= 0xFFFF:
        return torch.uint16
    return torch.uint32


@dataclass(frozen=True)
class NMPacked:
    """Compressed storage of an N:M sparse tensor.

    Let ``w' = w.movedim(dim, -1)`` with leading shape ``L`` and last size
    ``G * m + r`` (``G`` complete groups, ``r`` tail entries).

    Attributes:
        values: kept entries, shape ``[*L, G, n]``, dtype of the weight.
        indices: position of each kept entry inside its group of ``m``
            (sorted ascending), shape ``[*L, G, n]``, in the smallest unsigned
            dtype that can hold ``m - 1`` (``uint8`` for any practical ``m``).
        tail: the dense tail ``[*L, r]`` (``r`` may be 0).
        shape: shape of the original dense tensor.
        dim: the grouped (reduction) dimension of the original tensor.
        n, m: the sparsity pattern.
    """

    values: torch.Tensor
    indices: torch.Tensor
    tail: torch.Tensor
    shape: torch.Size
    dim: int
    n: int
    m: int

    def __post_init__(self) -> None:
        # Catch inconsistent hand-built instances early rather than in unpack().
        _check_nm(self.n, self.m)
        if self.values.shape != self.indices.shape or self.values.shape[-1:] != (self.n,):
            raise ValueError(
                f"values {tuple(self.values.shape)} and indices {tuple(self.indices.shape)} "
                f"must share a shape ending in n={self.n}"
            )
        if self.indices.dtype.is_floating_point or self.indices.dtype.is_complex:
            raise TypeError(f"indices must have an integer dtype, got {self.indices.dtype}")
        object.__setattr__(self, "shape", torch.Size(self.shape))

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the equivalent dense tensor (same dtype as ``values``)."""
        return math.prod(self.shape) * self.values.element_size()

    @property
    def nbytes(self) -> int:
        """Bytes actually stored: values + index metadata + dense tail."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.indices, self.tail))

    @property
    def compression_ratio(self) -> float:
        """``dense_nbytes / nbytes`` (> 1 means the packed form is smaller)."""
        return self.dense_nbytes / self.nbytes if self.nbytes else float("inf")

    def unpack(self) -> torch.Tensor:
        """Rebuild the dense tensor exactly.

        Uses an out-of-place scatter so the result stays differentiable with
        respect to ``values`` and ``tail`` (used by the N:M modules).
        """
        lead = self.values.shape[:-2]
        n_groups = self.values.shape[-2]
        zeros = self.values.new_zeros(*lead, n_groups, self.m)
        groups = zeros.scatter(-1, self.indices.long(), self.values)
        flat = torch.cat([groups.reshape(*lead, n_groups * self.m), self.tail], dim=-1)
        return flat.movedim(-1, self.dim).contiguous()


def pack(
    weight: torch.Tensor, n: int = 2, m: int = 4, dim: int = 1, prune: bool = False
) -> NMPacked:
    """Compress ``weight`` into an :class:`NMPacked` along ``dim``.

    With ``prune=False`` (default) the weight must already satisfy the N:M
    pattern (at most ``n`` non-zeros per complete group); otherwise a
    ``ValueError`` is raised instead of silently dropping values, because
    packing is expected to be lossless.  With ``prune=True`` the weight is
    first masked with :func:`nm_mask`.

    Groups holding fewer than ``n`` non-zeros store explicit zeros so that
    every group has exactly ``n`` slots; the round trip stays exact.
    """
    n, m = _check_nm(n, m)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    dim = _normalize_dim(dim, weight.dim())
    w = weight.detach()
    if prune:
        w = w.masked_fill(~nm_mask(w, n, m, dim), 0)

    moved = w.movedim(dim, -1)
    length = moved.shape[-1]
    n_groups = length // m
    full = n_groups * m
    groups = moved[..., :full].reshape(*moved.shape[:-1], n_groups, m)
    nonzero = groups != 0
    if not prune:
        counts = nonzero.sum(dim=-1)
        bad = int((counts > n).sum())
        if bad:
            raise ValueError(
                f"weight violates the {n}:{m} pattern along dim={dim} in {bad} of "
                f"{counts.numel()} groups (up to {int(counts.max())} non-zeros); "
                f"mask it first or call pack(..., prune=True)"
            )

    # Rank positions: non-zeros first, then earlier positions; the top n give
    # the kept slots.  Sorting them makes the metadata canonical.
    position = torch.arange(m, device=w.device)
    key = nonzero.long() * m + (m - 1 - position)
    idx = key.topk(n, dim=-1).indices.sort(dim=-1).values
    values = groups.gather(-1, idx).clone()
    tail = moved[..., full:].clone()
    return NMPacked(
        values=values,
        indices=idx.to(_index_dtype(m)),
        tail=tail,
        shape=weight.shape,
        dim=dim,
        n=n,
        m=m,
    )


class _NMBase(nn.Module):
    """Stores an :class:`NMPacked` as module state so ``.to()``/``state_dict`` work.

    ``weight_values`` and ``weight_tail`` are parameters (fine-tuning updates
    only the kept entries, so the N:M pattern cannot drift); the index
    metadata is a buffer.
    """

    weight_values: nn.Parameter
    weight_tail: nn.Parameter
    weight_indices: torch.Tensor

    def _init_packed(self, packed: NMPacked, bias: torch.Tensor | None, expected_ndim: int) -> None:
        if not isinstance(packed, NMPacked):
            raise TypeError(f"packed must be an NMPacked, got {type(packed).__name__}")
        if len(packed.shape) != expected_ndim or packed.dim != 1:
            raise ValueError(
                f"{type(self).__name__} needs a {expected_ndim}-D weight packed along dim=1, "
                f"got shape {tuple(packed.shape)} packed along dim={packed.dim}"
            )
        if bias is not None and bias.shape != (packed.shape[0],):
            raise ValueError(
                f"bias shape {tuple(bias.shape)} does not match {packed.shape[0]} outputs"
            )
        self.n = packed.n
        self.m = packed.m
        self.weight_shape = packed.shape
        self.weight_values = nn.Parameter(packed.values.detach().clone())
        self.weight_tail = nn.Parameter(packed.tail.detach().clone())
        self.register_buffer("weight_indices", packed.indices.detach().clone())
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias.detach().clone()))

    @property
    def packed(self) -> NMPacked:
        """The current weight as an :class:`NMPacked` (shares storage with the module)."""
        return NMPacked(
            values=self.weight_values,
            indices=self.weight_indices,
            tail=self.weight_tail,
            shape=self.weight_shape,
            dim=1,
            n=self.n,
            m=self.m,
        )

    @property
    def weight(self) -> torch.Tensor:
        """Dense weight rebuilt from the packed form (differentiable)."""
        return self.packed.unpack()


class NMLinear(_NMBase):
    """``nn.Linear`` whose weight is stored N:M-packed along ``in_features``."""

    def __init__(self, packed: NMPacked, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self._init_packed(packed, bias, expected_ndim=2)
        self.out_features, self.in_features = packed.shape

    @classmethod
    def from_dense(
        cls, linear: nn.Linear, n: int = 2, m: int = 4, prune: bool = False
    ) -> NMLinear:
        """Pack an ``nn.Linear`` (possibly masked with ``torch.nn.utils.prune``).

        ``prune`` has the meaning of :func:`pack`: without it the layer must
        already be N:M sparse along its input dimension.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        return cls(pack(linear.weight, n, m, dim=1, prune=prune), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, n={self.n}, m={self.m}"
        )


class NMConv2d(_NMBase):
    """``nn.Conv2d`` whose weight is N:M-packed along the input channels (dim 1).

    Groups are ``m`` consecutive input channels (within a convolution group)
    at a fixed output channel and kernel position, the layout of NVIDIA's
    2:4 sparse convolutions.
    """

    def __init__(
        self,
        packed: NMPacked,
        bias: torch.Tensor | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self._init_packed(packed, bias, expected_ndim=4)
        self.out_channels = packed.shape[0]
        self.in_channels = packed.shape[1] * groups
        self.kernel_size = tuple(packed.shape[2:])
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        if padding_mode != "zeros" and isinstance(self.padding, str):
            raise ValueError("string padding is only supported with padding_mode='zeros'")

    @classmethod
    def from_dense(
        cls, conv: nn.Conv2d, n: int = 2, m: int = 4, prune: bool = False
    ) -> NMConv2d:
        """Pack an ``nn.Conv2d`` (possibly masked with ``torch.nn.utils.prune``)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        return cls(
            pack(conv.weight, n, m, dim=1, prune=prune),
            conv.bias,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            padding_mode=conv.padding_mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.padding_mode != "zeros":
            ph, pw = self.padding  # type: ignore[misc]
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"bias={self.bias is not None}, n={self.n}, m={self.m}"
        )
