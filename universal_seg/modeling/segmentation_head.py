"""The head that turns backbone features into predictions: pixel decoder then decoder.

It is a container (``sem_seg_head.pixel_decoder`` / ``sem_seg_head.predictor``) so that parameter names equal
those of the official Mask2Former checkpoints.
"""

import torch
from torch import nn

from .pixel_decoder import build_pixel_decoder
from .transformer_decoder import build_transformer_decoder


class SegmentationHead(nn.Module):
    """features {name: [B, C, h, w]} -> decoder outputs (see decoder/build.py)."""

    def __init__(self, pixel_decoder: nn.Module, predictor: nn.Module):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    @classmethod
    def from_config(cls, cfg, input_shape) -> "SegmentationHead":
        pixel_decoder = build_pixel_decoder(cfg, input_shape)
        predictor = build_transformer_decoder(cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, mask_classification=True)
        return cls(pixel_decoder, predictor)

    def forward(self, features: dict[str, torch.Tensor], **conditioning) -> dict:
        """``conditioning`` (e.g. OneFormer's ``task`` token [B, C]) is passed on to the decoder."""
        return self.predict(self.pixel_decoder(features), **conditioning)

    def predict(self, pixel_features: tuple, **conditioning) -> dict:
        """The decoder on the pixel decoder's (mask_features, multi_scale_features): several decoder passes (one
        per OneFormer task token) can share one pixel-decoder pass."""
        mask_features, multi_scale_features = pixel_features
        return self.predictor(multi_scale_features, mask_features, **conditioning)
