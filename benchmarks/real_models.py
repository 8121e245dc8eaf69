"""Prune models built by the libraries users deploy from (random init, nothing downloaded) and
compare the parameters kept with Torch-Pruning's at the same ratio.

    python benchmarks/real_models.py [--ratio 0.5] [--only yolov8n,vit_b_16] [--json out.json]

Each library is optional; a model whose library is missing is reported as skipped. For every model:
trace method, groups (prunable / total), parameters kept after plan + apply, surgical equivalence
on the exactly-zeroable groups (LayerNorm groups mix channels, so those are checked by shapes and
ONNX parity instead), ONNX Runtime parity, and Torch-Pruning's parameters kept (or its error).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable

import torch
from torch import nn

import surgeon


def _yolo(cfg: str) -> Callable[[], tuple[nn.Module, Any]]:
    def build() -> tuple[nn.Module, Any]:
        from ultralytics.nn.tasks import ClassificationModel, DetectionModel
        cls = ClassificationModel if "cls" in cfg else DetectionModel
        m = cls(cfg, verbose=False)
        size = 224 if "cls" in cfg else 320
        return m, torch.randn(1, 3, size, size)
    return build


def _smp(arch: str, encoder: str) -> Callable[[], tuple[nn.Module, Any]]:
    def build() -> tuple[nn.Module, Any]:
        import segmentation_models_pytorch as smp
        m = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3)
        return m, torch.randn(1, 3, 128, 128)
    return build


def _hf(kind: str) -> Callable[[], tuple[nn.Module, Any]]:
    def build() -> tuple[nn.Module, Any]:
        import transformers as T
        if kind == "resnet":
            m = T.ResNetForImageClassification(T.ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256],
                                                              depths=[1, 1, 1, 1], num_labels=10))
            return m, torch.randn(1, 3, 64, 64)
        if kind == "vit":
            m = T.ViTForImageClassification(T.ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                                                         intermediate_size=768, image_size=64, patch_size=8,
                                                         num_labels=10))
            return m, torch.randn(1, 3, 64, 64)
        m = T.BertForSequenceClassification(T.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                         intermediate_size=1024, vocab_size=1000, num_labels=2))
        ids = torch.randint(0, 1000, (1, 16))
        return m, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return build


def _tv(name: str) -> Callable[[], tuple[nn.Module, Any]]:
    def build() -> tuple[nn.Module, Any]:
        import torchvision
        return torchvision.models.get_model(name, weights=None), torch.randn(1, 3, 224, 224)
    return build


def _timm(name: str) -> Callable[[], tuple[nn.Module, Any]]:
    def build() -> tuple[nn.Module, Any]:
        import timm
        m = timm.create_model(name, pretrained=False)
        size = m.default_cfg.get("input_size", (3, 224, 224))[-1]
        return m, torch.randn(1, 3, min(size, 224), min(size, 224))
    return build


MODELS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "yolov8n": _yolo("yolov8n.yaml"), "yolov8n:keep_outputs=0": _yolo("yolov8n.yaml"),
    "yolov8n-cls": _yolo("yolov8n-cls.yaml"), "yolo11n": _yolo("yolo11n.yaml"),
    "yolo11n:keep_outputs=0": _yolo("yolo11n.yaml"),
    "smp_unet_resnet34": _smp("Unet", "resnet34"), "smp_fpn_mobilenet_v2": _smp("FPN", "mobilenet_v2"),
    "hf_resnet": _hf("resnet"), "hf_vit": _hf("vit"), "hf_bert": _hf("bert"),
    "vit_b_16": _tv("vit_b_16"), "shufflenet_v2_x1_0": _tv("shufflenet_v2_x1_0"),
}


def plan_options(name: str) -> dict[str, Any]:
    """``name:keep_outputs=0`` runs the model with that plan option (the detections are kept, the
    head's auxiliary feature-map outputs may shrink)."""
    if ":keep_outputs=" in name:
        return {"keep_outputs": [int(i) for i in name.split("=", 1)[1].split(",")]}
    return {}


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _call(m: nn.Module, x: Any) -> Any:
    return m(**x) if isinstance(x, dict) else m(x)


def torch_pruning_kept(model: nn.Module, x: Any, ratio: float) -> str | float:
    try:
        import torch_pruning as tp
    except ImportError:
        return "not installed"
    m = copy.deepcopy(model)
    try:
        ignored = [mod for mod in m.modules() if isinstance(mod, nn.Linear) and mod.out_features in (2, 10, 1000)]
        kw = {}
        heads = {}
        for mod in m.modules():
            if isinstance(mod, nn.MultiheadAttention):
                heads[mod] = mod.num_heads
        if heads:
            kw = {"num_heads": heads, "prune_head_dims": True, "prune_num_heads": True}
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=ignored, **kw)
        p0 = params(m)
        pruner.step()
        with torch.no_grad():
            _call(m.eval(), x)
        return round(params(m) / p0, 3)
    except Exception as e:  # report, do not crash the sweep
        return f"{type(e).__name__}: {str(e)[:80]}"


def run_one(name: str, ratio: float, onnx: bool = True, tp: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name}
    try:
        model, x = MODELS[name]()
    except ImportError as e:
        return {"model": name, "status": f"skipped ({e.name} not installed)"}
    model.eval()
    if plan_options(name):
        row["tp_kept"] = "-"
    else:
        row["tp_kept"] = torch_pruning_kept(model, x, ratio) if tp else "not run (--skip-tp)"
    p0 = params(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            t = time.perf_counter()
            opts = plan_options(name)
            exact = copy.deepcopy(model)
            plan = surgeon.plan(exact, x, ratio=ratio, **opts)
            row["method"] = plan.graph.traced.method
            row["groups"] = f"{len(plan.graph.prunable_groups())}/{len(plan.graph.groups)}"
            plan.cuts = [c for c in plan.cuts if not c.group.mixing]
            if plan.cuts:
                plan.apply(verify=True)
                row["exact"] = "ok"
            else:
                row["exact"] = "no exactly-zeroable group"
            plan = surgeon.plan(model, x, ratio=ratio, **opts)
            plan.apply()
            row["seconds"] = round(time.perf_counter() - t, 2)
            row["kept"] = round(params(model) / p0, 3)
            with torch.no_grad():
                _call(model, x)
            if onnx:
                with tempfile.TemporaryDirectory() as d:
                    surgeon.export_onnx(model, x, f"{d}/m.onnx")
                row["onnx"] = "ok"
            row["status"] = "pruned"
        except Exception as e:
            row["status"] = f"{type(e).__name__}: {str(e)[:300]}"
            row["trace"] = traceback.format_exc()[-1500:]
    row["warnings"] = sorted({str(w.message)[:160] for w in caught if "frozen" in str(w.message)})[:6]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--only", default="", help="comma-separated model names: " + ", ".join(MODELS))
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--json", default="")
    ap.add_argument("--skip-tp", default="", help="comma-separated models not to run Torch-Pruning on "
                    "(on YOLO11n it grew past 9 GB of memory here without finishing)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    rows = []
    for n in names:
        if n not in MODELS:
            MODELS[n] = _timm(n) if not n.startswith("tv:") else _tv(n[3:])
        row = run_one(n, args.ratio, onnx=not args.no_onnx, tp=n not in args.skip_tp.split(","))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
        if "trace" in row:
            print(row["trace"], file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
