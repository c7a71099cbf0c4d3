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

from detectron2.modeling import META_ARCH_REGISTRY

from .base import TASKS, SegmentorBase, resize_to_output
from .mask_classification import UniversalSegmentor
from .per_pixel import PerPixelSegmentor


def meta_arch_class(cfg) -> type[SegmentorBase]:
    """The SegmentorBase subclass registered under cfg.MODEL.META_ARCHITECTURE (ValueError naming the choices)."""
    name = cfg.MODEL.META_ARCHITECTURE
    cls = META_ARCH_REGISTRY.get(name) if name in META_ARCH_REGISTRY else None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, SegmentorBase)):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE={name!r} is not a universal_seg meta-architecture; set it to "
            f"'UniversalSegmentor' (mask classification) or 'PerPixelSegmentor' (per-pixel heads)."
        )
    return cls


def output_tasks(cfg) -> tuple[str, ...]:
    """The tasks ("panoptic", "instance", "semantic", in that preference order) the config's model outputs."""
    return meta_arch_class(cfg).output_tasks(cfg)


def enable_output_task(cfg, task: str) -> None:
    """Turns the model's output for ``task`` on in ``cfg`` (unfrozen); ValueError when the model cannot output it."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}.")
    meta_arch_class(cfg).enable_output_task(cfg, task)


__all__ = [
    "TASKS",
    "PerPixelSegmentor",
    "SegmentorBase",
    "UniversalSegmentor",
    "enable_output_task",
    "meta_arch_class",
    "output_tasks",
    "resize_to_output",
]
