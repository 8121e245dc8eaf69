"""Tests for surgeon.nm: N:M patterns, mask optimality, packing and N:M modules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from surgeon.mask import mask
from surgeon.nm import NMConv2d, NMLinear, NMPacked, nm_mask, nm_patterns, pack

NM_PAIRS = [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8)]


def _groups(t: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """Complete groups of m along dim as rows [G, m] (independent of surgeon.nm)."""
    moved = t.movedim(dim, -1)
    full = moved.shape[-1] // m * m
    return moved[..., :full].reshape(-1, m)


def _tail(t: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    moved = t.movedim(dim, -1)
    full = moved.shape[-1] // m * m
    return moved[..., full:]


# --------------------------------------------------------------------------- patterns


@pytest.mark.parametrize("n,m", NM_PAIRS)
def test_patterns_are_all_distinct_n_of_m(n: int, m: int) -> None:
    patterns = nm_patterns(n, m)
    assert patterns.dtype == torch.bool
    assert patterns.shape == (math.comb(m, n), m)
    assert (patterns.sum(dim=1) == n).all()
    assert len({tuple(row.tolist()) for row in patterns}) == math.comb(m, n)


@pytest.mark.parametrize(
    "n,m,exc,match",
    [
        (4, 4, ValueError, r"1 <= n < m.*n=4, m=4"),
        (5, 4, ValueError, r"n=5, m=4"),
        (0, 4, ValueError, r"n=0"),
        (1, 1, ValueError, r"m must be >= 2"),
        (2.0, 4, TypeError, r"n must be an int"),
        (2, "4", TypeError, r"m must be an int"),
        (16, 32, ValueError, r"MAX_PATTERNS"),
    ],
)
def test_patterns_reject_bad_nm(n: object, m: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        nm_patterns(n, m)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- nm_mask


@pytest.mark.parametrize("n,m", NM_PAIRS)
@pytest.mark.parametrize(
    "shape,dim", [((6, 16), 1), ((16, 6), 0), ((4, 8, 3, 3), 1), ((5, 19), 1), ((3, 2, 10), -1)]
)
def test_mask_keeps_exactly_n_per_group_and_tail_dense(
    n: int, m: int, shape: tuple[int, ...], dim: int
) -> None:
    torch.manual_seed(0)
    w = torch.randn(shape)
    keep = nm_mask(w, n, m, dim=dim)
    assert keep.shape == w.shape and keep.dtype == torch.bool
    assert (_groups(keep, m, dim).sum(dim=1) == n).all()
    assert _tail(keep, m, dim).all()


def _brute_force_best(group: list[float], n: int) -> float:
    return max(sum(abs(group[i]) for i in combo) for combo in itertools.combinations(range(len(group)), n))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    nm=st.sampled_from(NM_PAIRS),
    rows=st.integers(1, 4),
    n_groups=st.integers(1, 3),
)
def test_mask_picks_optimal_pattern_vs_brute_force(
    data: st.DataObject, nm: tuple[int, int], rows: int, n_groups: int
) -> None:
    n, m = nm
    values = data.draw(
        st.lists(
            st.floats(-100, 100, allow_nan=False, width=32),
            min_size=rows * n_groups * m,
            max_size=rows * n_groups * m,
        )
    )
    w = torch.tensor(values, dtype=torch.float32).reshape(rows, n_groups * m)
    keep = nm_mask(w, n, m, dim=1)
    kept = (w.abs() * keep).reshape(-1, m).sum(dim=1).double()
    best = torch.tensor(
        [_brute_force_best(g, n) for g in w.reshape(-1, m).double().tolist()], dtype=torch.float64
    )
    assert torch.allclose(kept, best, rtol=1e-6, atol=1e-6)
    assert (keep.reshape(-1, m).sum(dim=1) == n).all()


def test_mask_ties_are_deterministic() -> None:
    w = torch.ones(3, 8)
    assert torch.equal(nm_mask(w, 2, 4), nm_mask(w.clone(), 2, 4))
    assert (nm_mask(w, 2, 4).reshape(-1, 4).sum(dim=1) == 2).all()


@pytest.mark.parametrize("dim,exc,match", [(2, ValueError, "out of range"), (1.0, TypeError, "dim must be an int")])
def test_mask_rejects_bad_dim(dim: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        nm_mask(torch.randn(4, 8), 2, 4, dim=dim)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pack / unpack


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("shape,dim", [((6, 16), 1), ((16, 6), 0), ((8, 12, 3, 3), 1), ((5, 19), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_pack_round_trip_is_exact(
    n: int, m: int, shape: tuple[int, ...], dim: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(1)
    w = torch.randn(shape).to(dtype)
    masked = w * nm_mask(w, n, m, dim=dim)
    for packed in (pack(w, n, m, dim=dim, prune=True), pack(masked, n, m, dim=dim)):
        out = packed.unpack()
        assert out.dtype == dtype and out.shape == w.shape
        assert torch.equal(out, masked)


@pytest.mark.parametrize("shape,dim", [((6, 16), 1), ((4, 8, 3, 3), 1), ((5, 10), 1)])
def test_packed_layout(shape: tuple[int, ...], dim: int) -> None:
    w = torch.randn(shape)
    packed = pack(w, 2, 4, dim=dim, prune=True)
    moved = list(w.movedim(dim, -1).shape)
    groups, rem = divmod(moved[-1], 4)
    assert packed.values.shape == (*moved[:-1], groups, 2)
    assert packed.indices.shape == packed.values.shape
    assert packed.indices.dtype == torch.uint8
    assert int(packed.indices.max()) < 4
    assert packed.tail.shape == (*moved[:-1], rem)
    assert (packed.shape, packed.dim, packed.n, packed.m) == (w.shape, dim, 2, 4)


def test_pack_handles_groups_with_fewer_than_n_nonzeros() -> None:
    w = torch.zeros(3, 8)
    w[0, 1] = 5.0  # one non-zero in a 2:4 group, the rest all-zero groups
    packed = pack(w, 2, 4)
    assert torch.equal(packed.unpack(), w)


@settings(max_examples=40, deadline=None)
@given(
    nm=st.sampled_from(NM_PAIRS),
    rows=st.integers(1, 5),
    cols=st.integers(1, 20),
    seed=st.integers(0, 2**16),
    sparsify=st.floats(0.0, 1.0),
)
def test_pack_round_trip_property(
    nm: tuple[int, int], rows: int, cols: int, seed: int, sparsify: float
) -> None:
    n, m = nm
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    w = w * (torch.rand(rows, cols, generator=gen) >= sparsify)  # extra zeros, any amount
    masked = w * nm_mask(w, n, m)
    assert torch.equal(pack(masked, n, m).unpack(), masked)


def test_pack_rejects_weight_violating_pattern() -> None:
    w = torch.randn(4, 8) + 10.0  # dense: every group has 4 non-zeros
    with pytest.raises(ValueError, match=r"violates the 2:4 pattern.*prune=True"):
        pack(w, 2, 4)


@pytest.mark.parametrize(
    "n,m,dtype,expected",
    [(2, 4, torch.float32, 16 / 10), (2, 4, torch.float16, 8 / 6), (1, 4, torch.float32, 16 / 5)],
)
def test_nbytes_smaller_than_dense(n: int, m: int, dtype: torch.dtype, expected: float) -> None:
    w = torch.randn(32, 64).to(dtype)
    packed = pack(w, n, m, prune=True)
    assert packed.dense_nbytes == w.numel() * w.element_size()
    assert packed.nbytes < packed.dense_nbytes
    assert packed.compression_ratio == pytest.approx(expected)


def test_nbytes_counts_dense_tail() -> None:
    packed = pack(torch.randn(4, 10), 2, 4, prune=True)  # 2 groups + tail of 2 per row
    assert packed.nbytes == 4 * 2 * 2 * 4 + 4 * 2 * 2 * 1 + 4 * 2 * 4


def test_packed_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="must share a shape"):
        NMPacked(
            values=torch.zeros(2, 3, 2),
            indices=torch.zeros(2, 3, 3, dtype=torch.uint8),
            tail=torch.zeros(2, 0),
            shape=torch.Size([2, 12]),
            dim=1,
            n=2,
            m=4,
        )


# --------------------------------------------------------------------------- modules


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,m,in_features", [(2, 4, 16), (1, 4, 16), (2, 4, 18), (4, 8, 24)])
def test_nm_linear_matches_masked_dense(bias: bool, n: int, m: int, in_features: int) -> None:
    torch.manual_seed(2)
    dense = nn.Linear(in_features, 7, bias=bias)
    mask(dense, granularity=f"{n}:{m}")
    sparse = NMLinear.from_dense(dense, n, m)
    x = torch.randn(5, 3, in_features)
    assert torch.allclose(sparse(x), dense(x), rtol=1e-6, atol=1e-6)
    assert sparse.packed.nbytes < sparse.packed.dense_nbytes


CONV_CASES = [
    dict(in_channels=8, out_channels=6, kernel_size=3),
    dict(in_channels=8, out_channels=6, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=16, out_channels=8, kernel_size=(3, 1), groups=2, dilation=2, padding="same"),
    dict(in_channels=8, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=10, out_channels=4, kernel_size=1),  # C_in not a multiple of 4: dense tail
]


@pytest.mark.parametrize("kwargs", CONV_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_nm_conv2d_matches_masked_dense(kwargs: dict) -> None:
    torch.manual_seed(3)
    dense = nn.Conv2d(**kwargs)
    mask(dense, granularity="2:4")
    sparse = NMConv2d.from_dense(dense, 2, 4)
    x = torch.randn(2, kwargs["in_channels"], 9, 11)
    assert torch.allclose(sparse(x), dense(x), rtol=1e-5, atol=1e-6)


def test_from_dense_prune_true_masks_unpruned_layer() -> None:
    torch.manual_seed(4)
    dense = nn.Linear(12, 5)
    sparse = NMLinear.from_dense(dense, 2, 4, prune=True)
    expected = F.linear(torch.eye(12), dense.weight * nm_mask(dense.weight, 2, 4), dense.bias)
    assert torch.allclose(sparse(torch.eye(12)), expected, atol=1e-6)


@pytest.mark.parametrize("layer", [nn.Linear(8, 4), nn.Conv2d(8, 4, 3)])
def test_from_dense_requires_nm_weight_without_prune(layer: nn.Module) -> None:
    cls = NMLinear if isinstance(layer, nn.Linear) else NMConv2d
    with pytest.raises(ValueError, match="violates the 2:4 pattern"):
        cls.from_dense(layer, 2, 4)


@pytest.mark.parametrize(
    "cls,layer", [(NMLinear, nn.Conv2d(4, 4, 1)), (NMConv2d, nn.Conv1d(4, 4, 1)), (NMConv2d, nn.Linear(4, 4))]
)
def test_from_dense_rejects_wrong_layer_type(cls: type, layer: nn.Module) -> None:
    with pytest.raises(TypeError, match="expected an nn"):
        cls.from_dense(layer, 2, 4, prune=True)


def test_nm_linear_finetuning_keeps_pattern() -> None:
    torch.manual_seed(5)
    sparse = NMLinear.from_dense(nn.Linear(16, 4), 2, 4, prune=True)
    before = sparse.weight.detach() == 0
    opt = torch.optim.SGD(sparse.parameters(), lr=0.1)
    sparse(torch.randn(8, 16)).pow(2).sum().backward()
    assert sparse.weight_values.grad is not None
    opt.step()
    after = sparse.weight.detach()
    assert torch.equal(after == 0, before)
    assert (after.reshape(-1, 4).ne(0).sum(dim=1) <= 2).all()


def test_nm_module_state_moves_with_to_and_state_dict() -> None:
    sparse = NMConv2d.from_dense(nn.Conv2d(8, 4, 3), 2, 4, prune=True).to(torch.float64)
    assert sparse.weight_values.dtype == torch.float64
    assert sparse.weight_indices.dtype == torch.uint8
    assert {"weight_values", "weight_indices", "weight_tail", "bias"} <= set(sparse.state_dict())
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    assert sparse(x).dtype == torch.float64
