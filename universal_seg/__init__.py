"""universal_seg: universal image segmentation (Mask2Former, StructToken, SegFormer, SETR, CGRSeg) on detectron2.

Subpackages: ``ops`` (compiled multi-scale deformable attention, CPU and CUDA), ``modeling``, ``data``,
``evaluation``, ``engine``, ``inference``. ``universal_seg.Predictor`` is the batched inference API
(:class:`universal_seg.inference.Predictor`; imported on first use).
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "Predictor":  # lazy: importing universal_seg (e.g. for its ops) does not build the model registries
        from universal_seg.inference import Predictor

        return Predictor
    raise AttributeError(f"module 'universal_seg' has no attribute {name!r}")
