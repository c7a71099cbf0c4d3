"""The two meta-architectures, on one base (:class:`SegmentorBase`: backbone -> sem_seg_head, detectron2's input
and output formats):

- :class:`UniversalSegmentor`, mask classification (Mask2Former, StructToken-universal): backbone -> pixel decoder
  -> decoder (queries) -> Hungarian matcher + set criterion (training) or semantic / instance / panoptic
  post-processing (inference);
- :class:`PerPixelSegmentor`, per-pixel classification (SegFormer, SETR, CGRSeg, StructToken-semantic): backbone ->
  per-pixel head -> its cross-entropy losses (training) or class probabilities, optionally averaged over sliding
  windows (inference).

MODEL.META_ARCHITECTURE names one of them; each refuses at build time a config whose heads belong to the other.
"""

from .base import SegmentorBase, resize_to_output
from .mask_classification import UniversalSegmentor
from .per_pixel import PerPixelSegmentor

__all__ = ["PerPixelSegmentor", "SegmentorBase", "UniversalSegmentor", "resize_to_output"]
