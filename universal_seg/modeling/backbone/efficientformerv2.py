"""EfficientFormerV2 (Li et al., ICCV 2023) S0/S1/S2/L through timm, as a detectron2 backbone (CGRSeg's encoder).

timm's model has attention layers sized for one input resolution (7x7 at 224). Here they are made
resolution-agnostic: before each call the layer's grid is set from its input and its learned bias table
(indexed by absolute offsets, [heads, r0*r1]) is resized bicubically to the new grid when it differs, so
any input size works; with the 224 grid the computation equals timm's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models import efficientformer_v2 as effv2

from detectron2.modeling import BACKBONE_REGISTRY

from .common import check_variant
from .timm_backbone import TimmBackbone

# variant: timm name, paper (EfficientFormerV2 Table) widths, depths, params (M), GMACs at 224.
EFFICIENTFORMERV2_VARIANTS = {
    "S0": dict(timm_name="efficientformerv2_s0", widths=(32, 48, 96, 176), depths=(2, 2, 6, 4),
               paper_params_m=3.5, paper_gmacs_224=0.40),
    "S1": dict(timm_name="efficientformerv2_s1", widths=(32, 48, 120, 224), depths=(3, 3, 9, 6),
               paper_params_m=6.1, paper_gmacs_224=0.65),
    "S2": dict(timm_name="efficientformerv2_s2", widths=(32, 64, 144, 288), depths=(4, 4, 12, 8),
               paper_params_m=12.6, paper_gmacs_224=1.25),
    "L": dict(timm_name="efficientformerv2_l", widths=(40, 80, 192, 384), depths=(5, 5, 15, 10),
              paper_params_m=26.1, paper_gmacs_224=2.56),
}


def _resized_biases(attention_biases: torch.Tensor, base, res, idxs_fn) -> torch.Tensor:
    """Bias table [heads, base0*base1] -> gathered biases for grid ``res`` (table resized if needed)."""
    table = attention_biases
    if tuple(res) != tuple(base):
        table = attention_biases.view(-1, 1, base[0], base[1])
        table = F.interpolate(table, size=tuple(res), mode="bicubic", align_corners=False).flatten(1)
    return table[:, idxs_fn()]


class DynamicAttention2d(effv2.Attention2d):
    """timm Attention2d whose grid follows the input: x [B, C, H, W] (H, W even when strided)."""

    def forward(self, x):
        H, W = x.shape[-2:]
        res = (math.ceil(H / 2), math.ceil(W / 2)) if self.stride_conv is not None else (H, W)
        self.resolution, self.N = res, res[0] * res[1]
        self._biases = _resized_biases(self.attention_biases, self._base_resolution, res,
                                       lambda: self._compute_attention_bias_idxs(x.device))
        return super().forward(x)

    def get_attention_biases(self, device):
        return self._biases


class DynamicAttention2dDownsample(effv2.Attention2dDownsample):
    """timm Attention2dDownsample whose grid follows the input: x [B, C, H, W] -> [B, C', ceil(H/2), ceil(W/2)]."""

    def forward(self, x):
        H, W = x.shape[-2:]
        self.resolution, self.N = (H, W), H * W
        self.resolution2 = (math.ceil(H / 2), math.ceil(W / 2))
        self.N2 = self.resolution2[0] * self.resolution2[1]
        self._biases = _resized_biases(self.attention_biases, self._base_resolution, (H, W),
                                       lambda: self._compute_attention_bias_idxs(x.device))
        return super().forward(x)

    def get_attention_biases(self, device):
        return self._biases


def make_resolution_agnostic(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every timm EfficientFormerV2 attention layer of ``model`` for its resolution-following subclass."""
    for m in model.modules():
        for base, dyn in ((effv2.Attention2d, DynamicAttention2d),
                          (effv2.Attention2dDownsample, DynamicAttention2dDownsample)):
            if type(m) is base:
                m._base_resolution = tuple(m.resolution)
                m.__class__ = dyn
    return model


class EfficientFormerV2Features(TimmBackbone):
    """EfficientFormerV2 variant -> res2..res5 (strides 4..32, channels = the variant's widths)."""

    def __init__(self, variant: str, **kwargs):
        v = check_variant(variant, EFFICIENTFORMERV2_VARIANTS, "MODEL.EFFICIENTFORMERV2.VARIANT")
        super().__init__(v["timm_name"], config_key="MODEL.EFFICIENTFORMERV2", **kwargs)
        make_resolution_agnostic(self.model)


def efficientformerv2(variant: str, **kwargs) -> EfficientFormerV2Features:
    return EfficientFormerV2Features(variant, **kwargs)


@BACKBONE_REGISTRY.register()
def EfficientFormerV2Backbone(cfg, input_shape):
    """From MODEL.EFFICIENTFORMERV2.{VARIANT, PRETRAINED, DROP_PATH_RATE, OUT_FEATURES}, MODEL.BACKBONE.FREEZE_AT."""
    c = cfg.MODEL.EFFICIENTFORMERV2
    return efficientformerv2(c.VARIANT, pretrained=c.PRETRAINED, out_features=c.OUT_FEATURES,
                             in_chans=input_shape.channels, drop_path_rate=c.DROP_PATH_RATE,
                             freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
