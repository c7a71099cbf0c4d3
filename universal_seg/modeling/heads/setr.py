"""SETR decoders (Zheng et al., CVPR 2021) on single-scale ViT features: Naive, PUP and MLA, with their
auxiliary heads.

The backbone is a plain ViT without the feature pyramid (MODEL.VIT.FEATURE_PYRAMID False), whose outputs are
``layer{i}`` = block i's tokens as [B, C, H/16, W/16]. Inner names follow mmseg's SETR (``norm``, ``up_convs``,
``conv_seg``; MLA: ``neck.norm`` / ``proj_convs`` / ``conv_convs``), with the main head under ``decode_head`` and
the auxiliary ones under ``auxiliary_head.{i}``. Norms of the convs: MODEL.SEM_SEG_HEAD.NORM (BN / SyncBN).
"""

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ...layers import LayerNorm2d
from .base import DecodeHead, PerPixelHead
from .build import PER_PIXEL_HEAD_REGISTRY
from .layers import ConvNormAct


def _up(scale: int) -> nn.Module:
    return nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)


class UpHead(DecodeHead):
    """LayerNorm(tokens) -> ``num_convs`` x [k x k conv + norm + ReLU, bilinear x``up_scale``] -> dropout -> 1x1
    classifier ``conv_seg``. [B, C_in, h, w] -> [B, K, h * up_scale^num_convs, w * up_scale^num_convs]."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int,
        up_scale: int,
        kernel_size: int,
        norm: str,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm = LayerNorm2d(in_channels, eps=1e-6)
        self.up_convs = nn.ModuleList(
            [
                nn.Sequential(
                    ConvNormAct(in_channels if i == 0 else channels, channels, kernel_size, norm), _up(up_scale)
                )
                for i in range(num_convs)
            ]
        )
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        for up_conv in self.up_convs:
            x = up_conv(x)
        return self.classify(x)


class _SETRUpBase(PerPixelHead):
    """Main UpHead (``decode_head``) on the one MODEL.SEM_SEG_HEAD.IN_FEATURES map, one auxiliary UpHead
    (``auxiliary_head.{i}``) per AUX_IN_FEATURES entry. Subclasses fix the paper's layouts in ``MAIN`` / ``AUX``:
    (num_convs, up_scale, kernel_size)."""

    MAIN = AUX = (1, 4, 1)
    num_inputs = 1
    inputs_description = "one feature map (the main head's input)"
    inputs_example = "one name, e.g. ['layer23']"
    has_aux_inputs = True

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        in_feature: str,
        aux_in_features: list[str],
        num_classes: int,
        channels: int = 256,
        norm: str = "BN",
        dropout: float = 0.0,
        aux_loss_weight: float = 0.4,
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
        self.in_feature, self.aux_in_features, self.aux_loss_weight = in_feature, list(aux_in_features), aux_loss_weight
        self.decode_head = UpHead(input_shape[in_feature].channels, channels, num_classes, *self.MAIN, norm, dropout)
        self.auxiliary_head = nn.ModuleList(
            [UpHead(input_shape[n].channels, channels, num_classes, *self.AUX, norm, dropout) for n in aux_in_features]
        )

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            **cls.loss_config(cfg),
            "input_shape": cls.select_inputs(cfg, input_shape),
            "in_feature": head.IN_FEATURES[0],
            "aux_in_features": list(head.AUX_IN_FEATURES),
            "channels": head.CONVS_DIM,
            "norm": head.NORM,
            "dropout": head.DROPOUT,
            "aux_loss_weight": head.AUX_LOSS_WEIGHT,
        }

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        out = {"sem_seg_logits": self.decode_head(features[self.in_feature])}
        if self.training and len(self.auxiliary_head):
            out["aux_logits"] = [
                (h(features[n]), self.aux_loss_weight) for h, n in zip(self.auxiliary_head, self.aux_in_features)
            ]
        return out


@PER_PIXEL_HEAD_REGISTRY.register()
class SETRNaiveHead(_SETRUpBase):
    """SETR-Naive: LN -> 1x1 conv + norm + ReLU -> 1x1 classifier, at 1/4 after a 4x bilinear up.
    Auxiliary heads (mmseg): two 1x1 conv blocks, each followed by a 4x up. Outputs as :class:`_SETRUpBase`."""

    MAIN = (1, 4, 1)
    AUX = (2, 4, 1)


@PER_PIXEL_HEAD_REGISTRY.register()
class SETRPUPHead(_SETRUpBase):
    """SETR-PUP (progressive upsampling): LN -> 4 x [3x3 conv + norm + ReLU, 2x up] -> 1x1 classifier at 1/1.
    Auxiliary heads (mmseg): 2 x [3x3 conv + norm + ReLU, 4x up]."""

    MAIN = (4, 2, 3)
    AUX = (2, 4, 3)


class MLANeck(nn.Module):
    """Per level: LN -> 1x1 conv C -> D + norm + ReLU; top-down cumulative sum (coarsest = deepest layer first);
    3x3 conv D -> D + norm + ReLU. list of 4 [B, C, h, w] (shallow to deep) -> list of 4 [B, D, h, w]."""

    def __init__(self, in_channels: list[int], channels: int, norm: str):
        super().__init__()
        self.norm = nn.ModuleList([LayerNorm2d(c, eps=1e-6) for c in in_channels])
        self.proj_convs = nn.ModuleList([ConvNormAct(c, channels, 1, norm) for c in in_channels])
        self.conv_convs = nn.ModuleList([ConvNormAct(channels, channels, 3, norm) for _ in in_channels])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        projected = [conv(norm(x)) for x, norm, conv in zip(xs, self.norm, self.proj_convs)]
        summed = [projected[-1]]
        for x in projected[-2::-1]:
            summed.append(summed[-1] + x)
        return [conv(x) for x, conv in zip(summed[::-1], self.conv_convs)]


class MLADecoder(DecodeHead):
    """Per level 2 x [3x3 conv + norm + ReLU] D -> M -> M and a 4x bilinear up; concat (4M) -> dropout -> 1x1
    classifier ``conv_seg``. list of 4 [B, D, h, w] -> [B, K, 4h, 4w]."""

    def __init__(self, channels: int, mla_channels: int, num_classes: int, num_levels: int, norm: str, dropout: float):
        super().__init__()
        self.up_convs = nn.ModuleList(
            [
                nn.Sequential(
                    ConvNormAct(channels, mla_channels, 3, norm),
                    ConvNormAct(mla_channels, mla_channels, 3, norm),
                    _up(4),
                )
                for _ in range(num_levels)
            ]
        )
        self.build_classifier(num_levels * mla_channels, num_classes, dropout)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([up(x) for up, x in zip(self.up_convs, xs)], dim=1)
        return self.classify(x)


@PER_PIXEL_HEAD_REGISTRY.register()
class SETRMLAHead(PerPixelHead):
    """SETR-MLA (multi-level feature aggregation) on four ViT layers (paper: 6/12/18/24).

    features {layer_i: [B, C, h, w]} -> {"sem_seg_logits": [B, K, 4h, 4w] (1/4)}, plus in training one auxiliary
    1x1 classifier per MLA level ("aux_logits": 4 x ([B, K, h, w], aux_loss_weight)). The levels are read in the
    order of MODEL.SEM_SEG_HEAD.IN_FEATURES (shallow to deep).
    """

    num_inputs = 4
    inputs_description = "four ViT layers to aggregate"
    inputs_example = "four names, e.g. ['layer5', 'layer11', 'layer17', 'layer23']"
    aux_inputs_note = " (its auxiliary heads sit on its four MLA levels; AUX_LOSS_WEIGHT 0 disables them)"

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        channels: int = 256,
        mla_channels: int = 128,
        norm: str = "BN",
        dropout: float = 0.0,
        aux_loss_weight: float = 0.4,
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
        self.init_inputs(input_shape, by_stride=False)
        self.aux_loss_weight = aux_loss_weight
        self.neck = MLANeck(self.in_channels, channels, norm)
        self.decode_head = MLADecoder(channels, mla_channels, num_classes, 4, norm, dropout)
        self.auxiliary_head = nn.ModuleList(
            [nn.Conv2d(channels, num_classes, 1) for _ in range(4)] if aux_loss_weight > 0 else []
        )

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            **cls.loss_config(cfg),
            "input_shape": cls.select_inputs(cfg, input_shape),
            "channels": head.CONVS_DIM,
            "mla_channels": head.MLA_CHANNELS,
            "norm": head.NORM,
            "dropout": head.DROPOUT,
            "aux_loss_weight": head.AUX_LOSS_WEIGHT,
        }

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        levels = self.neck(self.transform_inputs(features))
        out = {"sem_seg_logits": self.decode_head(levels)}
        if self.training and len(self.auxiliary_head):
            out["aux_logits"] = [(h(x), self.aux_loss_weight) for h, x in zip(self.auxiliary_head, levels)]
        return out
