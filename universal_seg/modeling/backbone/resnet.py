"""ResNet-50/101 (He et al. 2016) as Mask2Former uses it: detectron2's ``build_resnet_backbone`` (registered by
detectron2) with torchvision-style stride in the 3x3 conv, FrozenBN, a basic stem and res2..res5 outputs.

MODEL.RESNETS.DEPTH selects the variant (RESNET_VARIANTS); the Mask2Former settings are in the base YAMLs
(configs/*/Base-*.yaml). :func:`convert_torchvision_resnet`
maps torchvision ImageNet state dicts to detectron2's names (used by ``tools/convert_torchvision_to_d2.py``).
"""

from __future__ import annotations

import re

from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ...layers import fold_frozen_batchnorm
from .common import check_variant

# depth: paper params (M) of the ImageNet classifier, GFLOPs at 224 (He et al. 2016, multiply-adds)
RESNET_VARIANTS = {
    18: dict(paper_params_m=11.7, paper_gflops_224=1.8),  # basic blocks: set MODEL.RESNETS.RES2_OUT_CHANNELS 64
    34: dict(paper_params_m=21.8, paper_gflops_224=3.6),
    50: dict(paper_params_m=25.6, paper_gflops_224=3.8),
    101: dict(paper_params_m=44.5, paper_gflops_224=7.6),
}


@BACKBONE_REGISTRY.register()
def ResNetBackbone(cfg, input_shape):
    """detectron2's ``build_resnet_backbone`` after checking MODEL.RESNETS.{DEPTH, STEM_TYPE} (FREEZE_AT honoured by
    d2), with every conv + FrozenBN run as one convolution (:func:`universal_seg.layers.fold_frozen_batchnorm`:
    the same function and state-dict keys, one pass over each feature map fewer)."""
    check_variant(cfg.MODEL.RESNETS.DEPTH, RESNET_VARIANTS, "MODEL.RESNETS.DEPTH")
    if cfg.MODEL.RESNETS.STEM_TYPE != "basic":
        raise ValueError(f"MODEL.RESNETS.STEM_TYPE={cfg.MODEL.RESNETS.STEM_TYPE!r} is not supported; use 'basic'.")
    return fold_frozen_batchnorm(build_resnet_backbone(cfg, input_shape))


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
