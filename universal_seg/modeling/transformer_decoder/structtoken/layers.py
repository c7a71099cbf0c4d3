"""StructToken's convolutional building blocks (Lin et al., 2022): projection block, FFN, final refinement.

Every block maps ``[B, C, h, w] -> [B, C', h, w]``; LayerNorms normalise the channels of each pixel.
"""

import torch
from torch import nn

from ....layers import LayerNorm2d


class ProjectionBlock(nn.Module):
    """1x1 conv C_in -> C_out -> LN -> GELU -> 3x3 depthwise conv -> LN -> GELU -> 1x1 conv -> LN.
    [B, C_in, h, w] -> [B, C_out, h, w]."""

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        c = out_channels or in_channels
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, c, 1),
            LayerNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, c, 3, padding=1, groups=c),
            LayerNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, c, 1),
            LayerNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class FFN(nn.Module):
    """The residual branch of StructToken's FFN: 1x1 conv C -> rC, LN, GELU -> 3x3 conv (groups = C) -> LN, GELU
    -> 1x1 conv rC -> C, LN. [B, C, h, w] -> [B, C, h, w] (the caller adds the residual)."""

    def __init__(self, channels: int, ratio: int = 4):
        super().__init__()
        hidden = ratio * channels
        self.layers = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            LayerNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=channels),
            LayerNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1),
            LayerNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class RefineBlock(nn.Module):
    """Final refinement: pre-activation residual block ``x + conv(GELU(LN(conv(GELU(LN(x))))))`` with 3x3 convs.
    [B, K, h, w] -> [B, K, h, w]."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            LayerNorm2d(channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            LayerNorm2d(channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)
