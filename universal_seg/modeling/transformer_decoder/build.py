"""Registry of decoders, selected by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME."""

from detectron2.utils.registry import Registry

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Decoders built with ``(cfg, in_channels, mask_classification)``; forward takes
``(multi_scale_features: list of [B, C, h, w] coarse to fine, mask_features [B, D, H/4, W/4])`` and returns
``{"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H/4, W/4], "aux_outputs": [...]}``.
"""


def build_transformer_decoder(cfg, in_channels: int, mask_classification: bool = True):
    """The decoder named by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    if name not in TRANSFORMER_DECODER_REGISTRY:
        raise KeyError(
            f"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME={name!r} is not registered; "
            f"choose one of {sorted(k for k, _ in TRANSFORMER_DECODER_REGISTRY)}."
        )
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)
