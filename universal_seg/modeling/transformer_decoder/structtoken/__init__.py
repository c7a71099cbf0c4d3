"""StructToken (Lin et al., 2022): structure tokens interacting with features through CSE / SSE / PWE blocks.

Two modes: :class:`StructTokenHead`, the paper's semantic head (one token per class, per-pixel CE; a per-pixel head,
MODEL.SEM_SEG_HEAD.NAME "StructTokenHead" under MODEL.META_ARCHITECTURE "PerPixelSegmentor"), and
:class:`StructTokenDecoder`, a universal mask-classification decoder (N tokens -> masks + classes, Hungarian
matching; MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME "StructTokenDecoder" under "UniversalSegmentor").
Keys: MODEL.STRUCTTOKEN (:func:`add_structtoken_config`).
"""

from .blocks import StructTokenBlock, StructTokenStack
from .config import add_structtoken_config
from .interaction import (
    INTERACTIONS,
    CrossSliceExtraction,
    PointWiseExtraction,
    SelfSliceExtraction,
    build_interaction,
    slice_attention,
)
from .semantic_head import StructTokenHead
from .universal_decoder import StructTokenDecoder

__all__ = [
    "INTERACTIONS",
    "CrossSliceExtraction",
    "PointWiseExtraction",
    "SelfSliceExtraction",
    "StructTokenBlock",
    "StructTokenDecoder",
    "StructTokenHead",
    "StructTokenStack",
    "add_structtoken_config",
    "build_interaction",
    "slice_attention",
]
