"""The three sub-layers of a Mask2Former decoder layer (tokens are batch-first: [B, N, C]).

Each supports post-norm (the official default) and pre-norm; parameter names follow the official checkpoints.
"""
import torch
import torch.nn.functional as F
from torch import nn


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries: q = k = x + query_pos, v = x."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """tgt, query_pos: [B, Q, C]."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = _with_pos(x, query_pos)
        tgt = tgt + self.dropout(self.self_attn(q, k, value=x, need_weights=False)[0])
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from queries to one feature level: q = x + query_pos, k = memory + pos, v = memory."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt, memory, attn_mask=None, pos=None, query_pos=None) -> torch.Tensor:
        """tgt: [B, Q, C]; memory, pos: [B, HW, C]; attn_mask: [B * heads, Q, HW] bool, True = blocked."""
        x = self.norm(tgt) if self.normalize_before else tgt
        out = self.multihead_attn(_with_pos(x, query_pos), _with_pos(memory, pos), value=memory,
                                  attn_mask=attn_mask, need_weights=False)[0]
        tgt = tgt + self.dropout(out)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Position-wise feed-forward: Linear -> ReLU -> Linear, residual."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (names ``layers.i``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x
