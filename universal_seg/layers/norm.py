"""Normalisation layers: timm's ``LayerNorm2d``, LayerNorm over the channels of a feature map
([B, C, H, W] -> [B, C, H, W], the tokens' LayerNorm; parameters ``weight`` / ``bias`` of shape [C])."""

from timm.layers import LayerNorm2d

__all__ = ["LayerNorm2d"]
