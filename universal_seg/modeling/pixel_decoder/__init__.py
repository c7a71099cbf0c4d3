"""Pixel decoders: backbone features -> (mask_features @1/4, multi-scale features [1/32, 1/16, 1/8])."""

from .build import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .msdeform import MSDeformAttnPixelDecoder

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder", "MSDeformAttnPixelDecoder"]
