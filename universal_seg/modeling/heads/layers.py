"""Small building blocks shared by the per-pixel heads."""

import torch
from detectron2.layers import get_norm
from torch import nn


class ConvNormAct(nn.Module):
    """Conv (bias only without a norm) -> norm -> ReLU, named ``conv`` / ``bn`` like mmcv's ConvModule.
    [B, C_in, h, w] -> [B, C_out, h, w] (``padding = kernel_size // 2``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, norm: str = "BN"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.bn = get_norm(norm, out_channels) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
