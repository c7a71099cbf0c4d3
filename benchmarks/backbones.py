#!/usr/bin/env python
"""Parameters, GFLOPs (fvcore, 1 multiply-add = 1 FLOP, 512x512) and CPU forward latency (512x512, batch 1,
torch.set_num_threads(2) unless --threads) of every backbone variant, next to the papers' numbers.

    python benchmarks/backbones.py [--only swin,mit] [--repeat 3] [--no-latency]

Params count the backbone as built for Mask2Former (ViT includes its 256-channel simple feature pyramid;
"enc" is the encoder alone). Paper columns: the ImageNet classifier's params / GFLOPs at 224 where the paper
reports those (ResNet, Swin, ViT, EfficientFormerV2 GMACs), the encoder params for MiT.
"""

import argparse
import time
import warnings

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from universal_seg.modeling.backbone import (
    EFFICIENTFORMERV2_VARIANTS,
    MIT_VARIANTS,
    RESNET_VARIANTS,
    SWIN_VARIANTS,
    VIT_VARIANTS,
    add_backbone_config,
)


def _cfg():
    cfg = get_cfg()
    add_backbone_config(cfg)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return cfg


def variants():
    """(family, name, cfg, paper params M, paper note)."""
    for depth, v in RESNET_VARIANTS.items():
        if depth < 50:
            continue  # basic-block ResNets: not a Mask2Former backbone
        cfg = _cfg()
        cfg.MODEL.BACKBONE.NAME, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STRIDE_IN_1X1 = (
            "ResNetBackbone",
            depth,
            False,
        )
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        yield "resnet", f"ResNet-{depth}", cfg, v["paper_params_m"], f"{v['paper_gflops_224']} GF@224"
    for name, v in SWIN_VARIANTS.items():
        cfg = _cfg()
        cfg.MODEL.BACKBONE.NAME, cfg.MODEL.SWIN.VARIANT = "SwinTransformerBackbone", name
        cfg.MODEL.SWIN.WINDOW_SIZE, cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = v["window_size"], v["pretrain_img_size"]
        yield "swin", f"Swin-{name} (w{v['window_size']})", cfg, v["paper_params_m"], f"{v['paper_gflops_224']} GF@224"
    for name, v in MIT_VARIANTS.items():
        cfg = _cfg()
        cfg.MODEL.BACKBONE.NAME, cfg.MODEL.MIT.VARIANT = "MiTBackbone", name
        yield "mit", f"MiT-{name}", cfg, v["paper_params_m"], "encoder"
    for name, v in VIT_VARIANTS.items():
        cfg = _cfg()
        cfg.MODEL.BACKBONE.NAME, cfg.MODEL.VIT.VARIANT = "ViTBackbone", name
        yield "vit", f"ViT-{name}/16+SFP", cfg, v["paper_params_m"], "timm IN cls"
    for name, v in EFFICIENTFORMERV2_VARIANTS.items():
        cfg = _cfg()
        cfg.MODEL.BACKBONE.NAME, cfg.MODEL.EFFICIENTFORMERV2.VARIANT = "EfficientFormerV2Backbone", name
        yield "effformerv2", f"EffFormerV2-{name}", cfg, v["paper_params_m"], f"{v['paper_gmacs_224']} GMACs@224"


def _sdpa_flops(inputs, outputs):
    """fvcore handle for aten::scaled_dot_product_attention: QK^T and AV matmuls (MACs)."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    batch = 1
    for d in q[:-2]:
        batch *= d
    return batch * q[-2] * k[-2] * q[-1] * 2


def gflops(model, size):
    from fvcore.nn import FlopCountAnalysis

    x = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fca = FlopCountAnalysis(model, x).set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return fca.total() / 1e9


def latency(model, size, repeat):
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        model(x)  # warm-up
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated families: resnet,swin,mit,vit,effformerv2")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-latency", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(filter(None, args.only.split(",")))
    print(
        f"{'backbone':24s} {'params M':>9s} {'enc M':>7s} {'paper M':>8s} {'GFLOPs@' + str(args.size):>12s} "
        f"{'CPU ms':>8s}  paper note"
    )
    for family, name, cfg, paper_m, note in variants():
        if only and family not in only:
            continue
        torch.manual_seed(0)
        model = build_backbone(cfg, ShapeSpec(channels=3)).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        enc = params - (sum(p.numel() for p in model.pyramid.parameters()) / 1e6 if family == "vit" else 0)
        gf = gflops(model, args.size)
        ms = float("nan") if args.no_latency else latency(model, args.size, args.repeat) * 1e3
        print(f"{name:24s} {params:9.1f} {enc:7.1f} {paper_m:8.1f} {gf:12.1f} {ms:8.0f}  {note}", flush=True)


if __name__ == "__main__":
    main()
