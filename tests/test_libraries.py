"""Models built by the libraries users deploy from, out of the box: no wrapper, no leaf list,
random init from the libraries' own configs (nothing is downloaded). Each library is an optional
extra; its tests skip cleanly when it is not installed (``pip install -e .[models]``, see README).

For each model: plan + apply at ratio 0.5, surgical equivalence on the exactly-zeroable groups
(LayerNorm mixes channels: those groups are checked by shapes and ONNX parity), the model still
runs, and where it is cheap, ONNX Runtime parity.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import surgeon


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def call(m: nn.Module, x):
    return m(**x) if isinstance(x, dict) else m(x)


def prune_checked(model: nn.Module, x, ratio: float = 0.5, **kw) -> float:
    """Exact check on a copy (non-mixing groups only), then the full prune; returns params kept."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = copy.deepcopy(model)
        plan = surgeon.plan(exact, x, ratio=ratio, **kw)
        plan.cuts = [c for c in plan.cuts if not c.group.mixing]
        assert plan.cuts, "no exactly-zeroable group was cut"
        plan.apply(verify=True)
        p0 = params(model)
        surgeon.plan(model, x, ratio=ratio, **kw).apply()
    with torch.no_grad():
        call(model, x)
    return params(model) / p0


def test_yolov8n_detect_out_of_the_box(tmp_path):
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    m = tasks.DetectionModel("yolov8n.yaml", verbose=False)
    x = torch.randn(1, 3, 160, 160)
    kept_all = prune_checked(copy.deepcopy(m), x)  # every output keeps its shape
    kept = prune_checked(m, x, keep_outputs=[0])  # the detections; the head's feature maps may shrink
    # measured 0.253 / 0.324 (0.297 / 0.386 before concatenations were cut per producer): releasing
    # the head's feature maps lets more channels go
    assert kept < kept_all - 0.04 and kept <= 0.30 and kept_all < 0.40
    surgeon.export_onnx(m, x, tmp_path / "yolo.onnx")


def test_yolov8n_cls():
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    m = tasks.ClassificationModel("yolov8n-cls.yaml", verbose=False)
    assert prune_checked(m, torch.randn(1, 3, 64, 64)) <= 0.40


@pytest.mark.parametrize("arch, encoder", [("Unet", "resnet18"), ("FPN", "mobilenet_v2")])
def test_segmentation_models_pytorch(arch, encoder):
    smp = pytest.importorskip("segmentation_models_pytorch")
    m = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3)
    assert prune_checked(m, torch.randn(1, 3, 64, 64)) <= 0.30


def _hf():
    return pytest.importorskip("transformers")


def test_hf_resnet(tmp_path):
    T = _hf()
    m = T.ResNetForImageClassification(T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                                      depths=[1, 1, 1, 1], num_labels=10))
    x = torch.randn(1, 3, 64, 64)
    assert prune_checked(m, x) <= 0.31
    surgeon.export_onnx(m, x, tmp_path / "resnet.onnx")


def test_hf_vit_prunes_heads_and_updates_attributes(tmp_path):
    T = _hf()
    cfg = T.ViTConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
                      image_size=32, patch_size=8, num_labels=10)
    m = T.ViTForImageClassification(cfg)
    x = torch.randn(1, 3, 32, 32)
    assert prune_checked(m, x) <= 0.33
    attn = next(mod for name, mod in m.named_modules() if name.endswith("0.attention") and hasattr(mod, "num_attention_heads"))
    assert attn.num_attention_heads == 2
    assert attn.q_proj.out_features == 2 * attn.head_dim and attn.o_proj.in_features == 2 * attn.head_dim
    surgeon.export_onnx(m, x, tmp_path / "vit.onnx")


def test_hf_bert_keyword_inputs(tmp_path):
    T = _hf()
    cfg = T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       vocab_size=100, num_labels=2)
    m = T.BertForSequenceClassification(cfg)
    ids = torch.randint(0, 100, (1, 8))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert prune_checked(m, x) <= 0.6
    sa = m.bert.encoder.layer[0].attention.self
    assert sa.num_attention_heads == 2 and sa.all_head_size == 32 and sa.query.out_features == 32
    surgeon.export_onnx(m, x, tmp_path / "bert.onnx")


def test_torchvision_vit_prunes_heads_and_exports(tmp_path):
    vt = pytest.importorskip("torchvision.models.vision_transformer")
    m = vt.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                             mlp_dim=128, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    assert prune_checked(m, x) <= 0.30
    att = m.encoder.layers[0].self_attention
    assert att.num_heads == 2 and att.embed_dim == 32
    surgeon.export_onnx(m, x, tmp_path / "vit.onnx")


@pytest.mark.parametrize("name", ["ese_vovnet19b_dw", "tf_mobilenetv3_small_minimal_100", "repvgg_a0"])
def test_timm_functional_batchnorm_and_same_padding(name):
    timm = pytest.importorskip("timm")
    m = timm.create_model(name, pretrained=False, num_classes=10)
    assert prune_checked(m, torch.randn(1, 3, 64, 64)) < 0.6
