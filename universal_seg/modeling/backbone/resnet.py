"""ResNet-50/101 (He et al. 2016) as Mask2Former uses it: detectron2's ``build_resnet_backbone`` (registered by
detectron2) with torchvision-style stride in the 3x3 conv, FrozenBN, a basic stem and res2..res5 outputs.

:func:`set_mask2former_resnet` writes those settings into a config; :func:`convert_torchvision_resnet`
maps torchvision ImageNet state dicts to detectron2's names (used by ``tools/convert_torchvision_to_d2.py``).
"""

from __future__ import annotations

import re

from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .common import check_variant

# depth: paper params (M) of the ImageNet classifier, GFLOPs at 224 (He et al. 2016, multiply-adds)
RESNET_VARIANTS = {
    50: dict(paper_params_m=25.6, paper_gflops_224=3.8),
    101: dict(paper_params_m=44.5, paper_gflops_224=7.6),
}


def set_mask2former_resnet(cfg, depth: int = 50):
    """Set MODEL.BACKBONE.NAME and MODEL.RESNETS.* / PIXEL_MEAN / PIXEL_STD to Mask2Former's ResNet settings."""
    check_variant(depth, RESNET_VARIANTS, "MODEL.RESNETS.DEPTH")
    cfg.MODEL.BACKBONE.NAME = "ResNetBackbone"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision (v1.5): stride in the 3x3 conv
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"  # key read by Mask2Former's configs; d2 v0.6 has one stem
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB, torchvision ImageNet statistics x 255
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    return cfg


@BACKBONE_REGISTRY.register()
def ResNetBackbone(cfg, input_shape):
    """detectron2's ``build_resnet_backbone`` after checking MODEL.RESNETS.{DEPTH, STEM_TYPE} (FREEZE_AT honoured by
    d2)."""
    check_variant(cfg.MODEL.RESNETS.DEPTH, {18: 0, 34: 0, **RESNET_VARIANTS}, "MODEL.RESNETS.DEPTH")
    if cfg.MODEL.RESNETS.STEM_TYPE != "basic":
        raise ValueError(f"MODEL.RESNETS.STEM_TYPE={cfg.MODEL.RESNETS.STEM_TYPE!r} is not supported; use 'basic'.")
    return build_resnet_backbone(cfg, input_shape)


_BLOCK = [(r"^bn(\d)\.", r"conv\1.norm."), (r"^downsample\.0\.", "shortcut."), (r"^downsample\.1\.", "shortcut.norm.")]


def convert_torchvision_resnet(state_dict: dict) -> dict:
    """torchvision ResNet state dict -> detectron2 ResNet names (``stem.conv1``, ``res{2-5}.{j}.conv{1-3}[.norm]``,
    ``shortcut[.norm]``); ``fc.*`` and ``num_batches_tracked`` are dropped. Values are returned unchanged."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        if k.startswith("conv1."):
            name = "stem.conv1." + k[len("conv1.") :]
        elif k.startswith("bn1."):
            name = "stem.conv1.norm." + k[len("bn1.") :]
        else:
            m = re.match(r"^layer(\d)\.(\d+)\.(.+)$", k)
            if not m:
                raise KeyError(f"Unexpected key {k!r}: not a torchvision ResNet state dict.")
            rest = m.group(3)
            for pat, rep in _BLOCK:
                rest = re.sub(pat, rep, rest)
            name = f"res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"
        out[name] = v
    return out
