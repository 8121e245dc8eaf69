"""Functional forms with a module's own tensors (timm's BatchNormAct2d / Conv2dSame, F.group_norm,
nn.Embedding) and the reshapes real models write (channel shuffle, pixel shuffle, stack, split
sizes read from attributes, integer indexing, expand)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon

import patterns as P  # noqa: E402

IMG = torch.randn(2, 3, 16, 16)


def group_of(graph: surgeon.ChannelGraph, ref: str, dim: int = 0) -> surgeon.Group:
    return next(g for g in graph.groups if surgeon.Pos("p", ref, dim) in g.channel_of)


def test_batchnorm_and_conv_subclasses_calling_functional_forms(check):
    m = P.TimmLike()
    check(m, IMG, 0.5)
    assert m.a.out_channels == 8 and m.a.weight.shape[0] == 8
    assert m.bn.num_features == 8 and m.bn.running_mean.shape == (8,)
    assert m.b.in_channels == 8 and m.b.groups == 8 and m.b.weight.shape == (8, 1, 3, 3)
    assert m.gn.num_groups * (m.gn.num_channels // m.gn.num_groups) == m.gn.num_channels


def test_group_norm_prunes_whole_groups_exactly(check):
    class GN(nn.Module):
        """GroupNorm(4, 16): each group normalised on its own, so whole groups go (exact)."""

        def __init__(self):
            super().__init__()
            self.a, self.gn, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Conv2d(16, 2, 1)

        def forward(self, x):
            return self.b(F.relu(self.gn(self.a(x))))

    m = GN()
    assert group_of(surgeon.trace(m, IMG), "a.weight").n == 4
    check(m, IMG, 0.5)
    assert m.gn.num_groups == 2 and m.gn.num_channels == 8


def test_group_norm_with_a_literal_group_count_is_frozen():
    class Literal(nn.Module):
        """F.group_norm(x, 4, ...) with 4 typed in the code: the surgery could not update it."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 2, 1)

        def forward(self, x):
            return self.b(F.group_norm(self.a(x), 4))

    with pytest.warns(surgeon.FrozenGroupWarning, match="group count the surgery cannot update"):
        graph = surgeon.trace(Literal(), IMG)
    assert not group_of(graph, "a.weight").prunable


def test_embedding_dim_prunes(check):
    class Emb(nn.Module):
        """nn.Embedding -> Linear: the embedding dim is a channel."""

        def __init__(self):
            super().__init__()
            self.e, self.fc = nn.Embedding(20, 8), nn.Linear(8, 3)

        def forward(self, ids):
            return self.fc(self.e(ids)).mean(1)

    m = Emb()
    ids = torch.randint(0, 20, (2, 5))
    check(m, ids, 0.5)
    assert m.e.embedding_dim == 4 and m.e.weight.shape == (20, 4) and m.fc.in_features == 4


@pytest.mark.parametrize("model", [P.Shuffle, P.FShuffle], ids=["view-transpose-view", "F.channel_shuffle+pixel_shuffle"])
def test_channel_shuffle_is_modelled(check, model):
    m = model()
    graph = surgeon.trace(m, IMG)
    assert group_of(graph, "a.weight").prunable
    check(m, IMG, 0.5)
    assert m.a.out_channels == 8


def test_shuffle_keeps_groups_equal():
    """view(b, 2, c // 2, h, w): slot j of both groups is one channel."""
    graph = surgeon.trace(P.Shuffle(), IMG)
    ch = group_of(graph, "a.weight").channel_of[surgeon.Pos("p", "a.weight", 0)]
    assert (ch[:8] == ch[8:]).all()


def test_split_sizes_from_module_attributes(check):
    m = P.SplitAttr()
    check(m, IMG, 0.5, criterion="random")
    assert m.c == m.cv1.out_channels // 2 and type(m.c) is int
    assert m.m.in_channels == m.c


def test_stack_and_integer_indexing_and_expand(check):
    class Mixed(nn.Module):
        """torch.stack of two branches, x[:, 0] after it, a learned token expanded to the batch."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.tok = nn.Parameter(torch.randn(1, 8, 1, 1))
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            s = torch.stack([self.a(x), self.b(x)], 1)  # (B, 2, 8, H, W)
            return self.c(s[:, 0] + s[:, 1] + self.tok.expand(x.shape[0], -1, -1, -1))

    m = Mixed()
    check(m, IMG, 0.5)
    assert m.a.out_channels == m.b.out_channels == m.c.in_channels == 4 and m.tok.shape == (1, 4, 1, 1)


def test_tensor_attributes_T_and_mT(check):
    class TokenMix(nn.Module):
        """x.mT swaps the last two dims (a token-mixing MLP): channels pass through it twice."""

        def __init__(self):
            super().__init__()
            self.a, self.mix, self.b = nn.Linear(4, 8), nn.Linear(5, 5), nn.Linear(8, 2)

        def forward(self, x):  # (B, 5 tokens, 4)
            y = self.a(x)
            return self.b(self.mix(y.mT).mT + y)

    m = TokenMix()
    check(m, torch.randn(2, 5, 4), 0.5)
    assert m.a.out_features == 4 and m.b.in_features == 4 and m.mix.in_features == 5


def test_reshape_as_follows_the_shape_giver(check):
    class BN1d(nn.Module):
        """LeViT style: BatchNorm1d over (B*N, C), then reshape_as(x) back to (B, N, C)."""

        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x)
            return self.b(self.bn(y.flatten(0, 1)).reshape_as(y))

    m = BN1d().eval()
    check(m, torch.randn(2, 5, 4), 0.5)
    assert m.a.out_features == 4 and m.bn.num_features == 4


def test_weight_standardisation_keeps_the_input_channels():
    class StdConv(nn.Conv2d):
        """timm's ScaledStdConv2d: the weight is batch-normed as (1, out, in*k*k) in training mode,
        so every filter's statistics run over its input channels: those must stay."""

        def forward(self, x):
            w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                             training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), StdConv(8, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(F.relu(self.b(F.relu(self.a(x)))))

    graph = surgeon.trace(Net(), IMG)
    g = group_of(graph, "a.weight")  # a's outputs are b's input channels
    assert not g.prunable
    assert any("statistics computed over it by F.batch_norm" in f.reason for gr in graph.groups for f in gr.fixed)
    assert group_of(graph, "b.weight").prunable  # b's filters still go whole


def test_split_sizes_from_a_list_attribute_and_equal_pieces(check):
    class Mixed(nn.Module):
        """timm's MixedConv2d (``split(x, self.splits, 1)``, a list attribute, each piece its own
        kernel size) and Res2Net (``split(x, self.width, 1)``, equal pieces)."""

        def __init__(self):
            super().__init__()
            self.splits, self.width = [4, 12], 4
            self.a = nn.Conv2d(3, 16, 1)
            self.k3, self.k5 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(12, 12, 5, padding=2)
            self.b = nn.Conv2d(16, 16, 1)
            self.c = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            p, q = torch.split(self.a(x), self.splits, 1)
            y = self.b(torch.cat([self.k3(p), self.k5(q)], 1))
            pieces = torch.split(y, self.width, 1)
            return self.c(torch.cat([pieces[0]] + [t * 2 for t in pieces[1:]], 1))

    m = Mixed()
    check(m, IMG, 0.5)
    assert m.splits == [m.k3.in_channels, m.k5.in_channels] and type(m.splits[0]) is int
    assert m.width * 4 == m.b.out_channels and type(m.width) is int
