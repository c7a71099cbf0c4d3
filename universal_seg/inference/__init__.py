"""Inference: the batched :class:`Predictor` (any image type and size, batches of equal padded size, tiled
inference for large images, AMP), tiling (``tiling``) and prediction writers (``writers``: semantic PNGs, COCO
instance JSON with RLE masks, COCO panoptic PNG + JSON)."""

from .predictor import ImageTooLargeError, InputError, Predictor, load_image
from .tiling import TilingConfig, tiled_inference

__all__ = ["ImageTooLargeError", "InputError", "Predictor", "TilingConfig", "load_image", "tiled_inference"]
