"""Stochastic depth (Huang et al. 2016): per-sample dropping of residual branches, and its per-block rates."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero a residual branch ``x [B, ...]`` with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Stochastic depth as a module; identity in eval mode or at rate 0."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x):
        return drop_path(x, self.rate, self.training)

    def extra_repr(self):
        return f"rate={self.rate}"


def linear_drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Per-stage lists of per-block drop-path rates rising linearly from 0 to ``rate`` over all blocks.

    ``depths`` [d_1, ..., d_n] blocks per stage; one stage (``[depth]``) gives the plain ViT schedule.
    """
    total = sum(depths)
    rates = [rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out
