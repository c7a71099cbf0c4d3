"""Backbones registered in detectron2's BACKBONE_REGISTRY (outputs res2..res5 at strides 4..32)."""

from .config import add_backbone_config
from .efficientformerv2 import EFFICIENTFORMERV2_VARIANTS, EfficientFormerV2Backbone, efficientformerv2
from .mit import MIT_VARIANTS, MiTBackbone, MixVisionTransformer, mit
from .mit_convert import convert_mit_checkpoint
from .resnet import RESNET_VARIANTS, ResNetBackbone, convert_torchvision_resnet
from .swin import SWIN_VARIANTS, SwinTransformer, SwinTransformerBackbone, convert_swin_checkpoint
from .timm_backbone import TimmBackbone, build_timm_backbone
from .vit import VIT_VARIANTS, VisionTransformer, ViTBackbone, checkpoint_filter_vit, vit

__all__ = [
    "add_backbone_config",
    "EFFICIENTFORMERV2_VARIANTS",
    "EfficientFormerV2Backbone",
    "efficientformerv2",
    "MIT_VARIANTS",
    "MiTBackbone",
    "MixVisionTransformer",
    "mit",
    "convert_mit_checkpoint",
    "RESNET_VARIANTS",
    "ResNetBackbone",
    "convert_torchvision_resnet",
    "SWIN_VARIANTS",
    "SwinTransformer",
    "SwinTransformerBackbone",
    "convert_swin_checkpoint",
    "TimmBackbone",
    "build_timm_backbone",
    "VIT_VARIANTS",
    "ViTBackbone",
    "VisionTransformer",
    "checkpoint_filter_vit",
    "vit",
]
