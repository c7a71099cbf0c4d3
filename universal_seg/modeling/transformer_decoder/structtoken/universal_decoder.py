"""StructToken as a mask-classification decoder (universal mode, new in this project).

N structure tokens (not tied to classes) interact with the pixel decoder's mask features; each token's map is a
mask logit map, and a class head reads each token's map-weighted average of the features. Trained with
Mask2Former's Hungarian matcher and criterion, so semantic, instance and panoptic inference are the shared ones.
"""

import torch
from detectron2.config import configurable
from torch import nn

from ..build import TRANSFORMER_DECODER_REGISTRY
from .blocks import StructTokenStack
from .layers import RefineBlock


def masked_average(masks: torch.Tensor, features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-token average of the features weighted by sigmoid(mask logits).

    masks [B, N, h, w], features [B, C, h, w] -> [B, N, C].
    """
    w = masks.sigmoid().flatten(2)
    return (w @ features.flatten(2).transpose(1, 2)) / (w.sum(-1, keepdim=True) + eps)


@TRANSFORMER_DECODER_REGISTRY.register()
class StructTokenDecoder(nn.Module):
    """(multi-scale features, mask_features [B, D, H/4, W/4]) -> {"pred_logits": [B, N, K+1],
    "pred_masks": [B, N, H/4, W/4], "aux_outputs": one prediction per block in training, [] in eval}.

    The blocks run on a 1x1 projection (D -> C) of mask_features; the multi-scale features are not used.
    Final prediction: refinement block on the last block's token maps. Class head (shared): LayerNorm ->
    Linear C -> K + 1 on :func:`masked_average` of the block's features.

    Args:
        in_channels: channels of the multi-scale features (unused; the decoder reads mask_features).
        mask_classification: must be True.
        num_classes: K. num_queries: N tokens. hidden_dim: C. mask_dim: D.
        interaction, token_size, num_blocks, drop_path_rate: as :class:`.blocks.StructTokenStack`.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        num_queries: int,
        hidden_dim: int,
        mask_dim: int,
        interaction: str,
        token_size: tuple[int, int],
        num_blocks: int = 4,
        drop_path_rate: float = 0.1,
    ):
        super().__init__()
        if not mask_classification:
            raise ValueError(
                "StructTokenDecoder predicts masks with classes; for semantic-only logits use the "
                "per-pixel StructTokenHead (MODEL.META_ARCHITECTURE: PerPixelSegmentor, "
                "MODEL.SEM_SEG_HEAD.NAME: StructTokenHead)."
            )
        self.num_queries = num_queries
        self.input_proj = nn.Conv2d(mask_dim, hidden_dim, 1)
        self.stack = StructTokenStack(
            interaction, num_queries, hidden_dim, tuple(token_size), num_blocks, drop_path_rate
        )
        self.refine = RefineBlock(num_queries)
        self.class_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf, st = cfg.MODEL.MASK_FORMER, cfg.MODEL.STRUCTTOKEN
        if mf.DEEP_SUPERVISION and mf.DEC_LAYERS != st.NUM_BLOCKS + 1:
            raise ValueError(
                f"StructTokenDecoder makes MODEL.STRUCTTOKEN.NUM_BLOCKS + 1 = {st.NUM_BLOCKS + 1} "
                f"predictions (one per block and the refined one), so set MODEL.MASK_FORMER.DEC_LAYERS "
                f"to {st.NUM_BLOCKS + 1} (got {mf.DEC_LAYERS})."
            )
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "hidden_dim": mf.HIDDEN_DIM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "interaction": st.INTERACTION,
            "token_size": tuple(st.TOKEN_SIZE),
            "num_blocks": st.NUM_BLOCKS,
            "drop_path_rate": st.DROP_PATH_RATE,
        }

    def predict(self, s: torch.Tensor, f: torch.Tensor) -> dict:
        """Token maps s [B, N, h, w] and features f [B, C, h, w] -> {"pred_logits": [B, N, K+1], "pred_masks": s}."""
        return {"pred_logits": self.class_embed(self.class_norm(masked_average(s, f))), "pred_masks": s}

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor) -> dict:
        states = self.stack(self.input_proj(mask_features))
        s, f = states[-1]
        out = self.predict(self.refine(s), f)
        out["aux_outputs"] = [self.predict(s_i, f_i) for s_i, f_i in states] if self.training else []
        return out
