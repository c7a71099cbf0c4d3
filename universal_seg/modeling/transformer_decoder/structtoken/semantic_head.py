"""StructToken's semantic head (Lin et al., 2022) as a per-pixel head: one structure token per class.

features -> 1x1 conv to C channels -> K token maps + NUM_BLOCKS StructToken blocks -> refinement block ->
per-class logits at the features' resolution (upsampled and trained with per-pixel CE by PerPixelHead.losses).
"""

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ...heads.base import PerPixelHead
from ...heads.build import PER_PIXEL_HEAD_REGISTRY
from ...pixel_decoder import build_pixel_decoder
from .blocks import StructTokenStack
from .layers import RefineBlock

FEATURE_SOURCES = ("backbone", "pixel_decoder")


@PER_PIXEL_HEAD_REGISTRY.register()
class StructTokenHead(PerPixelHead):
    """features {name: [B, C_in, h, w]} -> {"sem_seg_logits": [B, K, h, w]}.

    Args:
        in_channels: channels C_in of the input map (a backbone feature, or the pixel decoder's mask features).
        num_classes: K, also the number of structure tokens.
        channels: C, the channels of the features inside the blocks (after the 1x1 input conv).
        interaction: "CSE", "SSE" or "PWE".
        token_size: (h0, w0) of the learnable token map [1, K, h0, w0].
        in_feature: the backbone feature read when ``pixel_decoder`` is None.
        pixel_decoder: optional module mapping the backbone features to (mask_features, multi-scale features);
            when given, mask_features is the input map.
        loss_weight, ignore_label: of the per-pixel CE (:class:`PerPixelHead`).

    The refinement block gives the logits directly: this head has no dropout + 1x1 classifier.
    """

    num_inputs = 1
    inputs_description = "one backbone feature map"
    inputs_example = "one name, e.g. ['layer11']"

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        channels: int,
        interaction: str,
        token_size: tuple[int, int],
        num_blocks: int = 4,
        drop_path_rate: float = 0.1,
        in_feature: str = "",
        pixel_decoder: nn.Module | None = None,
        loss_weight: float = 1.0,
        ignore_label: int = 255,
        class_weights: tuple[float, ...] = (),
        focal_gamma: float = 0.0,
    ):
        super().__init__(
            num_classes=num_classes,
            loss_weight=loss_weight,
            ignore_label=ignore_label,
            class_weights=class_weights,
            focal_gamma=focal_gamma,
        )
        self.in_feature = in_feature
        self.pixel_decoder = pixel_decoder
        self.input_proj = nn.Conv2d(in_channels, channels, 1)
        self.stack = StructTokenStack(
            interaction, num_classes, channels, tuple(token_size), num_blocks, drop_path_rate, last_features_used=False
        )
        self.refine = RefineBlock(num_classes)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        head, st = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.STRUCTTOKEN
        cls.check_aux_inputs(cfg)
        args = {
            **cls.loss_config(cfg),
            "channels": head.CONVS_DIM,
            "interaction": st.INTERACTION,
            "token_size": tuple(st.TOKEN_SIZE),
            "num_blocks": st.NUM_BLOCKS,
            "drop_path_rate": st.DROP_PATH_RATE,
        }
        if st.FEATURE_SOURCE == "backbone":
            shape = cls.select_inputs(cfg, input_shape)
            return {**args, "in_channels": shape[head.IN_FEATURES[0]].channels, "in_feature": head.IN_FEATURES[0]}
        if st.FEATURE_SOURCE == "pixel_decoder":
            return {**args, "in_channels": head.MASK_DIM, "pixel_decoder": build_pixel_decoder(cfg, input_shape)}
        raise ValueError(
            f"MODEL.STRUCTTOKEN.FEATURE_SOURCE={st.FEATURE_SOURCE!r} is unknown; choose one of {list(FEATURE_SOURCES)}."
        )

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        x = features[self.in_feature] if self.pixel_decoder is None else self.pixel_decoder(features)[0]
        s, _ = self.stack(self.input_proj(x))[-1]
        return {"sem_seg_logits": self.refine(s)}
