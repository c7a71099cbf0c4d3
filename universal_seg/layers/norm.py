"""Normalisation layers."""

from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a feature map (the tokens' LayerNorm): [B, C, H, W] -> [B, C, H, W]."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
