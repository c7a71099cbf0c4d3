"""Mask2Former's pixel decoder: a multi-scale deformable-attention encoder over res3..res5, then one FPN step
that adds res2 (Cheng et al. 2022, Sec. 4; Deformable DETR's encoder, Zhu et al. 2021).

Parameter names follow the official Mask2Former checkpoints (``input_proj``, ``transformer.level_embed``,
``transformer.encoder.layers.N``, ``adapter_1``, ``layer_1``, ``mask_features``).
"""

import math

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from ...ops import Linear, MSDeformAttn
from ..position_encoding import PositionEmbeddingSine
from .build import PIXEL_DECODER_REGISTRY


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: x = LN(x + MSDeformAttn(x + pos)); x = LN(x + FFN(x)). Tokens are [B, S, C]."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.0,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        """src, pos: [B, S, C]; reference_points: [B, S, L, 2]. Returns [B, S, C]."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src), inplace=True)))
        return self.norm2(src + self.dropout3(ffn))


class _LayerStack(nn.Module):
    """``layers``: a ModuleList run in sequence (a container, so checkpoint names read ``encoder.layers.N``)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src, *args):
        for layer in self.layers:
            src = layer(src, *args)
        return src


class DeformableEncoder(nn.Module):
    """Flattens the levels, adds level embeddings to the position encodings and runs the deformable layers.

    Every position is a query whose reference point is its own pixel centre (the official model passes no padding
    mask, so valid ratios are 1).
    """

    def __init__(self, d_model=256, n_heads=8, num_layers=6, d_ffn=1024, dropout=0.0, n_levels=3, n_points=4):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.encoder = _LayerStack(
            [DeformableEncoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points) for _ in range(num_layers)]
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(spatial_shapes: list[tuple[int, int]], batch: int, device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1]: [B, S, L, 2] as (x, y)."""
        points = []
        for h, w in spatial_shapes:
            ys, xs = torch.meshgrid(
                (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h,
                (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w,
                indexing="ij",
            )
            points.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
        points = torch.cat(points, 0)[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)
        return points

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]):
        """srcs, pos_embeds: per level [B, C, H_l, W_l]. Returns (memory [B, S, C], shapes [(H_l, W_l)])."""
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos_embeds)], 1
        )
        device = src_flat.device
        if torch.compiler.is_compiling():
            # symbolic sizes (export): the table is computed from them in the graph, not stored as a constant
            spatial_shapes = torch.stack(
                [torch.stack([torch.scalar_tensor(n, dtype=torch.long) for n in shape]) for shape in shapes]
            )
        else:
            # the level table stays on the CPU: the op checks it there and copies it to the GPU without a sync
            spatial_shapes = torch.as_tensor(shapes, dtype=torch.long)
        areas = spatial_shapes.prod(1)
        level_start_index = torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))
        ref = self.reference_points(shapes, src_flat.shape[0], device)
        memory = self.encoder(src_flat, pos_flat, ref, spatial_shapes, level_start_index, None)
        return memory, shapes


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention pixel decoder of Mask2Former.

    Input: backbone features {name: [B, C_name, H/stride, W/stride]}. Output of forward:
    ``(mask_features [B, mask_dim, H/4, W/4], multi_scale_features [1/32, 1/16, 1/8], each [B, conv_dim, h, w])``
    (for the default res2..res5 inputs and common stride 4).
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        transformer_in_features: list[str],
        conv_dim: int,
        mask_dim: int,
        norm: str = "GN",
        transformer_dropout: float = 0.0,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_enc_layers: int = 6,
        n_points: int = 4,
        common_stride: int = 4,
        num_feature_levels: int = 3,
    ):
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MSDeformAttnPixelDecoder needs backbone features {missing}, but the backbone gives "
                f"{sorted(input_shape)}; set MODEL.SEM_SEG_HEAD.IN_FEATURES / the backbone's OUT_FEATURES."
            )
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in shapes]  # fine to coarse
        trans = sorted(((k, v) for k, v in shapes if k in transformer_in_features), key=lambda kv: kv[1].stride)
        self.transformer_in_features = [k for k, _ in trans]
        self.num_feature_levels = num_feature_levels
        self.common_stride = common_stride

        # input projections, coarsest level first (index 0 = res5 in the official checkpoints)
        self.input_proj = nn.ModuleList()
        for _, spec in reversed(trans):
            proj = nn.Sequential(nn.Conv2d(spec.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
            self.input_proj.append(proj)
        self.transformer = DeformableEncoder(
            conv_dim,
            transformer_nheads,
            transformer_enc_layers,
            transformer_dim_feedforward,
            transformer_dropout,
            len(trans),
            n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        # FPN steps from the finest transformer level down to the common stride (one step: res2 for stride 8 -> 4)
        finest_stride = trans[0][1].stride
        self.num_fpn_levels = max(int(math.log2(finest_stride) - math.log2(common_stride)), 0)
        self.lateral_convs, self.output_convs = [], []
        use_bias = norm == ""
        for idx, (_, spec) in enumerate(reversed(shapes[: self.num_fpn_levels])):
            lateral = Conv2d(spec.channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": head.TRANSFORMER_ENC_DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward(self, features: dict[str, torch.Tensor]):
        """features: backbone outputs. Returns (mask_features, multi_scale_features); runs in fp32 even under
        autocast, as the official model does."""
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_fp32({k: v.float() for k, v in features.items()})

    def _forward_fp32(self, features):
        srcs, pos = [], []
        for idx, name in enumerate(reversed(self.transformer_in_features)):
            x = features[name]
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, shapes = self.transformer(srcs, pos)
        B, _, C = memory.shape
        chunks = memory.split([h * w for h, w in shapes], dim=1)
        # channels-last views [B, C, h, w] of the [B, h*w, C] chunks. Not transpose(1, 2).reshape(B, C, h, w): for
        # B = 1 that view gets batch stride C, which PyTorch reads as ambiguous (not channels-last), so the CPU
        # upsampling below wrote a contiguous result and converted it back (two [B, C, H/4, W/4] copies per image)
        out = [chunk.view(B, h, w, C).permute(0, 3, 1, 2) for chunk, (h, w) in zip(chunks, shapes)]
        for idx, name in enumerate(reversed(self.in_features[: self.num_fpn_levels])):
            lateral = self.lateral_convs[idx](features[name])
            y = lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.output_convs[idx](y))
        return self.mask_features(out[-1]), out[: self.num_feature_levels]
