"""universal_seg: universal image segmentation (Mask2Former, StructToken, SegFormer, SETR, CGRSeg) on detectron2.

Subpackages: ``ops`` (compiled multi-scale deformable attention, CPU and CUDA).
"""

__version__ = "0.1.0"
