"""SegFormer's All-MLP decode head (Xie et al., NeurIPS 2021).

Module names equal the official NVlabs / mmseg code (``linear_c{1-4}.proj``, ``linear_fuse.conv`` / ``.bn``,
``linear_pred``) so that, under ``sem_seg_head.``, official ``decode_head.*`` weights load after
:func:`.segformer_convert.convert_segformer_checkpoint`.
"""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ....ops import Linear
from .build import PER_PIXEL_HEAD_REGISTRY, select_features
from .layers import ConvNormAct


class MLP(nn.Module):
    """Per-pixel Linear ``proj``: [B, C, h, w] -> [B, E, h, w]."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = Linear(in_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[-2:])


@PER_PIXEL_HEAD_REGISTRY.register()
class SegFormerHead(nn.Module):
    """All-MLP head. features {name: [B, C_i, h_i, w_i]} (the four MiT stages, strides 4..32) ->
    {"sem_seg_logits": [B, K, h_1, w_1]} at the finest stage's resolution (1/4).

    Each stage: Linear C_i -> E, bilinear to 1/4; concat [c4, c3, c2, c1]; 1x1 conv 4E -> E (no bias) + norm + ReLU;
    dropout; 1x1 conv E -> K.
    """

    per_pixel = True

    @configurable
    def __init__(self, input_shape: dict[str, ShapeSpec], *, num_classes: int, embed_dim: int = 256,
                 dropout: float = 0.1, norm: str = "BN"):
        super().__init__()
        if len(input_shape) != 4:
            raise ValueError(f"SegFormerHead needs the four MiT stages, got features {list(input_shape)}; set "
                             f"MODEL.SEM_SEG_HEAD.IN_FEATURES to ['res2', 'res3', 'res4', 'res5'].")
        self.in_features = sorted(input_shape, key=lambda n: input_shape[n].stride)  # fine -> coarse
        for i, name in enumerate(self.in_features):
            self.add_module(f"linear_c{i + 1}", MLP(input_shape[name].channels, embed_dim))
        self.linear_fuse = ConvNormAct(4 * embed_dim, embed_dim, 1, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        if head.AUX_IN_FEATURES:
            raise ValueError("SegFormerHead has no auxiliary heads; leave MODEL.SEM_SEG_HEAD.AUX_IN_FEATURES empty.")
        return {
            "input_shape": select_features(input_shape, head.IN_FEATURES, "MODEL.SEM_SEG_HEAD.IN_FEATURES"),
            "num_classes": head.NUM_CLASSES,
            "embed_dim": head.CONVS_DIM,
            "dropout": head.DROPOUT,
            "norm": head.NORM,
        }

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        size = features[self.in_features[0]].shape[-2:]
        maps = []
        for i, name in enumerate(self.in_features):
            x = getattr(self, f"linear_c{i + 1}")(features[name])
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            maps.append(x)
        x = self.linear_fuse(torch.cat(maps[::-1], dim=1))
        return {"sem_seg_logits": self.linear_pred(self.dropout(x))}
