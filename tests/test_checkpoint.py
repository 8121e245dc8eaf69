"""surgeon.save / surgeon.load: a pruned model comes back into a fresh instance with every size
attribute the surgery changed, for built-in layers and for layers a user registers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon import registry

IDS = torch.tensor([[1, 4, 2, 9], [0, 3, 3, 7]])
IMG = torch.randn(2, 3, 8, 8)


class AllLayers(nn.Module):
    """Every built-in layer spec on a path that prunes: Embedding, MultiheadAttention, LayerNorm,
    Linear on the tokens; Conv2d, BatchNorm2d, depthwise Conv2d, InstanceNorm2d, ConvTranspose2d,
    GroupNorm, PReLU on the image; Conv1d reading both."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 12)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.gn = nn.GroupNorm(4, 8)
        self.act = nn.PReLU(8)
        self.head = nn.Conv2d(8, 12, 1)
        self.c1 = nn.Conv1d(12, 6, 1)

    def forward(self, ids: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        t = self.emb(ids)
        y, _ = self.att(t, t, t, need_weights=False)
        t = self.fc(self.ln(t + y))
        x = self.act(self.gn(self.up(self.inorm(self.dw(self.bn(self.conv(img)))))))
        z = self.head(x).mean((2, 3))
        return self.c1((t.mean(1) + z).unsqueeze(-1))


def size_attrs(model: nn.Module) -> dict[str, dict[str, object]]:
    """Every module's int / tuple attributes (the sizes a forward may read)."""
    return {name: {k: v for k, v in vars(m).items()
                   if not k.startswith("_") and isinstance(v, (int, tuple)) and not isinstance(v, bool)}
            for name, m in model.named_modules()}


def test_round_trip_restores_every_attribute_the_surgery_changed(tmp_path):
    torch.manual_seed(0)
    m, fresh = AllLayers().eval(), AllLayers().eval()
    before = size_attrs(m)
    surgeon.prune(m, (IDS, IMG), 0.5)
    after = size_attrs(m)
    changed = {n for n in after if after[n] != before[n]}
    assert changed == {"emb", "att", "att.out_proj", "ln", "fc", "conv", "bn", "dw", "inorm", "up", "gn",
                       "act", "head", "c1"}
    assert (m.emb.embedding_dim, m.att.num_heads, m.dw.groups, m.gn.num_groups) == (8, 2, 4, 2)

    surgeon.load(fresh, surgeon.save(m, tmp_path / "pruned.pt"))
    assert size_attrs(fresh) == after
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDS, IMG), m(IDS, IMG))


class Vocab(nn.Module):
    """A user's own embedding table (not an nn.Embedding subclass), registered through the public
    ``register_module`` with the built-in Embedding spec."""

    def __init__(self, n: int = 10, dim: int = 16) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = n, dim
        self.weight = nn.Parameter(torch.randn(n, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class Tagger(nn.Module):
    """Vocab -> Linear: the embedding dim is one prunable group."""

    def __init__(self) -> None:
        super().__init__()
        self.vocab, self.fc = Vocab(), nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.vocab(ids))


@pytest.fixture
def vocab_registered(monkeypatch):
    """Vocab registered as a new user would; the registry is restored after the test."""
    monkeypatch.setattr(registry, "_MODULES", dict(registry._MODULES))
    spec = registry.layer_spec(nn.Embedding(1, 1))
    registry.register_module(Vocab, spec.couple, layer=spec)


def test_user_registered_layer_round_trips(tmp_path, vocab_registered):
    torch.manual_seed(0)
    m, fresh = Tagger().eval(), Tagger().eval()
    surgeon.prune(m, IDS, 0.5)
    assert m.vocab.weight.shape == (10, 8) and m.vocab.embedding_dim == 8
    surgeon.load(fresh, surgeon.save(m, tmp_path / "pruned.pt"))
    assert fresh.vocab.weight.shape == (10, 8) and fresh.vocab.embedding_dim == 8
    assert fresh.fc.in_features == 8
    torch.testing.assert_close(fresh(IDS), m(IDS))


def test_load_checks_user_registered_layers(tmp_path, vocab_registered):
    """A file whose sizes disagree with its tensors is refused, for a registered type too, and the
    fresh model is left as it was."""
    torch.manual_seed(0)
    m, fresh = Tagger().eval(), Tagger().eval()
    surgeon.prune(m, IDS, 0.5)
    blob = torch.load(surgeon.save(m, tmp_path / "pruned.pt"), weights_only=True)
    blob["layers"]["vocab"]["embedding_dim"] = 16
    torch.save(blob, tmp_path / "bad.pt")
    weight = fresh.vocab.weight
    with pytest.raises(ValueError, match=r"loaded layers disagree with their tensors: vocab: "
                                         r"num_embeddings/embedding_dim=10/16 vs weight \(10, 8\)"):
        surgeon.load(fresh, tmp_path / "bad.pt")
    assert fresh.vocab.weight is weight and fresh.vocab.embedding_dim == 16


def test_round_trip_restores_ints_no_layer_spec_names(tmp_path):
    """A Hugging Face style attention block: the surgery rewrites num_attention_heads,
    attention_head_size and all_head_size (module ints its forward reads as sizes, named by no
    layer spec); a fresh instance loaded from the file gets them too and computes the same."""
    import patterns as P
    from test_attention import IDS

    torch.manual_seed(0)
    m = P.HFLike().eval()
    fresh = P.HFLike().eval()
    with pytest.warns(surgeon.FrozenGroupWarning):
        surgeon.prune(m, IDS, 0.5)
    a = m.layers[0].attn
    assert (a.num_attention_heads, a.attention_head_size, a.all_head_size) == (2, 8, 16)
    surgeon.load(fresh, surgeon.save(m, tmp_path / "pruned.pt"))
    b = fresh.layers[0].attn
    assert (b.num_attention_heads, b.attention_head_size, b.all_head_size) == (2, 8, 16)
    assert type(b.num_attention_heads) is int
    with torch.no_grad():
        torch.testing.assert_close(fresh(**IDS).logits, m(**IDS).logits)
