"""Attention: whole heads prune with q, k, v and the output projection together, and every
attribute the forward reads follows; the oracle: removing a head equals zeroing its slice of the
output projection's input (checked on the groups without LayerNorm, which mixes channels)."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

import surgeon

import patterns as P  # noqa: E402

IMG = torch.randn(2, 3, 16, 16)
IDS = {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}


def heads_group(graph: surgeon.ChannelGraph, layer: str) -> surgeon.Group:
    return next(g for g in graph.groups if any(p.ref == f"{layer}.weight" and p.dim == 0 for p in g.params))


def prune_exact(model: nn.Module, x, ratio: float = 0.5) -> surgeon.Plan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", surgeon.FrozenGroupWarning)
        plan = surgeon.plan(model, x, ratio=ratio)
    plan.cuts = [c for c in plan.cuts if not c.group.mixing]
    assert plan.cuts
    plan.apply(verify=True)
    return plan


def test_hugging_face_style_heads_and_attributes():
    m = P.HFLike().eval()
    graph = surgeon.trace(m, IDS)
    g = heads_group(graph, "layers.0.attn.query")
    assert g.prunable and g.n == 4  # 4 heads of 8: whole heads, not 32 single features
    members = {p.ref for p in g.params}
    assert {"layers.0.attn.key.weight", "layers.0.attn.value.weight", "layers.0.attn.dense.weight"} <= members
    prune_exact(m, IDS)
    a = m.layers[0].attn
    assert a.num_attention_heads == 2 and a.attention_head_size == 8 and a.all_head_size == 16
    assert a.query.out_features == 16 and a.dense.in_features == 16
    assert type(a.num_attention_heads) is int


def test_timm_style_packed_qkv_reshape_unbind_sdpa():
    m = P.TimmViT().eval()
    graph = surgeon.trace(m, IMG)
    g = heads_group(graph, "blocks.0.attn.qkv")
    assert g.prunable and g.n == 4
    prune_exact(m, IMG)
    a = m.blocks[0]["attn"]
    assert a.num_heads == 2 and a.head_dim == 8 and a.qkv.out_features == 48 and a.proj.in_features == 16


def test_residual_width_and_mlp_of_a_transformer_prune_too():
    m = P.TimmViT().eval()
    p0 = sum(p.numel() for p in m.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", surgeon.FrozenGroupWarning)
        surgeon.prune(m, IMG, 0.5)
    assert m.patch.out_channels == 16 and m.blocks[0]["n1"].normalized_shape == (16,)
    assert m.blocks[0]["fc1"].out_features == 32
    assert sum(p.numel() for p in m.parameters()) < 0.35 * p0
    assert m(IMG).shape == (2, 10)


class MHAOnly(nn.Module):
    """nn.MultiheadAttention without LayerNorm, so its group is exactly zeroable."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.att = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        y, _ = self.att(x, x, x, need_weights=False)
        return self.head((x + y).mean(1))


def test_multihead_attention_module_prunes_whole_heads_exactly(check):
    m = MHAOnly()
    graph = surgeon.trace(m, IMG)
    g = heads_group(graph, "patch")
    assert g.n == 4  # residual width is tied to the module's inner width: head-sized blocks
    check(m, IMG, 0.5)
    assert m.att.num_heads == 2 and m.att.embed_dim == 16 and m.att.head_dim == 8
    assert m.att.in_proj_weight.shape == (48, 16) and m.att.out_proj.weight.shape == (16, 16)


class DefaultScale(nn.Module):
    """F.scaled_dot_product_attention with the default scale 1/sqrt(head_dim), heads split by
    module attributes: whole heads prune exactly (the scale does not change); q/k features inside
    a head are summed over, so they never prune on their own."""

    def __init__(self):
        super().__init__()
        self.heads, self.hd = 4, 4
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        b, n, _ = x.shape
        if n < 1:
            raise ValueError("empty sequence")
        q, k, v = (f(x).view(b, n, self.heads, self.hd).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return self.out(self.o(y))


def test_default_scale_sdpa_prunes_whole_heads_exactly(check):
    m = DefaultScale().eval()
    x = torch.randn(2, 5, 16)
    g = heads_group(surgeon.trace(m, x), "q")
    assert g.prunable and g.n == 4 and {"k.weight", "v.weight", "o.weight"} <= {p.ref for p in g.params}
    check(m, x, 0.5)
    assert m.heads == 2 and m.hd == 4 and m.q.out_features == 8


def test_attention_macs_are_predicted_exactly_when_heads_go():
    """The plan's MACs after removing heads (q k^T and the weights times v both shrink with them)
    equal a fresh count of the pruned model."""
    from surgeon.count import count

    class Heads(DefaultScale):  # no shape unpacking or checks: plain fx traces it, so count does too
        def forward(self, x):
            b, n = x.shape[0], x.shape[1]
            q, k, v = (f(x).view(b, n, self.heads, self.hd).transpose(1, 2) for f in (self.q, self.k, self.v))
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
            return self.out(self.o(y))

    m = Heads().eval()
    x = torch.randn(2, 5, 16)
    p = surgeon.plan(m, x, ratio=0.5)
    before = count(m, x)
    assert before.method == "fx"
    assert before.by_kind()["attention"] == 2 * 4 * 5 * 5 * (4 + 4) and p.before.macs == before.macs
    p.apply(verify=True)
    after = count(m, x)
    assert after.by_kind()["attention"] == 2 * 2 * 5 * 5 * (4 + 4)
    assert p.after.macs == after.macs


def test_matmul_passes_rows_and_columns_and_fixes_the_summed_dim():
    class Outer(nn.Module):
        """a(x)^T @ b(x): b's features become the columns (they pass on to a Linear); a's become rows,
        summed by .sum(1) afterwards; the sequence is summed over by the product."""

        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.a(x).transpose(1, 2) @ self.b(x)).sum(1)

    class Inner(nn.Module):
        """a(x) @ b(x)^T: the features are summed over: frozen, with the reason."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)

        def forward(self, x):
            return (self.a(x) @ self.b(x).transpose(1, 2)).sum(-1)

    x = torch.randn(2, 5, 4)
    outer = surgeon.trace(Outer(), x)
    assert heads_group(outer, "b").prunable
    assert "reduced over by .sum" in heads_group(outer, "a").frozen_reason()
    inner = surgeon.trace(Inner(), x)
    for name in ("a", "b"):
        g = heads_group(inner, name)
        assert not g.prunable and "summed over in operator.matmul" in g.frozen_reason()


class InferredHeadDim(nn.Module):
    """timm Swin style: qkv.reshape(B, N, 3, self.num_heads, -1): the -1 is inferred from the
    rest, so whole heads (the attribute) prune and the head dim adapts."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 2)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.out(self.proj(y.transpose(1, 2).reshape(B, N, -1)))


def test_inferred_head_dim_prunes_whole_heads(check):
    m = InferredHeadDim()
    x = torch.randn(2, 5, 16)
    assert heads_group(surgeon.trace(m, x), "qkv").n == 4
    check(m, x, 0.5)
    assert m.num_heads == 2 and m.qkv.out_features == 24 and m.proj.in_features == 8
