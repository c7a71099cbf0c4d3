"""OneFormer's task-conditioned decoder (Jain et al. 2023, Sec. 3.2): Mask2Former's masked-attention decoder whose
initial queries come from the task token.

The N - 1 object queries start as copies of the task token and are refined by a small DETR-style transformer
decoder (``class_transformer``: self-attention, cross-attention, FFN; post-norm) against the 1/4-resolution mask
features; the task token is appended as the N-th query. As in the official code, the cross-attention's keys are
sine positions + ``class_input_proj(mask_features)`` and its values the sine positions. The N queries then go
through the Mask2Former layers (no learnable query features; ``query_embed`` is the query position, and its first
N - 1 rows are also the class transformer's query positions). Parameter names equal the official checkpoints'.
"""

import torch
from detectron2.config import configurable
from torch import nn

from ...ops import Linear
from .attention_layers import MultiheadAttention, _with_pos, _xavier_init
from .build import TRANSFORMER_DECODER_REGISTRY
from .mask2former import MultiScaleMaskedTransformerDecoder


class QueryTransformerLayer(nn.Module):
    """DETR decoder layer on batch-first tokens: self-attention -> cross-attention -> FFN (ReLU), each residual,
    post-norm (``norm1..3``) or pre-norm."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, tgt, memory, pos, query_pos):
        """tgt, query_pos [B, Q, C]; memory, pos [B, HW, C] -> [B, Q, C]."""
        pre = self.normalize_before
        x = self.norm1(tgt) if pre else tgt
        q = _with_pos(x, query_pos)
        tgt = tgt + self.dropout(self.self_attn(q, q, x))
        tgt = tgt if pre else self.norm1(tgt)
        x = self.norm2(tgt) if pre else tgt
        tgt = tgt + self.dropout(self.multihead_attn(_with_pos(x, query_pos), _with_pos(memory, pos), memory))
        tgt = tgt if pre else self.norm2(tgt)
        x = self.norm3(tgt) if pre else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(torch.relu(self.linear1(x)))))
        return tgt if pre else self.norm3(tgt)


class QueryTransformer(nn.Module):
    """``decoder.layers`` (QueryTransformerLayer) + ``decoder.norm`` (the official Transformer with 0 encoder
    layers, hence only a decoder)."""

    def __init__(self, d_model, nhead, num_layers, dim_feedforward, dropout, normalize_before):
        super().__init__()
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(
            QueryTransformerLayer(d_model, nhead, dim_feedforward, dropout, normalize_before) for _ in range(num_layers)
        )
        self.decoder.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, tgt, memory, pos, query_pos):
        for layer in self.decoder.layers:
            tgt = layer(tgt, memory, pos, query_pos)
        return self.decoder.norm(tgt)


@TRANSFORMER_DECODER_REGISTRY.register()
class OneFormerTransformerDecoder(MultiScaleMaskedTransformerDecoder):
    """
    Args (besides the Mask2Former decoder's):
        class_dec_layers: layers of the query transformer (official CLASS_DEC_LAYERS: 2).
        dropout: dropout of the query transformer (official 0.1; the masked-attention layers use none).
        use_task_norm: apply ``decoder_norm`` to the task token first and start the object queries from it
            (official True); False starts them from zeros.
    """

    @configurable
    def __init__(self, in_channels: int, mask_classification: bool = True, *, class_dec_layers: int, dropout: float,
                 use_task_norm: bool, **kwargs):  # fmt: skip
        super().__init__(in_channels, mask_classification, **kwargs)
        del self.query_feat  # the queries come from the task token
        hidden_dim = self.query_embed.weight.shape[1]
        self.use_task_norm = use_task_norm
        self.class_transformer = QueryTransformer(
            hidden_dim, self.num_heads, class_dec_layers, kwargs["dim_feedforward"], dropout, kwargs["pre_norm"]
        )
        self.class_input_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.class_input_proj.weight, a=1)
        nn.init.zeros_(self.class_input_proj.bias)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        of = cfg.MODEL.ONE_FORMER
        return {
            **super().from_config(cfg, in_channels, mask_classification),
            "class_dec_layers": of.CLASS_DEC_LAYERS,
            "dropout": of.DROPOUT,
            "use_task_norm": of.USE_TASK_NORM,
        }

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor, task: torch.Tensor | None = None) -> dict:
        """x, mask_features as Mask2Former's decoder; task: the mapped task token [B, C].

        Returns Mask2Former's dict plus, in training, "contrastive_logits": the N initial queries [B, N, C]
        (object queries + task token), the image side of the query-text contrastive loss.
        """
        if task is None:
            raise ValueError(
                "OneFormerTransformerDecoder needs the task token (task=[B, C]), which UniversalSegmentor passes when "
                "MODEL.ONE_FORMER.TASK_CONDITIONED is True (and universal_seg.export's wrappers, from MODEL.TEST.TASK)."
            )
        src, pos, sizes = self.prepare_features(x)
        B = mask_features.shape[0]
        task = task.unsqueeze(1)  # [B, 1, C]
        if self.use_task_norm:
            task = self.decoder_norm(task)
        object_pos = self.query_embed.weight[:-1].unsqueeze(0).expand(B, -1, -1)
        start = task.expand_as(object_pos) if self.use_task_norm else torch.zeros_like(object_pos)
        feat_pos = self.pe_layer(mask_features).flatten(2).transpose(1, 2)  # [B, HW, C]
        keys_pos = self.class_input_proj(mask_features).flatten(2).transpose(1, 2)
        objects = self.class_transformer(start, feat_pos, keys_pos, object_pos)
        queries = torch.cat([objects, task], dim=1)  # [B, N, C]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(B, -1, -1)
        out = self.decode(queries, query_pos, src, pos, sizes, mask_features)
        if self.training:
            out["contrastive_logits"] = queries
        return out
