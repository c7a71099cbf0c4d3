"""Registry of per-pixel heads (SegFormer, SETR, ...), selected by MODEL.SEM_SEG_HEAD.NAME.

A per-pixel head classifies every pixel directly instead of predicting (class, mask) pairs, so the
meta-architecture trains it with per-pixel cross-entropy and builds no matcher or criterion for it.
"""
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

PER_PIXEL_HEAD_REGISTRY = Registry("PER_PIXEL_HEAD")
PER_PIXEL_HEAD_REGISTRY.__doc__ = """
Per-pixel heads. Each is built with ``(cfg, input_shape: dict[str, ShapeSpec])`` (the backbone's output shapes),
has the class attribute ``per_pixel = True``, and its forward takes the backbone features
``{name: [B, C, h, w]}`` and returns ``{"sem_seg_logits": [B, K, h', w']}``, plus in training
``"aux_logits": [([B, K, h'', w''], loss_weight), ...]`` when it has auxiliary heads.
"""

# MODEL.SEM_SEG_HEAD.NAME values that select the mask-classification (Mask2Former) head: "" and the names used by
# the official Mask2Former configs and by detectron2's default config, which Mask2Former configs never override.
MASK_CLASSIFICATION_HEAD_NAMES = ("", "MaskFormerHead", "SemSegFPNHead")


def is_per_pixel_head_name(name: str) -> bool:
    """True when MODEL.SEM_SEG_HEAD.NAME names a per-pixel head; raises for names that select no head at all."""
    if name in PER_PIXEL_HEAD_REGISTRY:
        return True
    if name in MASK_CLASSIFICATION_HEAD_NAMES:
        return False
    raise KeyError(f"MODEL.SEM_SEG_HEAD.NAME={name!r} is not registered; choose a per-pixel head from "
                   f"{sorted(k for k, _ in PER_PIXEL_HEAD_REGISTRY)} or one of {list(MASK_CLASSIFICATION_HEAD_NAMES)} "
                   f"for the Mask2Former head.")


def build_per_pixel_head(cfg, input_shape: dict[str, ShapeSpec]):
    """The per-pixel head named by MODEL.SEM_SEG_HEAD.NAME, for backbone outputs ``input_shape``."""
    name = cfg.MODEL.SEM_SEG_HEAD.NAME
    if name not in PER_PIXEL_HEAD_REGISTRY:
        raise KeyError(f"MODEL.SEM_SEG_HEAD.NAME={name!r} is not a registered per-pixel head; choose one of "
                       f"{sorted(k for k, _ in PER_PIXEL_HEAD_REGISTRY)}.")
    return PER_PIXEL_HEAD_REGISTRY.get(name)(cfg, input_shape)


def select_features(input_shape: dict[str, ShapeSpec], names, key: str) -> dict[str, ShapeSpec]:
    """The shapes of ``names`` (in that order), with one clear error naming ``key`` when the backbone lacks one."""
    missing = [n for n in names if n not in input_shape]
    if missing:
        raise ValueError(f"{key}={list(names)} asks for {missing}, which the backbone does not output "
                         f"(it outputs {sorted(input_shape)}); fix {key} or the backbone's out features.")
    return {n: input_shape[n] for n in names}
