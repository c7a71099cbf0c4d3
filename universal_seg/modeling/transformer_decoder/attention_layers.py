"""The three sub-layers of a Mask2Former decoder layer (tokens are batch-first: [B, N, C]).

Each supports post-norm (the official default) and pre-norm; parameter names follow the official checkpoints.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import Linear, linear


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with ``nn.MultiheadAttention``'s parameters and semantics.

    Parameters ``in_proj_weight`` [3C, C], ``in_proj_bias`` [3C] and ``out_proj`` (so official checkpoints load
    unchanged); the projections go through :func:`universal_seg.ops.linear` (oneDNN on the CPU) and the attention
    through ``F.scaled_dot_product_attention``. ``nn.MultiheadAttention`` runs its projections through the BLAS
    ``addmm``, which on the CPU is about half as fast for the decoder's key / value projections of the feature maps.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
            )
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query [B, Lq, C], key / value [B, Lk, C]; attn_mask bool [B * heads, Lq, Lk] (True = blocked) or None.
        Returns [B, Lq, C]."""
        B, Lq, C = query.shape
        Lk, H = key.shape[1], self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = linear(query, w_q, b_q).view(B, Lq, H, C // H).transpose(1, 2)
        k = linear(key, w_k, b_k).view(B, Lk, H, C // H).transpose(1, 2)
        v = linear(value, w_v, b_v).view(B, Lk, H, C // H).transpose(1, 2)
        allowed = None if attn_mask is None else ~attn_mask.view(B, H, Lq, Lk)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, C))


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries: q = k = x + query_pos, v = x."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """tgt, query_pos: [B, Q, C]."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = _with_pos(x, query_pos)
        tgt = tgt + self.dropout(self.self_attn(q, k, x))
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from queries to one feature level: q = x + query_pos, k = memory + pos, v = memory."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt, memory, attn_mask=None, pos=None, query_pos=None) -> torch.Tensor:
        """tgt: [B, Q, C]; memory, pos: [B, HW, C]; attn_mask: [B * heads, Q, HW] bool, True = blocked."""
        x = self.norm(tgt) if self.normalize_before else tgt
        out = self.multihead_attn(_with_pos(x, query_pos), _with_pos(memory, pos), memory, attn_mask)
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Position-wise feed-forward: Linear -> ReLU -> Linear, residual."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.linear1 = Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x), inplace=True))))
        return tgt if self.normalize_before else self.norm(tgt)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (names ``layers.i``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x), inplace=True)
        return x
