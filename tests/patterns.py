"""Models that exercise what real libraries write: each docstring names the library pattern.

Shared by test_record.py, test_attention.py, test_functional.py, test_scope.py and test_protect.py."""
import dataclasses, math
import torch, torch.nn as nn, torch.nn.functional as F

class C2fLike(nn.Module):
    """ultralytics C2f: chunk iterated in Python, shape check, dict output."""
    def __init__(s, c=16):
        super().__init__(); s.stem = nn.Conv2d(3, 2*c, 3, padding=1); s.cv1 = nn.Conv2d(2*c, 2*c, 1)
        s.m = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(2)); s.cv2 = nn.Conv2d(4*c, 2*c, 1); s.head = nn.Conv2d(2*c, 5, 1)
    def forward(s, x):
        if x.shape[2] % 2 != 0: raise ValueError("odd")
        x = F.silu(s.stem(x))
        y = list(s.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in s.m)
        return {"out": s.head(s.cv2(torch.cat(y, 1)))}

class SplitAttr(nn.Module):
    """ultralytics C2f.forward_split / C2PSA: split sizes read from module attributes."""
    def __init__(s, c=8):
        super().__init__(); s.c = c; s.stem = nn.Conv2d(3, 16, 1); s.cv1 = nn.Conv2d(16, 2*c, 1); s.m = nn.Conv2d(c, c, 3, padding=1); s.cv2 = nn.Conv2d(3*c, 4, 1)
    def forward(s, x):
        a, b = s.cv1(s.stem(x)).split((s.c, s.c), 1)
        return s.cv2(torch.cat([a, b, s.m(b)], 1))

@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: tuple

class HFSelfAttention(nn.Module):
    def __init__(s, hidden=32, heads=4):
        super().__init__()
        s.num_attention_heads = heads; s.attention_head_size = hidden // heads; s.all_head_size = heads * s.attention_head_size
        s.query = nn.Linear(hidden, s.all_head_size); s.key = nn.Linear(hidden, s.all_head_size); s.value = nn.Linear(hidden, s.all_head_size)
        s.dense = nn.Linear(s.all_head_size, hidden)
    def forward(s, hidden_states, attention_mask=None, **kwargs):
        b = hidden_states.shape[0]
        shape = (b, -1, s.num_attention_heads, s.attention_head_size)
        q = s.query(hidden_states).view(*shape).transpose(1, 2)
        k = s.key(hidden_states).view(*shape).transpose(1, 2)
        v = s.value(hidden_states).view(*shape).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(s.attention_head_size)
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = F.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.size()[:-2] + (s.all_head_size,))
        return s.dense(ctx)

class HFLayer(nn.Module):
    def __init__(s, hidden=32, heads=4):
        super().__init__(); s.attn = HFSelfAttention(hidden, heads); s.ln1 = nn.LayerNorm(hidden); s.ln2 = nn.LayerNorm(hidden)
        s.fc1 = nn.Linear(hidden, 4*hidden); s.fc2 = nn.Linear(4*hidden, hidden)
    def forward(s, x, mask=None):
        x = x + s.attn(s.ln1(x), mask)
        return x + s.fc2(F.gelu(s.fc1(s.ln2(x))))

class HFLike(nn.Module):
    """Hugging Face style: keyword inputs, embedding, attribute-sized head reshapes, dataclass output."""
    def __init__(s, vocab=50, hidden=32, heads=4, layers=2):
        super().__init__(); s.emb = nn.Embedding(vocab, hidden); s.pos = nn.Parameter(torch.randn(1, 16, hidden))
        s.layers = nn.ModuleList(HFLayer(hidden, heads) for _ in range(layers)); s.cls = nn.Linear(hidden, 3)
    def forward(s, input_ids=None, attention_mask=None, *args, **kwargs):
        if input_ids.dtype != torch.long: raise TypeError("ids")
        x = s.emb(input_ids) + s.pos[:, : input_ids.shape[1]]
        mask = None if attention_mask is None else (1.0 - attention_mask[:, None, None, :].float()) * -1e4
        hs = []
        for l in s.layers:
            x = l(x, mask); hs.append(x)
        return Out(logits=s.cls(x[:, 0]), hidden=tuple(hs))

class TimmAttention(nn.Module):
    def __init__(s, dim=32, heads=4):
        super().__init__(); s.num_heads = heads; s.head_dim = dim // heads; s.scale = s.head_dim ** -0.5
        s.qkv = nn.Linear(dim, dim * 3); s.proj = nn.Linear(dim, dim)
    def forward(s, x):
        B, N, C = x.shape
        qkv = s.qkv(x).reshape(B, N, 3, s.num_heads, s.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, scale=s.scale)
        x = x.transpose(1, 2).reshape(B, N, -1)
        return s.proj(x)

class TimmViT(nn.Module):
    def __init__(s, dim=32, heads=4, depth=2):
        super().__init__(); s.patch = nn.Conv2d(3, dim, 4, 4); s.cls_token = nn.Parameter(torch.zeros(1, 1, dim)); s.pos = nn.Parameter(torch.randn(1, 17, dim))
        s.blocks = nn.ModuleList(nn.ModuleDict(dict(n1=nn.LayerNorm(dim), attn=TimmAttention(dim, heads), n2=nn.LayerNorm(dim), fc1=nn.Linear(dim, 2*dim), fc2=nn.Linear(2*dim, dim))) for _ in range(depth))
        s.norm = nn.LayerNorm(dim); s.head = nn.Linear(dim, 10)
    def forward(s, x):
        x = s.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([s.cls_token.expand(x.shape[0], -1, -1), x], 1) + s.pos
        for b in s.blocks:
            x = x + b["attn"](b["n1"](x))
            x = x + b["fc2"](F.gelu(b["fc1"](b["n2"](x))))
        return s.head(s.norm(x)[:, 0])

class MHAViT(nn.Module):
    """torchvision ViT encoder block: nn.MultiheadAttention."""
    def __init__(s, dim=32, heads=4):
        super().__init__(); s.patch = nn.Conv2d(3, dim, 4, 4); s.ln1 = nn.LayerNorm(dim); s.att = nn.MultiheadAttention(dim, heads, batch_first=True)
        s.ln2 = nn.LayerNorm(dim); s.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim)); s.head = nn.Linear(dim, 10)
    def forward(s, x):
        x = s.patch(x).flatten(2).transpose(1, 2)
        y = s.ln1(x); y, _ = s.att(y, y, y, need_weights=False); x = x + y
        x = x + s.mlp(s.ln2(x))
        return s.head(x.mean(1))

class Shuffle(nn.Module):
    """ShuffleNet: view(b, g, c/g, h, w) -> transpose -> view."""
    def __init__(s):
        super().__init__(); s.a = nn.Conv2d(3, 16, 3, padding=1); s.bn = nn.BatchNorm2d(16); s.b = nn.Conv2d(16, 8, 1)
    def forward(s, x):
        x = F.relu(s.bn(s.a(x)))
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        return s.b(x)

class FShuffle(nn.Module):
    def __init__(s):
        super().__init__(); s.a = nn.Conv2d(3, 16, 3, padding=1); s.b = nn.Conv2d(16, 8, 1); s.c = nn.Conv2d(8, 32, 1); s.d = nn.Conv2d(8, 4, 1)
    def forward(s, x):
        x = F.channel_shuffle(s.a(x), 4)
        y = F.pixel_shuffle(s.c(s.b(x)), 2)
        return s.d(y)

class BNAct(nn.BatchNorm2d):
    """timm BatchNormAct2d: a BatchNorm2d subclass whose forward calls F.batch_norm."""
    def forward(s, x):
        x = F.batch_norm(x, s.running_mean, s.running_var, s.weight, s.bias, s.training, 0.1, s.eps)
        return F.relu(x)

class ConvSame(nn.Conv2d):
    """timm Conv2dSame: padding computed from the input's size, then F.conv2d."""
    def forward(s, x):
        ih, iw = x.size()[-2:]
        pad_h = max((math.ceil(ih / s.stride[0]) - 1) * s.stride[0] + (s.kernel_size[0] - 1) + 1 - ih, 0)
        pad_w = max((math.ceil(iw / s.stride[1]) - 1) * s.stride[1] + (s.kernel_size[1] - 1) + 1 - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, s.weight, s.bias, s.stride, (0, 0), s.dilation, s.groups)

class TimmLike(nn.Module):
    """timm: Conv2dSame (plain and depthwise) + BatchNormAct2d + GroupNorm."""
    def __init__(s):
        super().__init__(); s.a = ConvSame(3, 16, 3, stride=2); s.bn = BNAct(16); s.b = ConvSame(16, 16, 3, groups=16); s.bn2 = BNAct(16); s.gn = nn.GroupNorm(4, 16); s.c = nn.Conv2d(16, 4, 1)
    def forward(s, x):
        return s.c(s.gn(s.bn2(s.b(s.bn(s.a(x))))))

class LiteralView(nn.Module):
    """x.view(-1, 512): a hard-coded size must freeze, never ship a wrong model."""
    def __init__(s):
        super().__init__(); s.a = nn.Conv2d(3, 8, 3, padding=1); s.fc = nn.Linear(8 * 4 * 4, 3)
    def forward(s, x):
        x = F.adaptive_avg_pool2d(s.a(x), 4)
        if x.shape[0] > 0:
            x = x.view(-1, 128)
        return s.fc(x)

class Fire(nn.Module):
    """torchvision SqueezeNet Fire: 1x1 squeeze, then a 1x1 and a 3x3 expand conv concatenated."""
    def __init__(s, cin, squeeze, e1, e3):
        super().__init__(); s.squeeze = nn.Conv2d(cin, squeeze, 1); s.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        s.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
    def forward(s, x):
        x = F.relu(s.squeeze(x))
        return torch.cat([F.relu(s.expand1x1(x)), F.relu(s.expand3x3(x))], 1)

class SqueezeNetLike(nn.Module):
    """torchvision squeezenet1_1, shrunk: conv stem, three Fire modules, 1x1-conv classifier, pooled."""
    def __init__(s, classes=10):
        super().__init__(); s.stem = nn.Conv2d(3, 16, 3, stride=2)
        s.fires = nn.Sequential(Fire(16, 8, 16, 16), Fire(32, 8, 16, 16), Fire(32, 16, 32, 32)); s.classifier = nn.Conv2d(64, classes, 1)
    def forward(s, x):
        x = s.fires(F.max_pool2d(F.relu(s.stem(x)), 3, 2, ceil_mode=True))
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(s.classifier(x)), 1), 1)

class BasicConv(nn.Sequential):
    """torchvision GoogLeNet BasicConv2d: conv (no bias) + BatchNorm + ReLU."""
    def __init__(s, cin, cout, k):
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

class Inception(nn.Module):
    """torchvision GoogLeNet Inception: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; maxpool -> 1x1; concatenated."""
    def __init__(s, cin, c1, c3r, c3, c5r, c5, cp):
        super().__init__(); s.branch1 = BasicConv(cin, c1, 1)
        s.branch2 = nn.Sequential(BasicConv(cin, c3r, 1), BasicConv(c3r, c3, 3))
        s.branch3 = nn.Sequential(BasicConv(cin, c5r, 1), BasicConv(c5r, c5, 3))
        s.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), BasicConv(cin, cp, 1))
    def forward(s, x):
        return torch.cat([s.branch1(x), s.branch2(x), s.branch3(x), s.branch4(x)], 1)

class GoogLeNetLike(nn.Module):
    """torchvision googlenet (aux_logits=False), shrunk: stem, two Inception modules, pooled Linear."""
    def __init__(s, classes=10):
        super().__init__(); s.stem = BasicConv(3, 16, 3)
        s.inc1 = Inception(16, 8, 8, 16, 4, 8, 8); s.inc2 = Inception(40, 16, 8, 16, 4, 8, 8); s.fc = nn.Linear(48, classes)
    def forward(s, x):
        x = s.inc2(s.inc1(F.max_pool2d(s.stem(x), 2)))
        return s.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Dense(nn.Module):
    """A user's own fully connected layer (weight (out, in), F.linear)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_out, n_in))
        self.register_parameter("bias", None)  # as a Linear without bias: the Linear spec reads it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight)
