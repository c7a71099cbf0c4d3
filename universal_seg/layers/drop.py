"""Stochastic depth (Huang et al. 2016): timm's ``DropPath`` / ``drop_path`` (per-sample dropping of residual
branches, scaled by 1 / keep), and the per-block rate schedule."""

from __future__ import annotations

from typing import Sequence

from timm.layers import DropPath, drop_path

__all__ = ["DropPath", "drop_path", "linear_drop_path_rates"]


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
