"""Learnable structure-token maps and the stack of StructToken blocks shared by the semantic head and the
universal decoder."""

import torch
import torch.nn.functional as F
from torch import nn

from ....layers import DropPath, linear_drop_path_rates
from .interaction import build_interaction
from .layers import FFN


class StructTokenBlock(nn.Module):
    """Interaction (CSE / SSE / PWE) between S and F, then a residual FFN on each.
    (s [B, T, h, w], f [B, C, h, w]) -> same shapes.

    ``feature_ffn`` False drops the FFN on F (for a last block whose features nothing reads: it would be an
    unused parameter set, which distributed training rejects).
    """

    def __init__(
        self,
        interaction: str,
        num_tokens: int,
        channels: int,
        drop_path: float = 0.0,
        ffn_ratio: int = 4,
        feature_ffn: bool = True,
    ):
        super().__init__()
        self.interaction = build_interaction(interaction, num_tokens, channels, drop_path)
        self.ffn_tokens = FFN(num_tokens, ffn_ratio)
        self.ffn_features = FFN(channels, ffn_ratio) if feature_ffn else None
        self.drop_path = DropPath(drop_path)

    def forward(self, s: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, f = self.interaction(s, f)
        if self.ffn_features is not None:
            f = f + self.drop_path(self.ffn_features(f))
        return s + self.drop_path(self.ffn_tokens(s)), f


class StructTokenStack(nn.Module):
    """T learnable token maps [1, T, h0, w0] (bicubically resized to the features' size) refined by ``num_blocks``
    blocks with drop-path rates rising linearly from 0 to ``drop_path_rate``.

    forward: f [B, C, h, w] -> list of ``num_blocks`` (s [B, T, h, w], f [B, C, h, w]), one after each block.
    ``last_features_used`` False: the caller reads only the last block's tokens, so that block has no FFN on F.
    """

    def __init__(
        self,
        interaction: str,
        num_tokens: int,
        channels: int,
        token_size: tuple[int, int],
        num_blocks: int = 4,
        drop_path_rate: float = 0.1,
        last_features_used: bool = True,
    ):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"MODEL.STRUCTTOKEN.NUM_BLOCKS must be >= 1, got {num_blocks}.")
        self.tokens = nn.Parameter(torch.zeros(1, num_tokens, *token_size))
        nn.init.trunc_normal_(self.tokens, std=0.02)
        rates = linear_drop_path_rates(drop_path_rate, [num_blocks])[0]
        self.blocks = nn.ModuleList(
            StructTokenBlock(interaction, num_tokens, channels, r, feature_ffn=last_features_used or i < num_blocks - 1)
            for i, r in enumerate(rates)
        )

    def token_maps(self, f: torch.Tensor) -> torch.Tensor:
        """The token maps at f's size, expanded over the batch: [B, T, h, w]."""
        s = self.tokens
        if s.shape[-2:] != f.shape[-2:]:
            s = F.interpolate(s, size=f.shape[-2:], mode="bicubic", align_corners=False)
        return s.expand(f.shape[0], -1, -1, -1)

    def forward(self, f: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        s = self.token_maps(f)
        states = []
        for block in self.blocks:
            s, f = block(s, f)
            states.append((s, f))
        return states
