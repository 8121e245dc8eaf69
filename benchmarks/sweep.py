"""Try surgeon on every classifier of timm and torchvision (random init, nothing downloaded) and
count what happens: pruned (parameters kept at ratio 0.5, exact on the zeroable groups), frozen
everything (NothingToPrune, with the reason), or failed (the error). Needs the optional extras.

    python benchmarks/sweep.py --library timm --names resnet18,vit_tiny_patch16_224 --json out.json
    python benchmarks/sweep.py --library torchvision            # every torchvision classifier

Models are built from their configs; the input is the model's default size (capped at 224).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from typing import Any

import torch
from torch import nn

import surgeon

TIMM_DEFAULT = (
    "resnet18,resnet50d,resnext26ts,seresnext26d_32x4d,densenet121,cspresnet50,cspdarknet53,dpn68b,"
    "repvgg_a0,ese_vovnet19b_dw,efficientnet_b0,tf_efficientnet_b0,mobilenetv3_large_100,"
    "tf_mobilenetv3_small_100,mixnet_s,rexnet_100,regnety_002,ghostnet_100,hrnet_w18_small,convnext_nano,"
    "vit_tiny_patch16_224,deit_tiny_patch16_224,swin_tiny_patch4_window7_224,levit_128s,mobilevit_xs,"
    "efficientformer_l1,poolformer_s12,coatnet_nano_rw_224,maxvit_nano_rw_256,xcit_nano_12_p16_224,"
    "resmlp_12_224,gernet_s,dla34,inception_v3,xception41,nf_resnet26,edgenext_xx_small,fastvit_t8,"
    "efficientvit_b0,lcnet_050,mobileone_s0,hgnet_tiny,res2net50_14w_8s,skresnet18,selecsls42b,"
    "pit_ti_224,crossvit_tiny_240,pvt_v2_b0,visformer_tiny,tinynet_a,mobilenetv4_conv_small,"
    "convnextv2_atto,eva02_tiny_patch14_224,cait_xxs24_224"
)
# the ten largest (0.1 to 0.6 G parameters): skipped for time and memory on a 2-core machine
TV_SKIP = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf",
           "regnet_x_32gf", "efficientnet_v2_l", "efficientnet_b7", "swin_v2_b"}


def build(library: str, name: str) -> tuple[nn.Module, torch.Tensor]:
    if library == "timm":
        import timm
        m = timm.create_model(name, pretrained=False)
        size = m.pretrained_cfg.get("input_size", (3, 224, 224))
        fixed = "vit" in name or "deit" in name or "swin" in name or "xcit" in name or "cait" in name
        side = size[-1] if fixed else min(size[-1], 224)
        return m, torch.randn(1, 3, side, side)
    import torchvision
    m = torchvision.models.get_model(name, weights=None)
    side = 299 if name == "inception_v3" else 224
    return m, torch.randn(1, 3, side, side)


def run(library: str, name: str, ratio: float) -> dict[str, Any]:
    row: dict[str, Any] = {"library": library, "model": name}
    t0 = time.perf_counter()
    try:
        model, x = build(library, name)
    except Exception as e:
        return {**row, "status": "skipped", "why": f"could not build: {type(e).__name__}: {e}"[:200]}
    model.eval()
    p0 = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exact = copy.deepcopy(model)
            plan = surgeon.plan(exact, x, ratio=ratio)
            row["method"] = plan.graph.traced.method
            row["groups"] = f"{len(plan.graph.prunable_groups())}/{len(plan.graph.groups)}"
            plan.cuts = [c for c in plan.cuts if not c.group.mixing]
            row["exact"] = "ok" if plan.cuts else "no zeroable group"
            if plan.cuts:
                plan.apply(verify=True)
            del exact
            surgeon.plan(model, x, ratio=ratio).apply()
            with torch.no_grad():
                model(x)
            row["kept"] = round(sum(p.numel() for p in model.parameters()) / p0, 3)
            row["status"] = "pruned"
        except surgeon.NothingToPrune as e:
            row["status"] = "frozen everything"
            row["why"] = str(e)[:300]
        except Exception as e:
            row["status"] = "failed"
            row["why"] = f"{type(e).__name__}: {e}"[:400]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["frozen_warnings"] = len({str(w.message) for w in caught if "frozen" in str(w.message)})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", choices=("timm", "torchvision"), required=True)
    ap.add_argument("--names", default="", help="comma-separated; default: a broad list (timm) / all (torchvision)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    if args.names:
        names = args.names.split(",")
    elif args.library == "timm":
        names = TIMM_DEFAULT.split(",")
    else:
        import torchvision
        names = [n for n in torchvision.models.list_models(module=torchvision.models) if n not in TV_SKIP]
    rows = []
    for n in names:
        row = run(args.library, n, args.ratio)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(json.dumps({"tried": len(rows), **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
