"""Mask2Former's masked-attention transformer decoder (Cheng et al. 2022, Sec. 3.2).

Learnable query features and query positions; L layers, layer i attends to feature level i % 3 (1/32, 1/16, 1/8)
with masked cross-attention -> self-attention -> FFN. Predictions (classes over K+1, masks = mask_embed(query) .
mask_features) come after the initial queries and after every layer (deep supervision); each prediction's
mask, resized to the next level and thresholded at 0.5, is the next layer's attention mask.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ...ops import linear
from ..position_encoding import PositionEmbeddingSine
from .attention_layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from .build import TRANSFORMER_DECODER_REGISTRY


def mask_logits(embed: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Mask logits embed . features: embed [B, Q, C], features [B, C, H, W] -> [B, Q, H, W].

    Channels-last features (the CPU layout) are per image a [H*W, C] matrix, so the product is a linear layer over the
    pixels (oneDNN on the CPU, see ops.linear); the result then has channels-last strides. Other layouts use einsum.
    """
    if features.is_contiguous(memory_format=torch.channels_last) and features.shape[1] > 1:
        per_image = [linear(f.permute(1, 2, 0), e) for e, f in zip(embed, features)]  # [H, W, Q] each
        return torch.stack(per_image).permute(0, 3, 1, 2)
    return torch.einsum("bqc,bchw->bqhw", embed, features)


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """
    Args:
        in_channels: channels of the multi-scale features (projected to hidden_dim when different).
        mask_classification: predict classes (always True for Mask2Former).
        num_classes: K (the class head has K + 1 outputs, the last one "no object").
        hidden_dim, num_queries, nheads, dim_feedforward, pre_norm: transformer sizes.
        dec_layers: number of decoder layers (the official DEC_LAYERS minus 1).
        mask_dim: channels of the mask features.
        enforce_input_project: add a 1x1 projection even when in_channels == hidden_dim.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool = False,
        num_feature_levels: int = 3,
    ):
        super().__init__()
        if not mask_classification:
            raise ValueError(
                "MultiScaleMaskedTransformerDecoder predicts masks with classes; "
                "use a per-pixel decoder for semantic-only logits."
            )
        self.mask_classification = mask_classification
        self.num_heads, self.num_layers, self.num_queries = nheads, dec_layers, num_queries
        self.num_feature_levels = num_feature_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, 0.0, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, 0.0, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, 0.0, pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.zeros_(proj.bias)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(
                f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1 (it counts the learnable-query "
                f"prediction), got {mf.DEC_LAYERS}."
            )
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS - 1,  # the official count includes the prediction from the learnable queries
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
        }

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor) -> dict:
        """x: num_feature_levels maps [B, C, h_l, w_l] from coarse to fine; mask_features: [B, D, H, W].

        Returns {"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H, W], "aux_outputs": list of the earlier
        predictions (dec_layers dicts) in training; in eval mode "aux_outputs" is empty and the intermediate
        masks are computed only at attention-mask resolution (identical attention masks, a fraction of the work).
        """
        src, pos, sizes = self.prepare_features(x)
        B = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(B, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(B, -1, -1)
        return self.decode(output, query_pos, src, pos, sizes, mask_features)

    def prepare_features(self, x: list[torch.Tensor]) -> tuple[list, list, list]:
        """Per level: projected features + level embedding [B, hw, C], sine positions [B, hw, C], size (h, w)."""
        if len(x) != self.num_feature_levels:
            raise ValueError(f"the decoder expects {self.num_feature_levels} feature levels, got {len(x)}.")
        sizes = [tuple(f.shape[-2:]) for f in x]
        src, pos = [], []
        for lvl, feat in enumerate(x):
            pos.append(self.pe_layer(feat).flatten(2).transpose(1, 2))  # [B, hw, C]
            src.append(
                (self.input_proj[lvl](feat).flatten(2) + self.level_embed.weight[lvl][None, :, None]).transpose(1, 2)
            )
        return src, pos, sizes

    def decode(self, output, query_pos, src, pos, sizes, mask_features) -> dict:
        """The masked-attention layers from initial queries ``output`` and positions ``query_pos`` (both [B, Q, C]);
        returns the dict of :meth:`forward`."""
        # In eval mode only the last prediction is returned, so intermediate masks are needed only for attention
        # masks: resizing is linear, hence resize(embed . F) == embed . resize(F), computed on the small maps.
        lowres = (
            None
            if self.training
            else [F.interpolate(mask_features, size=s, mode="bilinear", align_corners=False) for s in sizes]
        )
        classes, masks = [], []
        cls_, mask_, attn_mask = self._predict(output, mask_features, sizes[0], lowres, 0, final=self.num_layers == 0)
        classes.append(cls_)
        masks.append(mask_)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](output, src[level], attn_mask, pos[level], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            nxt = (i + 1) % self.num_feature_levels
            cls_, mask_, attn_mask = self._predict(
                output, mask_features, sizes[nxt], lowres, nxt, final=i == self.num_layers - 1
            )
            classes.append(cls_)
            masks.append(mask_)
        aux = [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1])] if self.training else []
        return {"pred_logits": classes[-1], "pred_masks": masks[-1], "aux_outputs": aux}

    def _predict(self, output, mask_features, attn_size, lowres, level, final):
        """Class logits [B, Q, K+1], mask logits [B, Q, H, W] (None for non-final eval predictions) and the next
        attention mask [B * heads, Q, h*w] (True = blocked: sigmoid(mask) < 0.5 at the next level's size)."""
        decoded = self.decoder_norm(output)
        outputs_class = self.class_embed(decoded)
        embed = self.mask_embed(decoded)
        outputs_mask = None
        if self.training or final:
            outputs_mask = mask_logits(embed, mask_features).contiguous()
        if lowres is None:
            small = F.interpolate(outputs_mask, size=attn_size, mode="bilinear", align_corners=False)
        else:
            small = mask_logits(embed, lowres[level])
        attn_mask = (small.flatten(2) < 0).detach()  # sigmoid(x) < 0.5  <=>  x < 0
        # a query whose mask blocks every position attends everywhere instead (no boolean indexing: exportable)
        attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
        attn_mask = attn_mask.unsqueeze(1).expand(-1, self.num_heads, -1, -1).flatten(0, 1)
        return outputs_class, outputs_mask, attn_mask
