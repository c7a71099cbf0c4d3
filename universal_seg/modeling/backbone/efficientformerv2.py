"""EfficientFormerV2 (Li et al., ICCV 2023) S0/S1/S2/L through timm, as a detectron2 backbone (CGRSeg's encoder).

timm's model has attention layers sized for one input resolution (7x7 at 224). After building the timm model,
each of its attention layers is replaced by one of ours (:class:`ResizableAttention2d`,
:class:`ResizableAttention2dDownsample`) that takes over its sub-modules, parameters and buffers under the same
names (so checkpoints load unchanged) and whose grid follows the input: the learned bias table (indexed by
absolute offsets, [heads, r0*r1]) is resized bicubically to the input's grid when it differs from the grid the
layer was built for, so any input size works; on that grid the computation equals timm's. No module state
changes during a forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling import BACKBONE_REGISTRY
from timm.models import efficientformer_v2 as effv2
from torch import nn

from .common import check_variant
from .timm_backbone import TimmBackbone

# variant: timm name, paper (EfficientFormerV2 Table) widths, depths, params (M), GMACs at 224.
EFFICIENTFORMERV2_VARIANTS = {
    "S0": dict(
        timm_name="efficientformerv2_s0",
        widths=(32, 48, 96, 176),
        depths=(2, 2, 6, 4),
        paper_params_m=3.5,
        paper_gmacs_224=0.40,
    ),
    "S1": dict(
        timm_name="efficientformerv2_s1",
        widths=(32, 48, 120, 224),
        depths=(3, 3, 9, 6),
        paper_params_m=6.1,
        paper_gmacs_224=0.65,
    ),
    "S2": dict(
        timm_name="efficientformerv2_s2",
        widths=(32, 64, 144, 288),
        depths=(4, 4, 12, 8),
        paper_params_m=12.6,
        paper_gmacs_224=1.25,
    ),
    "L": dict(
        timm_name="efficientformerv2_l",
        widths=(40, 80, 192, 384),
        depths=(5, 5, 15, 10),
        paper_params_m=26.1,
        paper_gmacs_224=2.56,
    ),
}


def relative_offset_index(grid: tuple[int, int], query_step: int, device=None) -> torch.Tensor:
    """Bias-table index of every (query, key) pair on a ``grid`` = (h, w) of keys: [Nq, h * w] long.

    Keys are all grid positions, queries every ``query_step``-th row and column (Nq = ceil(h / step) *
    ceil(w / step)), both in row-major order; the pair (q, k) reads the table entry |dy| * w + |dx|.
    """
    h, w = grid
    ky, kx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    qy, qx = ky[::query_step, ::query_step], kx[::query_step, ::query_step]
    dy = (qy.reshape(-1, 1) - ky.reshape(1, -1)).abs()
    dx = (qx.reshape(-1, 1) - kx.reshape(1, -1)).abs()
    return dy * w + dx


def attention_bias(
    table: torch.Tensor, base: tuple[int, int], base_index: torch.Tensor, grid: tuple[int, int], query_step: int
) -> torch.Tensor:
    """Biases [heads, Nq, h * w] for a key ``grid`` = (h, w) from a learned ``table`` [heads, base0 * base1].

    ``base_index`` [Nq0, base0 * base1] is the layer's precomputed index for its own grid ``base``; on another
    grid the table is resized bicubically (as a [heads, base0, base1] image) to [heads, h, w] first.
    """
    if tuple(grid) == tuple(base):
        return table[:, base_index]
    resized = F.interpolate(
        table.reshape(1, -1, base[0], base[1]), size=tuple(grid), mode="bicubic", align_corners=False
    ).reshape(table.shape[0], -1)
    return resized[:, relative_offset_index(grid, query_step, table.device)]


class ResizableAttention2d(nn.Module):
    """EfficientFormerV2 attention (talking heads, local value conv, optional stride-2 query/key grid) over any
    input size, built from timm's ``Attention2d`` ``layer`` (its sub-modules and parameters are taken over).

    forward: x [B, C, H, W] -> [B, C, H, W] (H, W even when the layer is strided).
    """

    def __init__(self, layer: effv2.Attention2d):
        super().__init__()
        self.num_heads, self.key_dim, self.scale, self.dh = layer.num_heads, layer.key_dim, layer.scale, layer.dh
        self.base_grid = tuple(layer.resolution)  # the (strided) grid the bias table was learned on
        self.stride_conv, self.upsample = layer.stride_conv, layer.upsample
        self.q, self.k, self.v, self.v_local = layer.q, layer.k, layer.v, layer.v_local
        self.talking_head1, self.talking_head2 = layer.talking_head1, layer.talking_head2
        self.act, self.proj = layer.act, layer.proj
        self.attention_biases = layer.attention_biases
        self.register_buffer("attention_bias_idxs", layer.attention_bias_idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)  # [B, C, ceil(H/2), ceil(W/2)]
        h, w = x.shape[-2:]
        n = h * w
        q = self.q(x).reshape(B, self.num_heads, -1, n).transpose(2, 3)  # [B, heads, N, key_dim]
        k = self.k(x).reshape(B, self.num_heads, -1, n)  # [B, heads, key_dim, N]
        v = self.v(x)  # [B, dh, h, w]
        v_local = self.v_local(v)
        v = v.reshape(B, self.num_heads, -1, n).transpose(2, 3)  # [B, heads, N, d]
        attn = (q @ k) * self.scale + attention_bias(
            self.attention_biases, self.base_grid, self.attention_bias_idxs, (h, w), 1
        )
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))  # [B, heads, N, N]
        x = (attn @ v).transpose(2, 3).reshape(B, self.dh, h, w) + v_local
        if self.upsample is not None:
            x = self.upsample(x)
        return self.proj(self.act(x))


class ResizableAttention2dDownsample(nn.Module):
    """EfficientFormerV2 attention downsampling (queries on the stride-2 grid, keys on the full one) over any
    input size, built from timm's ``Attention2dDownsample`` ``layer`` (its sub-modules and parameters are taken
    over).

    forward: x [B, C, H, W] -> [B, C', ceil(H/2), ceil(W/2)].
    """

    def __init__(self, layer: effv2.Attention2dDownsample):
        super().__init__()
        self.num_heads, self.key_dim, self.scale, self.dh = layer.num_heads, layer.key_dim, layer.scale, layer.dh
        self.base_grid = tuple(layer.resolution)  # the key grid the bias table was learned on
        self.q, self.k, self.v, self.v_local = layer.q, layer.k, layer.v, layer.v_local
        self.act, self.proj = layer.act, layer.proj
        self.attention_biases = layer.attention_biases
        self.register_buffer("attention_bias_idxs", layer.attention_bias_idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        q = self.q(x)  # [B, heads * key_dim, ceil(H/2), ceil(W/2)]
        h2, w2 = q.shape[-2:]
        q = q.reshape(B, self.num_heads, -1, h2 * w2).transpose(2, 3)  # [B, heads, N2, key_dim]
        k = self.k(x).reshape(B, self.num_heads, -1, H * W)  # [B, heads, key_dim, N]
        v = self.v(x)
        v_local = self.v_local(v)  # [B, dh, h2, w2]
        v = v.reshape(B, self.num_heads, -1, H * W).transpose(2, 3)  # [B, heads, N, d]
        attn = (q @ k) * self.scale + attention_bias(
            self.attention_biases, self.base_grid, self.attention_bias_idxs, (H, W), 2
        )
        attn = attn.softmax(dim=-1)  # [B, heads, N2, N]
        x = (attn @ v).transpose(2, 3).reshape(B, self.dh, h2, w2) + v_local
        return self.proj(self.act(x))


def make_resolution_agnostic(model: nn.Module) -> nn.Module:
    """Replace every timm EfficientFormerV2 attention layer in ``model`` by our resizable one (same names)."""
    replacements = {
        effv2.Attention2d: ResizableAttention2d,
        effv2.Attention2dDownsample: ResizableAttention2dDownsample,
    }
    for name, m in list(model.named_modules()):
        if type(m) in replacements:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, replacements[type(m)](m))
    return model


class EfficientFormerV2Features(TimmBackbone):
    """EfficientFormerV2 variant -> res2..res5 (strides 4..32, channels = the variant's widths)."""

    def __init__(self, variant: str, **kwargs):
        v = check_variant(variant, EFFICIENTFORMERV2_VARIANTS, "MODEL.EFFICIENTFORMERV2.VARIANT")
        super().__init__(v["timm_name"], config_key="MODEL.EFFICIENTFORMERV2", **kwargs)
        make_resolution_agnostic(self.model)


def efficientformerv2(variant: str, **kwargs) -> EfficientFormerV2Features:
    return EfficientFormerV2Features(variant, **kwargs)


@BACKBONE_REGISTRY.register()
def EfficientFormerV2Backbone(cfg, input_shape):
    """From MODEL.EFFICIENTFORMERV2.{VARIANT, PRETRAINED, DROP_PATH_RATE, OUT_FEATURES}, MODEL.BACKBONE.FREEZE_AT."""
    c = cfg.MODEL.EFFICIENTFORMERV2
    return efficientformerv2(
        c.VARIANT,
        pretrained=c.PRETRAINED,
        out_features=c.OUT_FEATURES,
        in_chans=input_shape.channels,
        drop_path_rate=c.DROP_PATH_RATE,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
