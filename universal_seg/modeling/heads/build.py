"""Registry of per-pixel heads (SegFormer, SETR, CGRSeg, StructToken-semantic), selected by MODEL.SEM_SEG_HEAD.NAME
under the PerPixelSegmentor meta-architecture (MODEL.META_ARCHITECTURE).

A per-pixel head classifies every pixel directly instead of predicting (class, mask) pairs, so it is trained with
per-pixel cross-entropy (its own :meth:`~.base.PerPixelHead.losses`) and needs no matcher or criterion.
"""

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

PER_PIXEL_HEAD_REGISTRY = Registry("PER_PIXEL_HEAD")
PER_PIXEL_HEAD_REGISTRY.__doc__ = """
Per-pixel heads: subclasses of :class:`~.base.PerPixelHead`, built with ``(cfg, input_shape: dict[str, ShapeSpec])``
(the backbone's output shapes). Their forward takes the backbone features ``{name: [B, C, h, w]}`` and returns
``{"sem_seg_logits": [B, K, h', w']}``, plus in training ``"aux_logits": [([B, K, h'', w''], loss_weight), ...]``
when they have auxiliary heads; ``losses(outputs, targets [B, H, W])`` gives their weighted CE losses.
"""


def per_pixel_head_names() -> list[str]:
    """The registered per-pixel head names, sorted."""
    return sorted(k for k, _ in PER_PIXEL_HEAD_REGISTRY)


def build_per_pixel_head(cfg, input_shape: dict[str, ShapeSpec]):
    """The per-pixel head named by MODEL.SEM_SEG_HEAD.NAME, for backbone outputs ``input_shape``."""
    name = cfg.MODEL.SEM_SEG_HEAD.NAME
    if name not in PER_PIXEL_HEAD_REGISTRY:
        raise KeyError(
            f"MODEL.SEM_SEG_HEAD.NAME={name!r} is not a registered per-pixel head; choose one of "
            f"{per_pixel_head_names()}."
        )
    return PER_PIXEL_HEAD_REGISTRY.get(name)(cfg, input_shape)


def select_features(input_shape: dict[str, ShapeSpec], names, key: str) -> dict[str, ShapeSpec]:
    """The shapes of ``names`` (in that order), with one clear error naming ``key`` when the backbone lacks one."""
    missing = [n for n in names if n not in input_shape]
    if missing:
        raise ValueError(
            f"{key}={list(names)} asks for {missing}, which the backbone does not output "
            f"(it outputs {sorted(input_shape)}); fix {key} or the backbone's out features."
        )
    return {n: input_shape[n] for n in names}
