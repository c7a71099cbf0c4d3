"""The three interactions between structure tokens S [B, K, h, w] and features F [B, C, h, w]: CSE, SSE, PWE.

Each module's forward takes ``(s, f)`` and returns the updated ``(s, f)`` with unchanged shapes.
"""

import math

import torch
from torch import nn

from ....layers import DropPath
from .layers import ProjectionBlock

INTERACTIONS = ("CSE", "SSE", "PWE")


def slice_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention between channel slices: ``softmax(q k^T / sqrt(N)) v``.

    q [B, Cq, h, w], k and v [B, Ck, h, w] (each channel is a token of N = h * w values) -> [B, Cq, h, w]; the
    attention matrix is [B, Cq, Ck] (softmax over Ck).
    """
    B, cq, h, w = q.shape
    n = h * w
    attn = torch.softmax(q.flatten(2) @ k.flatten(2).transpose(1, 2) / math.sqrt(n), dim=-1)
    return (attn @ v.flatten(2)).view(B, cq, h, w)


class CrossSliceExtraction(nn.Module):
    """CSE: Q from S, K / V from F, slice attention [K x C], output projection, residual into S (F unchanged)."""

    def __init__(self, num_tokens: int, channels: int, drop_path: float = 0.0):
        super().__init__()
        self.q, self.out = ProjectionBlock(num_tokens), ProjectionBlock(num_tokens)
        self.k, self.v = ProjectionBlock(channels), ProjectionBlock(channels)
        self.drop_path = DropPath(drop_path)

    def forward(self, s: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return s + self.drop_path(self.out(slice_attention(self.q(s), self.k(f), self.v(f)))), f


class _Concat(nn.Module):
    """Runs ``branch`` on concat([S; F]) (K + C channels) with a residual, then splits back into (S, F)."""

    def __init__(self, num_tokens: int, drop_path: float):
        super().__init__()
        self.num_tokens = num_tokens
        self.drop_path = DropPath(drop_path)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, s: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([s, f], dim=1)
        x = x + self.drop_path(self.branch(x))
        return x[:, : self.num_tokens], x[:, self.num_tokens :]


class SelfSliceExtraction(_Concat):
    """SSE: slice self-attention over the K + C channels of concat([S; F]), output projection, residual, split."""

    def __init__(self, num_tokens: int, channels: int, drop_path: float = 0.0):
        super().__init__(num_tokens, drop_path)
        d = num_tokens + channels
        self.q, self.k, self.v, self.out = (ProjectionBlock(d) for _ in range(4))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(slice_attention(self.q(x), self.k(x), self.v(x)))


class PointWiseExtraction(_Concat):
    """PWE: projection -> 1x1 conv mixing all K + C channels -> projection on concat([S; F]), residual, split."""

    def __init__(self, num_tokens: int, channels: int, drop_path: float = 0.0):
        super().__init__(num_tokens, drop_path)
        d = num_tokens + channels
        self.proj_in, self.mix, self.proj_out = ProjectionBlock(d), nn.Conv2d(d, d, 1), ProjectionBlock(d)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.mix(self.proj_in(x)))


def build_interaction(name: str, num_tokens: int, channels: int, drop_path: float = 0.0) -> nn.Module:
    """The interaction ``name`` (CSE / SSE / PWE) between ``num_tokens`` token maps and ``channels`` features."""
    classes = {"CSE": CrossSliceExtraction, "SSE": SelfSliceExtraction, "PWE": PointWiseExtraction}
    if name not in classes:
        raise ValueError(f"MODEL.STRUCTTOKEN.INTERACTION={name!r} is unknown; choose one of {list(INTERACTIONS)}.")
    return classes[name](num_tokens, channels, drop_path)
