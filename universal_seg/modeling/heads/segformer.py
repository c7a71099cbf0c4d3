"""SegFormer's All-MLP decode head (Xie et al., NeurIPS 2021).

Module names equal the official NVlabs / mmseg code (``linear_c{1-4}.proj``, ``linear_fuse.conv`` / ``.bn``,
``linear_pred``) so that, under ``sem_seg_head.``, official ``decode_head.*`` weights load after
:func:`.segformer_convert.convert_segformer_checkpoint`.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ...ops import Linear
from .base import PerPixelHead
from .build import PER_PIXEL_HEAD_REGISTRY
from .layers import ConvNormAct


class MLP(nn.Module):
    """Per-pixel Linear ``proj``: [B, C, h, w] -> [B, E, h, w]."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = Linear(in_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[-2:])


@PER_PIXEL_HEAD_REGISTRY.register()
class SegFormerHead(PerPixelHead):
    """All-MLP head. features {name: [B, C_i, h_i, w_i]} (the four MiT stages, strides 4..32) ->
    {"sem_seg_logits": [B, K, h_1, w_1]} at the finest stage's resolution (1/4).

    Each stage: Linear C_i -> E, bilinear to 1/4; concat [c4, c3, c2, c1]; 1x1 conv 4E -> E (no bias) + norm + ReLU;
    dropout; 1x1 conv E -> K (the classifier, named ``linear_pred`` as in NVlabs' code).

    ``fused`` (default True) computes the same function with fewer operations: the fuse conv's weight splits into
    one [E, E] block W_i per stage, so fuse(concat_i up(A_i x_i + b_i)) = sum_i up(W_i A_i x_i + W_i b_i), because
    bilinear upsampling is linear and its weights sum to 1 (a constant stays constant). Each stage then runs one
    1x1 conv C_i -> E with the composed weight at its own resolution, and the 4E -> E conv at 1/4 resolution is
    gone. Same parameters and checkpoints, equal up to rounding, in training too (gradients flow to A_i, b_i and
    W_i through the composition). ``fused = False`` runs the paper's order (used to count its GFLOPs).
    """

    num_inputs = 4
    inputs_description = "the four MiT stages"
    inputs_example = "['res2', 'res3', 'res4', 'res5']"
    classifier_name = "linear_pred"

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        embed_dim: int = 256,
        dropout: float = 0.1,
        norm: str = "BN",
        loss_weight: float = 1.0,
        ignore_label: int = 255,
        class_weights: tuple[float, ...] = (),
        focal_gamma: float = 0.0,
        fused: bool = True,
    ):
        super().__init__(
            num_classes=num_classes,
            loss_weight=loss_weight,
            ignore_label=ignore_label,
            class_weights=class_weights,
            focal_gamma=focal_gamma,
        )
        self.init_inputs(input_shape)  # fine -> coarse
        for i, name in enumerate(self.in_features):
            self.add_module(f"linear_c{i + 1}", MLP(input_shape[name].channels, embed_dim))
        self.linear_fuse = ConvNormAct(4 * embed_dim, embed_dim, 1, norm)
        self.build_classifier(embed_dim, num_classes, dropout)
        self.fused = fused

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            **cls.loss_config(cfg),
            "input_shape": cls.select_inputs(cfg, input_shape),
            "embed_dim": head.CONVS_DIM,
            "dropout": head.DROPOUT,
            "norm": head.NORM,
        }

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        xs = self.transform_inputs(features)
        x = self._fused_mlp(xs) if self.fused else self._mlp(xs)
        return {"sem_seg_logits": self.classify(x)}

    def _fused_mlp(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """[B, C_i, h_i, w_i] fine -> coarse -> [B, E, h_1, w_1]: sum_i up(conv1x1(x_i; W_i A_i, W_i b_i)), then the
        fuse conv's norm and ReLU."""
        size = xs[0].shape[-2:]
        n, weight = len(xs), self.linear_fuse.conv.weight.flatten(1)  # [E, n E]; concat order: coarse -> fine
        embed = weight.shape[0]
        out = None
        for i, x in enumerate(xs):
            w_i = weight[:, (n - 1 - i) * embed : (n - i) * embed]  # [E, E], acts on stage i's projection
            proj = getattr(self, f"linear_c{i + 1}").proj
            y = F.conv2d(x, (w_i @ proj.weight)[:, :, None, None], F.linear(proj.bias, w_i))  # [B, E, h_i, w_i]
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            if out is None:
                out = y
            elif torch.is_grad_enabled():
                out = out + y
            else:
                out.add_(y)
        if self.linear_fuse.conv.bias is not None:
            out = out + self.linear_fuse.conv.bias[:, None, None]
        return self.linear_fuse.act(self.linear_fuse.bn(out))

    def _mlp(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """The paper's order: per-stage Linear, upsample to 1/4, concat, 1x1 fuse conv + norm + ReLU."""
        size = xs[0].shape[-2:]
        maps = []
        for i, x in enumerate(xs):
            x = getattr(self, f"linear_c{i + 1}")(x)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            maps.append(x)
        return self.linear_fuse(torch.cat(maps[::-1], dim=1))
