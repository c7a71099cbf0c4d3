"""CGRSeg's decode head (Ni et al., "Context-Guided Spatial Feature Reconstruction for Efficient Semantic
Segmentation", ECCV 2024), on EfficientFormerV2 strides 8/16/32.

Structure and names follow the official code (github.com/nizhenliang/CGRSeg, ``models/decode_heads/cgr_head.py``):
``trans`` (pyramid context RCMs), ``meta`` (per-level RCMs), ``SIM`` (context-guided fusions), ``conv`` (top-down
1x1 convs), ``linear_fuse``, ``lgc`` (DPG gate), ``conv_seg`` (classifier); an official ``decode_head.*`` state
dict maps by renaming ``decode_head.`` -> ``sem_seg_head.`` and ``trans.transformer_blocks.`` -> ``trans.`` (untested:
no official checkpoint is available here).

Variants (official configs ``local_configs/cgrseg/cgrseg-{t,b,l}_ade20k_160k.py``): CONVS_DIM channels, number of
pyramid-context RCMs and RCA band kernel k (the same k for the context and the per-level RCMs):

    T = EfficientFormerV2-S1, 128 channels, 5 RCMs, k 11
    B = EfficientFormerV2-S2, 256 channels, 6 RCMs, k 11
    L = EfficientFormerV2-L,  256 channels, 5 RCMs, k 9

The RCM count and k are the head's own keys, MODEL.SEM_SEG_HEAD.CGRSEG.{CONTEXT_RCMS, BAND_KERNEL_SIZE} (added by
:func:`add_cgrseg_config`); each configs/ade20k/semantic/cgrseg_*.yaml sets its variant's values.
"""

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .base import PerPixelHead
from .build import PER_PIXEL_HEAD_REGISTRY
from .cgrseg_modules import (
    RCM,
    ContextGuidedFusion,
    DepthwiseConvNormAct,
    DynamicPrototypeGate,
    class_prototypes,
    pyramid_pool,
)


def add_cgrseg_config(cfg) -> None:
    """MODEL.SEM_SEG_HEAD.CGRSEG keys (added by add_universal_seg_config); defaults are CGRSeg-T's."""
    cfg.MODEL.SEM_SEG_HEAD.CGRSEG = CN()
    cfg.MODEL.SEM_SEG_HEAD.CGRSEG.CONTEXT_RCMS = 5  # RCMs of the pyramid context (T 5, B 6, L 5)
    cfg.MODEL.SEM_SEG_HEAD.CGRSEG.BAND_KERNEL_SIZE = 11  # RCA band kernel k (T / B 11, L 9)


@PER_PIXEL_HEAD_REGISTRY.register()
class CGRSegHead(PerPixelHead):
    """features {name: [B, C_i, h_i, w_i]} (three levels, strides 8/16/32) -> {"sem_seg_logits": [B, K, h_1, w_1]}
    at the finest level's resolution (1/8).

    1. Pyramid context: the levels adaptive-avg-pooled to 1/64 and concatenated, [B, sum C_i, h/64, w/64], through
       ``context_rcms`` RCMs, split back into per-level context [B, C_i, h/64, w/64].
    2. Spatial reconstruction, top-down 1/32 -> 1/8: local_i = x_i (+ 1x1 conv E -> C_i of the previous result
       upsampled), RCM(local_i) [B, C_i, h_i, w_i]; result_i = ConvNorm(local_i) * up(h_sigmoid(ConvNorm(context_i)))
       [B, E, h_i, w_i].
    3. DPG head on f = result at 1/8: coarse = classifier(ReLU(norm(dw 1x1(f)))); prototypes [B, E, K, 1] = spatial
       softmax(coarse) @ f; logits = classifier(f + f * sigmoid(gate(prototypes))). The classifier (dropout + 1x1
       conv E -> K, ``conv_seg``) is shared; the coarse logits get no loss (as in the official code).
    """

    num_inputs = 3
    inputs_description = "three feature levels (strides 8/16/32)"
    inputs_example = "['res3', 'res4', 'res5']"

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        channels: int = 128,
        context_rcms: int = 5,
        band_kernel_size: int = 11,
        square_kernel_size: int = 3,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        norm: str = "BN",
        loss_weight: float = 1.0,
        ignore_label: int = 255,
        class_weights: tuple[float, ...] = (),
        focal_gamma: float = 0.0,
    ):
        super().__init__(
            num_classes=num_classes,
            loss_weight=loss_weight,
            ignore_label=ignore_label,
            class_weights=class_weights,
            focal_gamma=focal_gamma,
        )
        self.init_inputs(input_shape)  # fine -> coarse
        rcm = dict(
            band_kernel_size=band_kernel_size, square_kernel_size=square_kernel_size, mlp_ratio=mlp_ratio, norm=norm
        )
        self.trans = nn.Sequential(*[RCM(sum(self.in_channels), **rcm) for _ in range(context_rcms)])
        self.meta = nn.ModuleList([RCM(c, **rcm) for c in self.in_channels])
        self.SIM = nn.ModuleList([ContextGuidedFusion(c, channels, norm) for c in self.in_channels])
        self.conv = nn.ModuleList([nn.Conv2d(channels, c, 1) for c in self.in_channels[:-1]])
        self.linear_fuse = DepthwiseConvNormAct(channels, norm)
        self.lgc = DynamicPrototypeGate(channels, channels)
        self.build_classifier(channels, num_classes, dropout, init_std=0.01)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        input_shape = cls.select_inputs(cfg, input_shape)
        c = head.CGRSEG
        if c.CONTEXT_RCMS < 1 or c.BAND_KERNEL_SIZE < 1 or c.BAND_KERNEL_SIZE % 2 == 0:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.CGRSEG.CONTEXT_RCMS={c.CONTEXT_RCMS} / BAND_KERNEL_SIZE={c.BAND_KERNEL_SIZE} "
                f"are invalid: use at least 1 RCM and an odd band kernel (T 5 / 11, B 6 / 11, L 5 / 9)."
            )
        context_rcms, band_kernel_size = c.CONTEXT_RCMS, c.BAND_KERNEL_SIZE
        return {
            **cls.loss_config(cfg),
            "input_shape": input_shape,
            "channels": head.CONVS_DIM,
            "context_rcms": context_rcms,
            "band_kernel_size": band_kernel_size,
            "dropout": head.DROPOUT,
            "norm": head.NORM,
        }

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        xs = self.transform_inputs(features)
        context = self.trans(pyramid_pool(xs)).split(self.in_channels, dim=1)
        result = None
        for i in range(len(xs) - 1, -1, -1):  # 1/32 -> 1/8
            local = xs[i]
            if result is not None:
                up = F.interpolate(result, size=local.shape[-2:], mode="bilinear", align_corners=False)
                local = local + self.conv[i](up)
            result = self.SIM[i](self.meta[i](local), context[i])
        coarse = self.classify(self.linear_fuse(result))
        refined = self.lgc(result, class_prototypes(result, coarse)) + result
        return {"sem_seg_logits": self.classify(refined)}
