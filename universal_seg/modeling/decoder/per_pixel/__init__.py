"""Per-pixel heads: backbone features -> K x h x w class logits (SegFormer, SETR), trained with per-pixel CE."""
from .build import (MASK_CLASSIFICATION_HEAD_NAMES, PER_PIXEL_HEAD_REGISTRY, build_per_pixel_head,
                    is_per_pixel_head_name)
from .cgrseg import CGRSegHead
from .inference import class_probabilities, per_pixel_ce_loss, slide_window_logits
from .segformer import SegFormerHead
from .segformer_convert import convert_segformer_checkpoint
from .setr import SETRMLAHead, SETRNaiveHead, SETRPUPHead

__all__ = ["MASK_CLASSIFICATION_HEAD_NAMES", "PER_PIXEL_HEAD_REGISTRY", "build_per_pixel_head", "class_probabilities",
           "is_per_pixel_head_name", "per_pixel_ce_loss", "slide_window_logits", "SegFormerHead",
           "convert_segformer_checkpoint", "SETRMLAHead", "SETRNaiveHead", "SETRPUPHead"]
