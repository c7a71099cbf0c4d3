"""Any timm model as a detectron2 backbone via ``features_only=True``: feature levels with reduction 4/8/16/32
become res2..res5 (the last level of each reduction wins).

Inputs are zero-padded at the bottom/right to a multiple of 32 and each output is cropped back to
``ceil(H / stride)``, so every model gives the same output sizes for any input size.
"""

from __future__ import annotations

import math

import timm
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from ...layers import ceil_div, pad_to_multiple
from .common import RES_NAMES, RES_STRIDES, FreezableBackbone, check_out_features


def _level_map(reductions: list[int]) -> dict[str, int]:
    """{"res{k}": feature index} for the feature levels whose reduction is 2^k (k = 2..5)."""
    out = {}
    for i, r in enumerate(reductions):
        if r in (4, 8, 16, 32):
            out[f"res{int(math.log2(r))}"] = i
    return out


class TimmBackbone(FreezableBackbone):
    """A timm ``features_only`` model. forward: images [B, 3, H, W] -> {"res{k}": [B, C_k, ceil(H/2^k), ceil(W/2^k)]}.

    Freezing groups: 0 = the modules before res2's stage (the stem); k = the modules after group k-1 up to
    res{k+1}'s stage. Models whose feature wrapper cannot be split that way only accept FREEZE_AT 0 or 5.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        out_features=RES_NAMES,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        freeze_at: int = 0,
        config_key: str = "MODEL.TIMM",
        **model_kwargs,
    ):
        super().__init__()
        self._out_features = check_out_features(out_features, RES_NAMES, f"{config_key}.OUT_FEATURES")
        if not timm.is_model(model_name):
            raise KeyError(f"{config_key}.MODEL_NAME={model_name!r} is not a timm model; see timm.list_models().")
        kwargs = dict(features_only=True, pretrained=pretrained, in_chans=in_chans, **model_kwargs)
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        model = timm.create_model(model_name, **kwargs)
        levels = _level_map(model.feature_info.reduction())
        missing = [n for n in self._out_features if n not in levels]
        if missing:
            raise ValueError(
                f"timm model {model_name!r} has no feature level at stride "
                f"{[RES_STRIDES[n] for n in missing]} (its reductions are "
                f"{model.feature_info.reduction()}); remove {missing} from {config_key}.OUT_FEATURES."
            )
        wanted = sorted(levels[n] for n in self._out_features)
        if wanted != list(range(len(model.feature_info.reduction()))):
            # rebuild with only the needed levels so no parameter goes unused
            model = timm.create_model(
                model_name, out_indices=tuple(model.feature_info.out_indices[i] for i in wanted), **kwargs
            )
            levels = _level_map(model.feature_info.reduction())
        self.model = model
        self.model_name = model_name
        self._index = {n: levels[n] for n in self._out_features}
        chans = model.feature_info.channels()
        self._shapes = {n: ShapeSpec(channels=chans[i], stride=RES_STRIDES[n]) for n, i in self._index.items()}
        self.freeze(freeze_at)

    def freeze_groups(self):
        children = list(self.model.named_children())
        names = [n for n, _ in children]
        stage_ends = []
        for res in RES_NAMES:
            if res not in self._index:
                stage_ends.append(None)
                continue
            mod = self.model.feature_info.module_name()[self._index[res]]
            stage_ends.append(names.index(mod.replace(".", "_")) if mod.replace(".", "_") in names else None)
        groups = [[] for _ in range(5)]
        if all(e is not None for e in stage_ends) and stage_ends == sorted(stage_ends):
            groups[0] = [m for _, m in children[: stage_ends[0]]]
            prev = stage_ends[0]
            for k, end in enumerate(stage_ends):
                start = prev if k == 0 else prev + 1
                groups[k + 1] = [m for _, m in children[start : end + 1]]
                prev = end
            return groups
        self._unsplittable = True
        groups[4] = [self.model]
        return groups

    def freeze(self, freeze_at: int):
        self.freeze_groups()  # finds out whether the stages can be separated (sets _unsplittable)
        if getattr(self, "_unsplittable", False) and freeze_at not in (0, 5):
            raise ValueError(
                f"MODEL.BACKBONE.FREEZE_AT={freeze_at} is not supported for timm model "
                f"{self.model_name!r} (its stages cannot be separated); use 0 or 5."
            )
        return super().freeze(freeze_at)

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x):
        H, W = x.shape[-2:]
        feats = self.model(pad_to_multiple(x, 32))
        out = {}
        for n, i in self._index.items():
            s = RES_STRIDES[n]
            out[n] = feats[i][..., : ceil_div(H, s), : ceil_div(W, s)]
        return out


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape):
    """TimmBackbone from MODEL.TIMM.{MODEL_NAME, PRETRAINED, DROP_PATH_RATE, OUT_FEATURES}, MODEL.BACKBONE.FREEZE_AT."""
    c = cfg.MODEL.TIMM
    return TimmBackbone(
        c.MODEL_NAME,
        pretrained=c.PRETRAINED,
        out_features=c.OUT_FEATURES,
        in_chans=input_shape.channels,
        drop_path_rate=c.DROP_PATH_RATE,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
