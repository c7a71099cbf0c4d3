"""Models: backbones -> pixel decoders -> decoders, matcher / criterion / post-processing, and the two
meta-architectures (UniversalSegmentor: mask classification; PerPixelSegmentor: per-pixel classification).

Importing this package registers every part in detectron2's registries.
"""

from . import backbone  # noqa: F401  (registers the backbones)
from .meta_arch import PerPixelSegmentor, SegmentorBase, UniversalSegmentor
from .pixel_decoder import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .transformer_decoder import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder

__all__ = [
    "PIXEL_DECODER_REGISTRY",
    "TRANSFORMER_DECODER_REGISTRY",
    "PerPixelSegmentor",
    "SegmentorBase",
    "UniversalSegmentor",
    "build_pixel_decoder",
    "build_transformer_decoder",
]
