"""Per-pixel heads: backbone features -> K x h x w class logits (SegFormer, SETR, CGRSeg), trained with per-pixel
CE; all subclass :class:`PerPixelHead` (input selection, dropout + classifier, losses)."""

from .base import DecodeHead, PerPixelHead
from .build import PER_PIXEL_HEAD_REGISTRY, build_per_pixel_head, per_pixel_head_names
from .cgrseg import CGRSegHead
from .inference import class_probabilities, per_pixel_ce_loss, slide_window_logits
from .segformer import SegFormerHead
from .segformer_convert import convert_segformer_checkpoint
from .setr import SETRMLAHead, SETRNaiveHead, SETRPUPHead

__all__ = [
    "DecodeHead",
    "PER_PIXEL_HEAD_REGISTRY",
    "PerPixelHead",
    "build_per_pixel_head",
    "class_probabilities",
    "per_pixel_ce_loss",
    "per_pixel_head_names",
    "slide_window_logits",
    "CGRSegHead",
    "SegFormerHead",
    "convert_segformer_checkpoint",
    "SETRMLAHead",
    "SETRNaiveHead",
    "SETRPUPHead",
]
