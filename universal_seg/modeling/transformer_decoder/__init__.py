"""Transformer decoders: multi-scale features + mask features -> per-query classes and masks (Mask2Former,
OneFormer, StructToken-universal). Per-pixel heads live in universal_seg.modeling.heads."""

from .build import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder
from .mask2former import MultiScaleMaskedTransformerDecoder
from .oneformer import OneFormerTransformerDecoder
from .structtoken import StructTokenDecoder, StructTokenHead  # noqa: F401  (registers both)

__all__ = [
    "TRANSFORMER_DECODER_REGISTRY",
    "build_transformer_decoder",
    "MultiScaleMaskedTransformerDecoder",
    "OneFormerTransformerDecoder",
]
