"""Shared pieces of the backbones: output-name and variant checks, stage freezing (blocks: universal_seg.layers)."""

from __future__ import annotations

from typing import Iterable, Sequence

from detectron2.modeling import Backbone
from torch import nn

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
            raise ValueError(
                f"MODEL.BACKBONE.FREEZE_AT={freeze_at} is invalid: use 0..{len(groups)} "
                f"(0 = train all, 1 = freeze the stem, {len(groups)} = freeze every stage)."
            )
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
