"""Shared pieces of the backbones: output-name checks, stage freezing, drop-path, padding helpers."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling import Backbone

RES_NAMES = ("res2", "res3", "res4", "res5")
RES_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def check_out_features(out_features: Sequence[str], available: Sequence[str], key: str) -> list[str]:
    """Return ``out_features`` as a list, or raise one clear ValueError naming the config ``key``."""
    out_features = list(out_features)
    bad = [f for f in out_features if f not in available]
    if bad or not out_features:
        raise ValueError(f"{key}={out_features} is invalid: choose a non-empty subset of {list(available)}.")
    return out_features


def check_variant(variant: str, table: dict, key: str):
    """The entry of ``table`` named ``variant``, or one clear KeyError naming the config ``key``."""
    if variant not in table:
        raise KeyError(f"{key}={variant!r} is not a known variant; choose one of {sorted(table)}.")
    return table[variant]


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero a residual branch ``x [B, ...]`` with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) as a module; identity in eval mode or at rate 0."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x):
        return drop_path(x, self.rate, self.training)

    def extra_repr(self):
        return f"rate={self.rate}"


def linear_drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Per-stage lists of per-block drop-path rates rising linearly from 0 to ``rate`` over all blocks."""
    total = sum(depths)
    rates = [rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start:start + d])
        start += d
    return out


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``x [B, C, H, W]`` at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FreezableBackbone(Backbone):
    """A detectron2 Backbone whose stages can be frozen (``MODEL.BACKBONE.FREEZE_AT`` semantics).

    Subclasses list their parameter groups with :meth:`freeze_groups`: group 0 is the stem (the first
    patch embedding), group k (1..4) holds what computes stage k (res{k+1}). ``freeze_at = n`` freezes groups
    0..n-1 (0 = nothing, 1 = stem, 5 = all stages). Frozen parameters get ``requires_grad = False`` and
    their modules stay in eval mode (dropout / drop-path off) even when the model trains.
    """

    def __init__(self):
        super().__init__()
        self._frozen: list[nn.Module] = []

    def freeze_groups(self) -> list[list[nn.Module | nn.Parameter]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def freeze(self, freeze_at: int) -> "FreezableBackbone":
        groups = self.freeze_groups()
        if not 0 <= freeze_at <= len(groups):
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT={freeze_at} is invalid: use 0..{len(groups)} "
                             f"(0 = train all, 1 = freeze the stem, {len(groups)} = freeze every stage).")
        for group in groups[:freeze_at]:
            for item in group:
                if item is None:
                    continue
                params: Iterable[nn.Parameter] = [item] if isinstance(item, nn.Parameter) else item.parameters()
                for p in params:
                    p.requires_grad_(False)
                if isinstance(item, nn.Module):
                    self._frozen.append(item)
        self.train(self.training)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for m in getattr(self, "_frozen", []):
            m.eval()
        return self

    def output_shape(self):
        return {name: self._shapes[name] for name in self._out_features}


def init_transformer_weights(m: nn.Module) -> None:
    """The ViT-family init (Swin, MiT): truncated-normal(0.02) Linear weights with zero bias; LayerNorm 1 / 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
