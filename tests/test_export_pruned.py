"""ONNX parity for every pruned zoo model: the exported file passes onnx.checker and onnxruntime
computes what torch computes (export_onnx raises OnnxMismatchError otherwise)."""
from __future__ import annotations

import onnx
import pytest
import torch

import surgeon
import surgeon_models as zoo

SMALL = {"resnet18": (1, 3, 64, 64), "resnet50": (1, 3, 64, 64), "vgg16_bn": (1, 3, 32, 32),
         "mobilenet_v2": (1, 3, 64, 64)}


@pytest.mark.parametrize("name", zoo.names())
def test_pruned_zoo_model_exports_and_matches_onnxruntime(name, tmp_path):
    torch.manual_seed(0)
    kw = {"width": 0.25, "hidden": 64} if name == "vgg16_bn" else {}
    m = zoo.randomize_bn(zoo.get(name, **kw)).eval()
    x = torch.randn(*SMALL.get(name, zoo.input_shape(name)))
    dense_params = sum(p.numel() for p in m.parameters())
    surgeon.prune(m, x, 0.5)
    path = surgeon.export_onnx(m, x, tmp_path / f"{name}.onnx")
    graph = onnx.load(str(path)).graph
    onnx_params = sum(int(torch.tensor(t.dims).prod()) for t in graph.initializer)
    assert onnx_params < dense_params  # the file holds the smaller tensors
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
