"""Registry of pixel decoders, selected by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME."""

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders. Each is built with ``(cfg, input_shape: dict[str, ShapeSpec])`` and its forward returns
``(mask_features [B, mask_dim, H/4, W/4], multi_scale_features: list of [B, C, h, w] from coarse to fine)``.
"""


def build_pixel_decoder(cfg, input_shape: dict[str, ShapeSpec]):
    """The pixel decoder named by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME, for backbone outputs ``input_shape``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    if name not in PIXEL_DECODER_REGISTRY:
        raise KeyError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r} is not registered; "
            f"choose one of {sorted(k for k, _ in PIXEL_DECODER_REGISTRY)}."
        )
    return PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
